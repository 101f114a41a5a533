"""Every retention job of the one beat schedule, fired together: each deletes what is
past its retention and keeps what is not, a second run deletes nothing, and a purge
killed between batches is rerun to the same end state (docs/privacy.md)."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from clinik.accounts.models import Organization
from clinik.billing import event_retention
from clinik.billing.actions import locked_account
from clinik.billing.models import Account, MeterReport, StripeEvent
from clinik.celery import app as celery_app
from clinik.fhir.tenancy import tenant_transaction
from clinik.notify import retention as email_retention
from clinik.notify.models import EmailRecord, KnownBrowser
from clinik.privacy.models import Closure
from clinik.subscriptions import retention as delivery_retention
from clinik.subscriptions.models import Delivery

# Every beat entry is one or the other: a new entry must be classified here.
RETENTION_JOBS = {
    "clear-expired-sessions",
    "erase-deleted-fhir-resources",
    "purge-expired-invitations",
    "purge-expired-exports",
    "start-due-deletions",
    "deletion-safety-net",
    "purge-request-logs",
    "purge-expired-audit-records",
    "purge-expired-audit-exports",
    "purge-expired-billing-records",
    "purge-expired-email-records",
    "purge-processed-stripe-events",
    "purge-expired-billing-state",
    "purge-finished-webhook-deliveries",
    "purge-expired-idempotency-records",
}
OTHER_JOBS = {
    "drain-request-logs",
    "seal-audit-trail",
    "report-overage-meters",
    "end-billing-grace-periods",
    "announce-policy-versions",
    "dispatch-subscriptions",
    "sweep-stripe-events",
    "reconcile-meters-with-stripe",
}


def test_every_beat_entry_is_classified_and_registered() -> None:
    schedule = django_settings.CELERY_BEAT_SCHEDULE
    assert RETENTION_JOBS.isdisjoint(OTHER_JOBS)
    assert set(schedule) == RETENTION_JOBS | OTHER_JOBS
    celery_app.loader.import_default_modules()
    for name in RETENTION_JOBS:
        assert schedule[name]["task"] in celery_app.tasks, name
        assert float(str(schedule[name]["schedule"])) <= 86400.0, name  # at least daily


def _email(days_old: float) -> EmailRecord:
    return EmailRecord.objects.create(
        kind="service",
        template="invitation",
        status="sent",
        created_at=timezone.now() - timedelta(days=days_old),
    )


def _event(days_old: float, processed: bool = True) -> StripeEvent:
    when = timezone.now() - timedelta(days=days_old)
    return StripeEvent.objects.create(
        event_id=f"evt_{days_old}_{processed}",
        type="invoice.paid",
        created=when,
        received_at=when,
        processed_at=when if processed else None,
    )


def _delivery(org: Any, days_old: float | None, status: str = "delivered") -> int:
    finished = None if days_old is None else timezone.now() - timedelta(days=days_old)
    with tenant_transaction(org.pk):
        return Delivery.objects.create(
            org=org,
            subscription_id=1,
            resource_type="Patient",
            resource_id="p1",
            status=status,
            next_attempt_at=timezone.now(),
            finished_at=finished,
        ).pk


def _deliveries(org: Any) -> set[int]:
    with tenant_transaction(org.pk):
        return set(Delivery.objects.values_list("pk", flat=True))


def _idempotency(org: Any, key: str, hours_old: float) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO fhir_idempotency (org_id, key, request_hash, pointers, created_at)"
            " VALUES (%s, %s, 'h', '[]', %s)",
            [org.pk, key, timezone.now() - timedelta(hours=hours_old)],
        )


def _idempotency_keys() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT key FROM fhir_idempotency")
        return {row[0] for row in cursor.fetchall()}


def _fire_all() -> None:
    celery_app.loader.import_default_modules()
    for name in sorted(RETENTION_JOBS):
        task = celery_app.tasks[str(django_settings.CELERY_BEAT_SCHEDULE[name]["task"])]
        task.delay()  # eager in tests: runs here, raising on any error


@pytest.mark.django_db
def test_firing_every_retention_job_keeps_the_fresh_and_removes_the_expired(
    owner, outsider, settings, tmp_path
) -> None:
    settings.EXPORT_DIR = tmp_path
    emails = {"kept": _email(89), "gone": _email(91)}
    events = {"kept": _event(89), "gone": _event(91), "stuck": _event(120, processed=False)}
    deliveries = {
        "kept": _delivery(owner.org, 89),
        "gone": _delivery(owner.org, 91),
        "failed-gone": _delivery(owner.org, 95, status="failed"),
        "pending": _delivery(owner.org, None, status="pending"),
    }
    other_tenant = {"kept": _delivery(outsider.org, 10), "gone": _delivery(outsider.org, 100)}
    _idempotency(owner.org, "fresh", 23)
    _idempotency(owner.org, "stale", 25)
    now = timezone.now()
    browsers = {
        "kept": KnownBrowser.objects.create(
            user=owner.user, fingerprint="a", last_seen=now - timedelta(days=89)
        ),
        "gone": KnownBrowser.objects.create(
            user=owner.user, fingerprint="b", last_seen=now - timedelta(days=91)
        ),
    }

    seven_years = timedelta(days=django_settings.BILLING_RECORD_RETENTION_DAYS)
    meters = {
        age: MeterReport.objects.create(
            org_id=owner.org.pk,
            hour=now - seven_years + timedelta(days=age),
            quantity=1,
            identifier=f"meter-{age}",
        ).pk
        for age in (-1, 1)
    }

    billing = {}
    for org, years in ((owner.org, 8), (outsider.org, 6)):
        billing[years] = locked_account(org).pk
        Organization.objects.filter(pk=org.pk).update(status="closed")
        Closure.objects.create(
            org=org,
            status="completed",
            scheduled_for=now,
            deadline=now,
            completed_at=now - timedelta(days=365 * years),
        )

    _fire_all()

    assert list(Account.objects.values_list("pk", flat=True)) == [billing[6]]
    assert list(MeterReport.objects.values_list("pk", flat=True)) == [meters[1]]
    assert list(EmailRecord.objects.values_list("pk", flat=True)) == [emails["kept"].pk]
    assert set(StripeEvent.objects.values_list("pk", flat=True)) == {
        events["kept"].pk,
        events["stuck"].pk,
    }
    assert _deliveries(owner.org) == {deliveries["kept"], deliveries["pending"]}
    assert _deliveries(outsider.org) == {other_tenant["kept"]}
    assert _idempotency_keys() == {"fresh"}
    assert list(KnownBrowser.objects.values_list("pk", flat=True)) == [browsers["kept"].pk]

    assert email_retention.purge_expired() == 0  # idempotent
    assert email_retention.purge_forgotten_browsers() == 0
    assert event_retention.purge_processed() == 0
    assert delivery_retention.purge_finished() == 0
    _fire_all()  # and the whole set reruns cleanly


@pytest.mark.django_db
def test_small_batches_reach_the_same_end(owner) -> None:
    for days in (91, 92, 93, 1):
        _email(days)
        _event(days)
        _delivery(owner.org, days)
    assert email_retention.purge_expired(batch=1) == 3
    assert event_retention.purge_processed(batch=1) == 3
    assert delivery_retention.purge_finished(batch=1) == 3
    assert EmailRecord.objects.count() == StripeEvent.objects.count() == 1
    assert len(_deliveries(owner.org)) == 1


def _app_session() -> psycopg.Connection:
    params = connection.settings_dict
    return psycopg.connect(
        dbname=params["NAME"],
        user=params["USER"],
        password=params["PASSWORD"] or None,
        host=params["HOST"] or None,
        port=params["PORT"] or None,
        autocommit=False,
    )


@pytest.mark.django_db(transaction=True)
def test_a_purge_killed_between_batches_is_rerun_to_the_same_end() -> None:
    oldest, middle, newest = (_email(days) for days in (93, 92, 91))
    fresh = _email(1)
    blocker = _app_session()
    try:
        # Another session holds the middle record: the purge's second batch waits on it
        # and is killed by the lock timeout, after the first batch committed.
        blocker.execute("SELECT 1 FROM notify_emailrecord WHERE id = %s FOR UPDATE", [middle.pk])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        try:
            with pytest.raises(Exception, match="lock timeout"):
                email_retention.purge_expired(batch=1)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("RESET lock_timeout")
        remaining = set(EmailRecord.objects.values_list("pk", flat=True))
        assert oldest.pk not in remaining and {middle.pk, newest.pk, fresh.pk} <= remaining
    finally:
        blocker.rollback()
        blocker.close()
    assert email_retention.purge_expired(batch=1) == 2
    assert list(EmailRecord.objects.values_list("pk", flat=True)) == [fresh.pk]


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("USAGE_RETENTION_DAYS", "91", "USAGE_RETENTION_DAYS must be at most 90"),
        ("FHIR_ERASE_DELETED_AFTER_DAYS", "30", "FHIR_ERASE_DELETED_AFTER_DAYS must be at most"),
        ("CLOSURE_GRACE_DAYS", "31", "CLOSURE_GRACE_DAYS must be at most 30"),
        ("BILLING_RECORD_RETENTION_DAYS", str(7 * 365), "BILLING_RECORD_RETENTION_DAYS"),
        ("AUDIT_RETENTION_DAYS", str(6 * 365), "AUDIT_RETENTION_DAYS"),
    ],
)
def test_settings_refuse_retention_the_policy_does_not_allow(
    name: str, value: str, message: str
) -> None:
    """Policy §6: logs at most 90 days, PHI gone within 30 days of its deletion or of
    closure; billing records (7 years) and the audit trail (6 years) never shorter."""
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "clinik.settings", name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
