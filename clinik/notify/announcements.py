"""Announcing a privacy policy version to every account owner, once each (the work
of the announce tasks)."""

from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from clinik.accounts.models import Membership, User
from clinik.notify.emails import send
from clinik.notify.models import PolicyNotice
from clinik.privacy.models import PolicyVersion


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
