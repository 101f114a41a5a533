"""Account closure (policy §6): the owner's request, its cancellation, and the job
that deletes the organization's PHI and account data.

At the request, in one transaction: every API key is revoked (each with its audit
record), running exports are stopped, the organization becomes read-only
(`closing`: the gateway refuses writes) and the members are emailed. After the
grace period the deletion job runs; the daily safety net runs it inline if it was
lost, so no closure passes 30 days.

The job is a list of idempotent steps. Each step records itself as done on the
closure row; a step interrupted at any point (even by SIGKILL) is simply run again,
and the rerun reaches the same end state.
"""

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Invitation, Membership, Organization, User
from clinik.audit.erasure import erase_actor_details, erase_user_details
from clinik.audit.models import AuditEvent, AuditExport
from clinik.billing.models import Account as BillingAccount
from clinik.billing.models import Invoice, MeterReport
from clinik.fhir.store import get_store
from clinik.gateway.models import AllowedOrigin
from clinik.keys.models import ApiKey
from clinik.notify.emails import send, send_now
from clinik.privacy.erasure import tombstone_user
from clinik.privacy.models import LEASE, Closure, ExportJob, schedule_for
from clinik.privacy.storage import delete_org_files
from clinik.subscriptions.actions import purge_org as purge_subscriptions
from clinik.subscriptions.models import Delivery, OutboxEvent, Subscription
from clinik.usage.models import DailyUsage, ErrorLog, HourlyUsage, RequestLog

logger = logging.getLogger(__name__)

Checkpoint = Callable[[str], None]

# Every model that names an organization (a foreign key, or a plain org_id) is
# deleted with the account data, ages out on its own, or is kept on purpose; a guard
# test makes every new model choose.
DELETED_WITH_ACCOUNT: tuple[type[Any], ...] = (
    Invitation,
    AllowedOrigin,
    ApiKey,
    ExportJob,
    Membership,
    HourlyUsage,
    DailyUsage,
    Subscription,  # these three in the fhir step, under the tenant (row-level security)
    OutboxEvent,
    Delivery,
)
# API request and error logs: PHI-free, purged after 90 days like everyone's (§6).
AGING_OUT: tuple[type[Any], ...] = (RequestLog, ErrorLog)
KEPT_AFTER_CLOSURE: tuple[type[Any], ...] = (
    Closure,  # when the deletion ran and what it deleted
    AuditEvent,  # the PHI-free audit trail (ip and user agent are erased)
    # Copies of the audit log requested by the organization: their files go with the
    # organization's storage prefix below, the rows after EXPORT_RETENTION_HOURS.
    AuditExport,
    # Billing records (§6: 7 years; clinik.billing.records, clinik.billing.event_retention):
    # invoices with the organization's name and billing email as they were; the account
    # that ties the organization to its Stripe customer; the overage reported to Stripe.
    Invoice,
    BillingAccount,
    MeterReport,
)
BATCH = 5000


class ClosureRefused(Exception):
    """The organization is not active, or already has a closure under way."""


class Deferred(Exception):
    """An export worker still holds one of the organization's jobs: try again later."""


def _date(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d}"


def _members(org: Organization) -> list[User]:
    return list(User.objects.filter(memberships__org=org, is_active=True))


def _revoke_keys(org: Organization, actor: User | None, request: HttpRequest | None) -> int:
    """Revoke every usable key in one statement, with an audit record per key."""
    now = timezone.now()
    keys = list(ApiKey.objects.select_for_update().filter(org=org, revoked_at__isnull=True))
    ApiKey.objects.filter(pk__in=[k.pk for k in keys]).update(revoked_at=now)
    for key in keys:
        audit.record("key.revoke", org=org, actor=actor, target=key, request=request)
    return len(keys)


def _stop_exports(org: Organization, actor: User | None, request: HttpRequest | None) -> None:
    for job in ExportJob.objects.select_for_update().filter(org=org).active():
        ExportJob.objects.filter(pk=job.pk).update(
            status=ExportJob.Status.CANCELLED, finished_at=timezone.now()
        )
        audit.record("export.cancel", org=org, actor=actor, target=job, request=request)


