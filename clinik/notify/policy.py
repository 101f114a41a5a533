"""Privacy policy versions (policy §11): staff publish a version with its effective
date at least POLICY_NOTICE_DAYS ahead; every account owner is emailed once; the
/privacy page shows the current version and the upcoming one, and switches by itself
on the date (it compares with today); each user's acknowledgement is recorded."""

from datetime import date, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from clinik.accounts.models import User
from clinik.notify.models import PolicyAcknowledgement
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


def acknowledge(user: User, policy: PolicyVersion) -> bool:
    _ack, created = PolicyAcknowledgement.objects.get_or_create(user=user, policy=policy)
    return created


def acknowledged(user: User, policy: PolicyVersion) -> bool:
    return PolicyAcknowledgement.objects.filter(user=user, policy=policy).exists()
