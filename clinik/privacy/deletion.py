"""A user's own account deletion (GDPR erasure): requested in the dashboard, run
after the same grace period as a closure (cancellable until then).

A last owner of an organization must close it or hand it over first: deleting them
would leave it without an owner. The job removes their memberships, erases the user
row's personal fields (the row stays as a tombstone), erases the IP addresses and
user agents beside their audit rows, and tells them it is done. Each step is
idempotent, so the job can be killed and run again to the same end state."""

from collections.abc import Callable
from datetime import datetime

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Membership, Organization, User
from clinik.audit.erasure import erase_user_details
from clinik.notify.emails import send, send_now
from clinik.privacy.erasure import last_owner_orgs, tombstone_user
from clinik.privacy.models import LEASE, AccountDeletion, schedule_for


class LastOwner(Exception):
    def __init__(self, orgs: list[Organization]) -> None:
        super().__init__("last owner")
        self.orgs = orgs


class AlreadyRequested(Exception):
    pass


def _date(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}"


@transaction.atomic(durable=True)
def do_request_deletion(*, user: User, request: HttpRequest | None) -> AccountDeletion:
    blocking = last_owner_orgs(user)
    if blocking:
        raise LastOwner(blocking)
    now = timezone.now()
    scheduled_for, deadline = schedule_for(now)
    try:
        with transaction.atomic():
            deletion = AccountDeletion.objects.create(
                user=user,
                requested_at=now,
                scheduled_for=scheduled_for,
                deadline=deadline,
                notify_email=user.email,
            )
    except IntegrityError:
        raise AlreadyRequested from None
    audit.record("account.deletion_request", org=None, actor=user, target=deletion, request=request)
    send(
        "security",
        "account-deletion-requested",
        user,
        {
            "name": user.name,
            "scheduled_for": _date(scheduled_for),
            "data_path": reverse("account_data"),
        },
    )
    return deletion


@transaction.atomic(durable=True)
def do_cancel_deletion(
    *, deletion: AccountDeletion, user: User, request: HttpRequest | None
) -> bool:
    changed = AccountDeletion.objects.filter(
        pk=deletion.pk, user=user, status=AccountDeletion.Status.PENDING
    ).update(status=AccountDeletion.Status.CANCELLED, cancelled_at=timezone.now())
    if changed:
        audit.record(
            "account.deletion_cancel", org=None, actor=user, target=deletion, request=request
        )
    return bool(changed)


def _claim(deletion_id: int) -> AccountDeletion | None:
    now = timezone.now()
    changed = (
        AccountDeletion.objects.due(now)
        .filter(pk=deletion_id)
        .update(status=AccountDeletion.Status.RUNNING, lease_until=now + LEASE)
    )
    return AccountDeletion.objects.select_related("user").get(pk=deletion_id) if changed else None


def run_deletion(deletion_id: int, *, checkpoint: Callable[[str], None] | None = None) -> str:
    """Run (or resume) a due deletion. Returns completed, blocked or skipped."""
    deletion = _claim(deletion_id)
    if deletion is None:
        return "skipped"
    check = checkpoint or (lambda _name: None)
    user = deletion.user
    try:
        blocking = last_owner_orgs(user)
        if blocking:
            with transaction.atomic():
                AccountDeletion.objects.filter(pk=deletion.pk).update(
                    status=AccountDeletion.Status.BLOCKED, lease_until=None
                )
                audit.record(
                    "account.deletion_blocked",
                    org=None,
                    actor=None,
                    target=deletion,
                    outcome="failure",
                )
            send_now(
                "security",
                "account-deletion-blocked",
                [deletion.notify_email],
                {
                    "org_names": [org.name for org in blocking],
                    "data_path": reverse("account_data"),
                },
            )
            return AccountDeletion.Status.BLOCKED
        for membership in Membership.objects.filter(user=user).select_related("org"):
            with transaction.atomic():
                audit.record("member.remove", org=membership.org, actor=None, target=membership)
                membership.delete()
            check("membership")
        tombstone_user(user.pk)
        check("tombstone")
        erase_user_details(user.pk)
        check("audit_details")
        if deletion.notify_email:
            send_now("service", "account-deletion-completed", deletion.notify_email, {})
        check("notify")
    except Exception:
        AccountDeletion.objects.filter(pk=deletion.pk).update(lease_until=None)
        raise
    with transaction.atomic():
        AccountDeletion.objects.filter(pk=deletion.pk).update(
            status=AccountDeletion.Status.COMPLETED,
            completed_at=timezone.now(),
            lease_until=None,
            notify_email="",
        )
        audit.record("account.deleted", org=None, actor=None, target=("accounts.user", user.pk))
    return AccountDeletion.Status.COMPLETED


def open_deletion(user: User) -> AccountDeletion | None:
    return AccountDeletion.objects.open().filter(user=user).first()


def due_deletions(now: datetime | None = None) -> list[int]:
    return list(AccountDeletion.objects.due(now).order_by("deadline").values_list("pk", flat=True))