@transaction.atomic(durable=True)
def do_request_closure(*, org: Organization, actor: User, request: HttpRequest | None) -> Closure:
    locked = Organization.objects.select_for_update().get(pk=org.pk)
    if locked.status != Organization.Status.ACTIVE:
        raise ClosureRefused
    now = timezone.now()
    scheduled_for, deadline = schedule_for(now)
    try:
        with transaction.atomic():
            closure = Closure.objects.create(
                org=locked,
                requested_by_id=actor.pk,
                requested_at=now,
                scheduled_for=scheduled_for,
                deadline=deadline,
            )
    except IntegrityError:
        raise ClosureRefused from None
    locked.status = org.status = Organization.Status.CLOSING
    locked.save(update_fields=["status"])
    audit.record("closure.request", org=locked, actor=actor, target=closure, request=request)
    _revoke_keys(locked, actor, request)
    _stop_exports(locked, actor, request)
    send(
        "security",
        "closure-requested",
        _members(locked),
        {
            "org_name": locked.name,
            "actor": actor.name or actor.email,
            "scheduled_for": _date(scheduled_for),
            "deadline": _date(deadline),
            "privacy_path": reverse("data_privacy", args=[locked.pk]),
        },
    )
    return closure


@transaction.atomic(durable=True)
def do_cancel_closure(*, closure: Closure, actor: User, request: HttpRequest | None) -> bool:
    """Back to active, if the job has not started. The revoked keys stay revoked."""
    changed = Closure.objects.filter(pk=closure.pk, status=Closure.Status.PENDING).update(
        status=Closure.Status.CANCELLED, cancelled_at=timezone.now()
    )
    if not changed:
        return False
    Organization.objects.filter(pk=closure.org_id, status=Organization.Status.CLOSING).update(
        status=Organization.Status.ACTIVE
    )
    org = Organization.objects.get(pk=closure.org_id)
    audit.record("closure.cancel", org=org, actor=actor, target=closure, request=request)
    send(
        "security",
        "closure-cancelled",
        _members(org),
        {
            "org_name": org.name,
            "actor": actor.name or actor.email,
            "keys_path": reverse("keys", args=[org.pk]),
        },
    )
    return True


# --- the deletion job ------------------------------------------------------------------


def _claim(closure_id: int) -> Closure | None:
    now = timezone.now()
    changed = (
        Closure.objects.due(now)
        .filter(pk=closure_id)
        .update(
            status=Closure.Status.RUNNING,
            lease_until=now + LEASE,
            started_at=Coalesce("started_at", now),
        )
    )
    return Closure.objects.select_related("org").get(pk=closure_id) if changed else None


def _capture(closure: Closure, check: Checkpoint) -> dict[str, int]:
    """What the later steps erase but still need: the owners' emails for the
    completion notice, the organization's name for it, and the members' ids."""
    org = closure.org
    if not closure.member_ids:
        closure.member_ids = list(
            Membership.objects.filter(org=org).values_list("user_id", flat=True)
        )
    if not closure.notify_emails:
        owners = list(org.owners().values_list("email", flat=True))
        if not owners and closure.requested_by_id:
            owners = list(
                User.objects.filter(pk=closure.requested_by_id).values_list("email", flat=True)
            )
        closure.notify_emails = owners
    closure.org_name = closure.org_name or org.name
    closure.save(update_fields=["member_ids", "notify_emails", "org_name"])
    return {}


def _keys(closure: Closure, check: Checkpoint) -> dict[str, int]:
    with transaction.atomic():
        revoked = _revoke_keys(closure.org, None, None)
    return {"api_keys_revoked_late": revoked} if revoked else {}


def _exports(closure: Closure, check: Checkpoint) -> dict[str, int]:
    with transaction.atomic():
        _stop_exports(closure.org, None, None)
    held = ExportJob.objects.filter(org=closure.org, lease_until__gt=timezone.now())
    if held.exists():
        raise Deferred
    files = delete_org_files(closure.org_id)
    check("exports:files")
    jobs = ExportJob.objects.filter(org=closure.org).delete()[0]
    return {"export_files": files, "export_jobs": jobs}


def _fhir(closure: Closure, check: Checkpoint) -> dict[str, int]:
    return {**purge_subscriptions(closure.org_id), **get_store().purge_tenant(closure.org_id)}


