"""Privacy policy versions (policy §11): staff publish a version with its effective
date at least POLICY_NOTICE_DAYS ahead; every account owner is emailed once; the
/privacy page shows the current version and the upcoming one, and switches by itself
on the date (it compares with today); each user's acknowledgement is recorded."""

from datetime import date, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from clinik.accounts.models import Membership, User
from clinik.notify.emails import send
from clinik.notify.models import PolicyAcknowledgement, PolicyNotice
from clinik.privacy.models import PolicyVersion


class TooSoon(ValueError):
    """The effective date is less than POLICY_NOTICE_DAYS away."""


def earliest_effective_date() -> date:
    return timezone.localdate() + timedelta(days=settings.POLICY_NOTICE_DAYS)


def check_effective_date(effective_on: date) -> None:
    if effective_on < earliest_effective_date():
        raise TooSoon(
            f"The effective date must be on or after {earliest_effective_date():%Y-%m-%d}: "
            f"owners are told at least {settings.POLICY_NOTICE_DAYS} days ahead."
        )


def current_version() -> PolicyVersion | None:
    today = timezone.localdate()
    return PolicyVersion.objects.filter(effective_on__lte=today).order_by("-version").first()


def upcoming_version() -> PolicyVersion | None:
    today = timezone.localdate()
    return PolicyVersion.objects.filter(effective_on__gt=today).order_by("version").first()


def do_publish(
    *, version: int, effective_on: date, template_name: str, summary: str = ""
) -> PolicyVersion:
    check_effective_date(effective_on)
    with transaction.atomic():
        policy = PolicyVersion.objects.create(
            version=version,
            last_updated=timezone.localdate(),
            effective_on=effective_on,
            template_name=template_name,
            summary=summary,
        )
        schedule_announcement(policy)
    return policy


def schedule_announcement(policy: PolicyVersion) -> None:
    from clinik.notify.tasks import announce_policy

    transaction.on_commit(lambda: announce_policy.delay(policy.pk))


def owners() -> list[User]:
    return list(
        User.objects.filter(is_active=True, memberships__role=Membership.Role.OWNER)
        .distinct()
        .order_by("pk")
    )


def announce(policy: PolicyVersion) -> int:
    """Email every owner not yet told about this version. Idempotent: a PolicyNotice
    row per (version, user) is inserted first and its unique constraint makes a
    rerun (or a concurrent run) skip whoever already has one. Returns emails queued."""
    if policy.effective_on <= timezone.localdate():
        return 0  # in force already: nothing to announce ahead of time
    sent = 0
    context = {
        "version": policy.version,
        "effective_on": f"{policy.effective_on:%B %-d, %Y}",
        "summary": policy.summary,
        "privacy_path": reverse("privacy"),
    }
    for user in owners():
        try:
            with transaction.atomic():
                PolicyNotice.objects.create(policy=policy, user=user)
                send("policy", "policy-announcement", user, context)
        except IntegrityError:
            continue
        sent += 1
    return sent


def announce_pending() -> int:
    """The hourly safety net: announce every upcoming version (new owners too)."""
    upcoming = PolicyVersion.objects.filter(effective_on__gt=timezone.localdate())
    return sum(announce(policy) for policy in upcoming)


def acknowledge(user: User, policy: PolicyVersion) -> bool:
    _ack, created = PolicyAcknowledgement.objects.get_or_create(user=user, policy=policy)
    return created


def acknowledged(user: User, policy: PolicyVersion) -> bool:
    return PolicyAcknowledgement.objects.filter(user=user, policy=policy).exists()
