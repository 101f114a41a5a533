"""Overage on a paid plan reported to Stripe's meter from the usage rollups: a worker
killed midway (SIGKILL while Stripe is answering) and rerun, and two at once, leave
Stripe's total equal to what the rollups give, exactly; the reconciliation agrees."""

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from clinik.billing import meters
from clinik.billing.models import Account, MeterReport, Plan
from clinik.usage import store
from tests.liveserver import database_url
from tests.stripe_fake import SECRET_KEY, WEBHOOK_SECRET, paid_plans, stripe_fake

__all__ = ["paid_plans", "stripe_fake"]
ROOT = Path(__file__).resolve().parent.parent
HOURS, PER_HOUR, THROTTLED, INCLUDED = 12, 30, 3, 100


def _usage(org_id, month):
    records = []
    for hour in range(HOURS):
        at = (month + timedelta(hours=hour, minutes=10)).timestamp()
        for i in range(PER_HOUR):
            status = 429 if i < THROTTLED else 200
            records.append(
                (
                    at + i,
                    str(org_id),
                    None,
                    "GET",
                    "/fhir/R4/Patient",
                    "Patient",
                    status,
                    900,
                    100,
                    f"req-{org_id.hex[:8]}-{hour}-{i}",
                    None,
                    None,
                )
            )
    store.write_records(records)
    store.write_records(records[:40])  # written twice (push timed out, fallback): once
    return (PER_HOUR - THROTTLED) * HOURS - INCLUDED


def _account(owner, fake):
    Plan.objects.filter(slug="developer").update(included_requests=INCLUDED)
    customer = fake.route("POST", ["customers"], {"metadata": {"org_id": str(owner.org.pk)}})[1]
    return Account.objects.create(
        org=owner.org, plan=Plan.objects.get(slug="developer"), stripe_customer_id=customer["id"]
    )


def _env(fake) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": fake.url,
    }


@pytest.mark.django_db(transaction=True)
def test_a_killed_reporter_rerun_bills_exactly_the_rollups(owner, outsider, stripe_fake) -> None:
    month = meters.month_start(timezone.now())
    as_of = (month + timedelta(days=1)).isoformat()
    account = _account(owner, stripe_fake)
    expected = _usage(owner.org.pk, month)
    _usage(outsider.org.pk, month)  # on Free: a hard quota, never billed as overage
    stripe_fake.stall_after = 4
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "report_meters", "--now", as_of],
        cwd=ROOT,
        env=_env(stripe_fake),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert stripe_fake.stalled.wait(60), worker.communicate()[1] if worker.poll() else "hung"
    finally:
        worker.kill()  # SIGKILL: no cleanup runs
        worker.wait()
    assert len(stripe_fake.meter_events) == 4
    assert MeterReport.objects.filter(sent_at__isnull=True).exists()
    stripe_fake.stall_after = None

    def rerun() -> None:
        call_command("report_meters", "--now", as_of)
        connection.close()

    workers = [threading.Thread(target=rerun) for _ in range(2)]  # two at once
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert stripe_fake.meter_total(account.stripe_customer_id) == expected
    assert sum(MeterReport.objects.values_list("quantity", flat=True)) == expected
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()
    assert {e["payload"]["stripe_customer_id"] for e in stripe_fake.meter_events.values()} == {
        account.stripe_customer_id
    }
    call_command("reconcile_meters", "--now", as_of)  # exits 1 on any difference
    call_command("report_meters", "--now", as_of)  # nothing new: nothing sent
    assert stripe_fake.meter_total(account.stripe_customer_id) == expected
    # a late record for an hour already reported: the reconciliation says so
    late = (month + timedelta(hours=5, minutes=59)).timestamp()
    row = (
        late,
        str(owner.org.pk),
        None,
        "GET",
        "/fhir/R4/Patient",
        "Patient",
        200,
        900,
        100,
        "req-late",
        None,
        None,
    )
    store.write_records([row])
    with pytest.raises(SystemExit) as exit_:
        call_command("reconcile_meters", "--now", as_of)
    assert exit_.value.code == 1


def test_overage_is_the_part_beyond_the_included_amount_hour_by_hour(owner, stripe_fake) -> None:
    month = meters.month_start(timezone.now())
    _account(owner, stripe_fake)
    _usage(owner.org.pk, month)
    meters.claim(month + timedelta(days=1))
    per_hour = dict(MeterReport.objects.values_list("hour", "quantity"))
    # 27 billable an hour, 100 included: hours 0-2 are within it, hour 3 crosses it
    assert per_hour[month + timedelta(hours=3)] == 4 * 27 - INCLUDED
    assert all(per_hour[month + timedelta(hours=h)] == 27 for h in range(4, HOURS))
    assert month + timedelta(hours=2) not in per_hour