def _cache(closure: Closure, check: Checkpoint) -> dict[str, int]:
    """Cached entries and rate-limit buckets named after the organization."""
    deleted = 0
    for url in {settings.REDIS_URL, settings.GATEWAY_REDIS_URL}:
        client = redis.Redis.from_url(url)
        try:
            batch: list[Any] = []
            for key in client.scan_iter(match=f"*{closure.org_id}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += int(client.delete(*batch))
                    batch = []
            if batch:
                deleted += int(client.delete(*batch))
        finally:
            client.close()
    return {"cache_entries": deleted}


def _account(closure: Closure, check: Checkpoint) -> dict[str, int]:
    counts: dict[str, int] = {}
    org = closure.org
    for model in DELETED_WITH_ACCOUNT:
        if model in (ExportJob, Subscription, OutboxEvent, Delivery):
            continue  # done with their files, or in the fhir step
        counts[model._meta.label_lower] = _delete_in_batches(model, org.pk)
        check(f"account:{model._meta.model_name}")
    erased = 0
    for user_id in closure.member_ids:
        others = Membership.objects.filter(user_id=user_id).exclude(org=org)
        if not others.exists() and tombstone_user(user_id):
            erased += 1
            check("account:user")
    counts["users_erased"] = erased
    with transaction.atomic():
        # The account's current billing contact is account data; each invoice keeps
        # the one it was issued to, as a billing record (7 years).
        BillingAccount.objects.filter(org_id=org.pk).update(billing_email="")
        Organization.objects.filter(pk=org.pk).update(name="", status=Organization.Status.CLOSED)
    return counts


def _delete_in_batches(model: type[Any], org_id: object) -> int:
    rows = model.objects.filter(org_id=org_id).order_by("pk").values_list("pk", flat=True)
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(rows[:BATCH])
            if not ids:
                return deleted
            deleted += model.objects.filter(pk__in=ids).delete()[0]


def _audit_details(closure: Closure, check: Checkpoint) -> dict[str, int]:
    scrubbed = erase_actor_details(closure.org_id)
    for user_id in closure.member_ids:
        if not Membership.objects.filter(user_id=user_id).exists():
            scrubbed += erase_user_details(user_id)
    return {"audit_rows_scrubbed": scrubbed}


def _notify(closure: Closure, check: Checkpoint) -> dict[str, int]:
    """Sent before the job is marked complete: a kill between the two sends it
    again on the rerun (at least once), never not at all."""
    if closure.notify_emails:
        send_now(
            "service",
            "closure-completed",
            closure.notify_emails,
            {"org_name": closure.org_name, "completed": _date(timezone.now())},
        )
    return {}


STEPS: list[tuple[str, Callable[[Closure, Checkpoint], dict[str, int]]]] = [
    ("capture", _capture),
    ("keys", _keys),
    ("exports", _exports),
    ("fhir", _fhir),
    ("cache", _cache),
    ("account", _account),
    ("audit_details", _audit_details),
    ("notify", _notify),
]


def _step_done(closure: Closure, name: str, counts: dict[str, int]) -> None:
    closure.steps_done = [*closure.steps_done, name]
    deleted = dict(closure.deleted)
    for kind, count in counts.items():
        deleted[kind] = deleted.get(kind, 0) + count
    closure.deleted = deleted
    closure.lease_until = timezone.now() + LEASE
    closure.save(update_fields=["steps_done", "deleted", "lease_until"])


@transaction.atomic
def _finish(closure: Closure) -> None:
    for kind, count in sorted(closure.deleted.items()):
        audit.record("closure.deleted", org=closure.org_id, actor=None, target=(kind, str(count)))
    audit.record("closure.complete", org=closure.org_id, actor=None, target=closure)
    Closure.objects.filter(pk=closure.pk).update(
        status=Closure.Status.COMPLETED,
        completed_at=timezone.now(),
        lease_until=None,
        notify_emails=[],
        org_name="",
    )


def run_closure(closure_id: int, *, checkpoint: Checkpoint | None = None) -> str:
    """Run (or resume) a due closure. Returns completed, deferred or skipped (not due,
    cancelled, done, or held by another worker). checkpoint(name) is called after
    every step and batch: the kill tests stop the process there."""
    closure = _claim(closure_id)
    if closure is None:
        return "skipped"
    check = checkpoint or (lambda _name: None)
    try:
        for name, step in STEPS:
            if name in closure.steps_done:
                continue
            counts = step(closure, check)
            _step_done(closure, name, counts)
            check(name)
    except Deferred:
        Closure.objects.filter(pk=closure.pk).update(lease_until=None)
        return "deferred"
    except Exception:
        # Release the claim so a retry can resume at once; a killed process cannot
        # do this, and its claim lapses after LEASE instead.
        Closure.objects.filter(pk=closure.pk).update(lease_until=None)
        raise
    _finish(closure)
    logger.info("closure %s completed", closure.pk)
    return "completed"


def open_closure(org: Organization) -> Closure | None:
    return Closure.objects.open().filter(org=org).first()


def due_closures(now: datetime | None = None) -> list[int]:
    return list(Closure.objects.due(now).order_by("deadline").values_list("pk", flat=True))
