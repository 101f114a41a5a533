"""Overage on a paid plan reported to Stripe's meter (the v2 meter event stream) from
the usage rollups: a worker killed midway (SIGKILL while Stripe is answering) and
rerun, and two at once, leave Stripe's total equal to what the rollups give, exactly;
the reconciliation agrees. An expired stream session is renewed; what Stripe refuses
in a stream request is an error, not a silent loss."""

import os
import subprocess
import sys
import threading
import time
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
# 10 days of hours: 237 of them beyond the included amount, three stream requests
HOURS, PER_HOUR, THROTTLED, INCLUDED = 240, 30, 3, 100


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
        "STRIPE_METER_EVENTS_API_BASE": fake.meter_url,
    }


def _as_of(fake, month):
    """The report runs 11 days into the month, and Stripe's clock says so too (it
    refuses events more than 5 minutes ahead of it or older than 35 days)."""
    moment = month + timedelta(days=11)
    fake.clock_offset = moment.timestamp() - time.time()
    return moment


@pytest.mark.django_db(transaction=True)
def test_a_killed_reporter_rerun_bills_exactly_the_rollups(owner, outsider, stripe_fake) -> None:
    month = meters.month_start(timezone.now())
    as_of = _as_of(stripe_fake, month).isoformat()
    account = _account(owner, stripe_fake)
    expected = _usage(owner.org.pk, month)
    _usage(outsider.org.pk, month)  # on Free: a hard quota, never billed as overage
    stripe_fake.stall_after = 100  # the stream requests after the first 100 events hang
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
    assert 0 < len(stripe_fake.meter_events) < HOURS - 3
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
    assert len(stripe_fake.meter_log) == HOURS - 3  # one per hour: repeats were dropped
    assert not stripe_fake.meter_errors
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
    meters.claim(month + timedelta(days=11))
    per_hour = dict(MeterReport.objects.values_list("hour", "quantity"))
    # 27 billable an hour, 100 included: hours 0-2 are within it, hour 3 crosses it
    assert per_hour[month + timedelta(hours=3)] == 4 * 27 - INCLUDED
    assert all(per_hour[month + timedelta(hours=h)] == 27 for h in range(4, HOURS))
    assert month + timedelta(hours=2) not in per_hour


@pytest.mark.django_db(transaction=True)
def test_an_expired_stream_session_is_renewed_and_nothing_is_lost(owner, stripe_fake) -> None:
    month = meters.month_start(timezone.now())
    as_of = _as_of(stripe_fake, month)
    account = _account(owner, stripe_fake)
    expected = _usage(owner.org.pk, month)
    stripe_fake.expire_tokens_after = 1  # each token serves one request, then "expires"
    assert meters.report(as_of) == {"claimed": HOURS - 3, "sent": HOURS - 3}
    assert stripe_fake.meter_total(account.stripe_customer_id) == expected
    assert stripe_fake.stream_requests == 3  # 100 + 100 + 37 events
    assert len(stripe_fake.stream_sessions) >= 3


def test_the_stream_refuses_a_bad_batch_and_drops_invalid_events(stripe_fake) -> None:
    """The local Stripe behaves as Stripe does, through the SDK we use."""
    import stripe

    from clinik.billing import stripe_api

    client = stripe_api.client()
    token = client.v2.billing.meter_event_session.create().authentication_token
    customer = stripe_fake.route("POST", ["customers"], {})[1]["id"]
    now = time.time()

    def event(identifier, value="5", customer=customer, at=now):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at))
        return {
            "event_name": "api_requests",
            "identifier": identifier,
            "timestamp": stamp,
            "payload": {"stripe_customer_id": customer, "value": value},
        }

    def stream(events, key=token):
        client.v2.billing.meter_event_stream.create({"events": events}, {"api_key": key})

    with pytest.raises(stripe.InvalidRequestError):
        stream([event(f"a{i}") for i in range(101)])  # at most 100 a request
    with pytest.raises(stripe.InvalidRequestError):
        stream([{"event_name": "api_requests", "payload": {"value": 5}}])  # not a string
    with pytest.raises(stripe.AuthenticationError):
        stream([event("b")], key="mes_token_someone_else")
    stream([event("c"), event("c"), event("d", value="2.5"), event("e", customer="cus_nobody")])
    stream([event("f", at=now - 36 * 86400), event("g", at=now + 600), event("c")])
    assert stripe_fake.meter_total(customer) == 5  # "c" once; the others dropped
    assert [e["code"] for e in stripe_fake.meter_errors] == [
        "meter_event_invalid_value",
        "meter_event_customer_not_found",
        "timestamp_too_far_in_past",
        "timestamp_in_future",
    ]
    stripe_fake.clock_offset = 16 * 60  # the token's 15 minutes are over
    with pytest.raises(stripe.TemporarySessionExpiredError):
        stream([event("h")])
    stripe_fake.clock_offset = 25 * 3600  # an identifier counts again after 24 hours
    stream([event("c", at=time.time() + stripe_fake.clock_offset)], key=_fresh(client))
    assert stripe_fake.meter_total(customer) == 10


def _fresh(client):
    return client.v2.billing.meter_event_session.create().authentication_token
