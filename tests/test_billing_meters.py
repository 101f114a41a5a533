"""Overage on a paid plan reported to Stripe's meter (the v2 meter event stream) from
the usage rollups: a worker killed midway (SIGKILL while Stripe is answering) and
rerun, and two at once, leave Stripe's total equal to what the rollups give, exactly;
the reconciliation agrees. An expired stream session is renewed; what Stripe refuses
in a stream request is an error, not a silent loss."""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from clinik.billing import meters, tasks
from clinik.billing.models import Account, MeterReport, Plan
from clinik.billing.periods import add_months, period_before, period_of
from clinik.usage import store
from tests.liveserver import database_url
from tests.stripe_fake import SECRET_KEY, WEBHOOK_SECRET, paid_plans, stripe_fake

__all__ = ["paid_plans", "stripe_fake"]
ROOT = Path(__file__).resolve().parent.parent
# 10 days of hours: 237 of them beyond the included amount, three stream requests
HOURS, PER_HOUR, THROTTLED, INCLUDED = 240, 30, 3, 100


def _usage(org_id, month, hours=HOURS):
    records = []
    for hour in range(hours):
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
    return (PER_HOUR - THROTTLED) * hours - INCLUDED


def _account(owner, fake, period=None):
    Plan.objects.filter(slug="developer").update(included_requests=INCLUDED)
    customer = fake.route("POST", ["customers"], {"metadata": {"org_id": str(owner.org.pk)}})[1]
    subscription = {}
    if period is not None:  # a Stripe subscription: its period, as the webhook keeps it
        subscription = {
            "stripe_subscription_id": "sub_period",
            "subscription_status": "active",
            "current_period_start": period[0],
            "current_period_end": period[1],
        }
    return Account.objects.create(
        org=owner.org,
        plan=Plan.objects.get(slug="developer"),
        stripe_customer_id=customer["id"],
        **subscription,
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


# A Stripe period that starts mid-month, at 09:23 on the 17th of last month.
BILLABLE = PER_HOUR - THROTTLED


def _mid_month():
    last_month = meters.month_start(meters.month_start(timezone.now()) - timedelta(seconds=1))
    boundary = last_month + timedelta(days=16, hours=9, minutes=23)
    return last_month + timedelta(days=15), boundary  # usage from the 16th, 00:00


def test_a_mid_month_stripe_period_has_its_own_included_amount(owner, stripe_fake) -> None:
    first_hour, boundary = _mid_month()
    _account(owner, stripe_fake, (boundary, add_months(boundary, 1)))
    # 48 hours, 16th 00:00 to 17th 23:00: 33 before the period's hour (09:00), 15 in it
    _usage(owner.org.pk, first_hour, hours=48)
    assert meters.claim(first_hour + timedelta(days=2, minutes=10)) == 30 + 12
    per_hour = dict(MeterReport.objects.values_list("hour", "quantity"))
    period_hour = boundary.replace(minute=0)  # the boundary's hour is the new period's
    before = {h: q for h, q in per_hour.items() if h < period_hour}
    after = {h: q for h, q in per_hour.items() if h >= period_hour}
    # the period before: 33 hours, its own 100 included (hours 0-2; hour 3 crosses it)
    assert sum(before.values()) == 33 * BILLABLE - INCLUDED
    assert before[first_hour + timedelta(hours=3)] == 4 * BILLABLE - INCLUDED
    assert first_hour + timedelta(hours=2) not in before
    # this period: 15 hours from 09:00, 100 included again (09-11; 12:00 crosses it)
    assert sum(after.values()) == 15 * BILLABLE - INCLUDED
    assert period_hour + timedelta(hours=2) not in after
    assert after[period_hour + timedelta(hours=3)] == 4 * BILLABLE - INCLUDED
    assert all(after[period_hour + timedelta(hours=h)] == BILLABLE for h in range(4, 15))
    # not the calendar month's 48 hours against one included amount
    assert sum(per_hour.values()) != 48 * BILLABLE - INCLUDED
    assert meters.claim(first_hour + timedelta(days=2, minutes=10)) == 0  # nothing twice


@pytest.mark.django_db(transaction=True)
def test_a_reporter_down_across_the_boundary_bills_the_old_periods_last_hours_once(
    owner, stripe_fake, capsys
) -> None:
    first_hour, boundary = _mid_month()
    previous = (add_months(boundary, -1), boundary)
    account = _account(owner, stripe_fake, previous)
    _usage(owner.org.pk, first_hour, hours=38)  # to 13:00 on the 17th
    # The reporter runs at 05:10 on the 17th (hours to 04:00), then is down until
    # 14:10; meanwhile Stripe renews the subscription and the webhook says so.
    early = first_hour + timedelta(days=1, hours=5, minutes=10)
    stripe_fake.clock_offset = early.timestamp() - time.time()
    assert meters.report(early) == {"claimed": 26, "sent": 26}
    Account.objects.filter(pk=account.pk).update(
        current_period_start=boundary, current_period_end=add_months(boundary, 1)
    )
    late = first_hour + timedelta(days=1, hours=14, minutes=10)
    stripe_fake.clock_offset = late.timestamp() - time.time()
    # 05:00-08:00 of the old period, then 12:00 and 13:00 of the new one
    assert meters.report(late) == {"claimed": 4 + 2, "sent": 4 + 2}
    assert meters.report(late) == {"claimed": 0, "sent": 0}
    old = 33 * BILLABLE - INCLUDED
    new = 5 * BILLABLE - INCLUDED
    assert stripe_fake.meter_total(account.stripe_customer_id) == old + new
    assert len(stripe_fake.meter_log) == 32  # one event per hour, none repeated
    assert not stripe_fake.meter_errors
    hours = list(MeterReport.objects.values_list("hour", flat=True))
    assert len(hours) == len(set(hours)) == 32

    # The reconciliation agrees, over this period and over the one before.
    call_command("reconcile_meters", "--now", late.isoformat())
    at_old = (boundary - timedelta(hours=1)).isoformat()
    call_command("reconcile_meters", "--now", late.isoformat(), "--period-of", at_old)
    capsys.readouterr()
    # A report row lost from the old period: that period differs, this one does not.
    MeterReport.objects.filter(hour=first_hour + timedelta(days=1, hours=6)).delete()
    call_command("reconcile_meters", "--now", late.isoformat())
    with pytest.raises(SystemExit) as exit_:
        call_command("reconcile_meters", "--now", late.isoformat(), "--period-of", at_old)
    assert exit_.value.code == 1
    (line,) = capsys.readouterr().out.splitlines()
    difference = json.loads(line)
    assert difference["org_id"] == str(owner.org.pk)
    assert (difference["expected"], difference["claimed"]) == (old, old - BILLABLE)
    assert difference["period_start"] == previous[0].isoformat()
    assert difference["period_end"] == boundary.isoformat()
    with pytest.raises(CommandError, match="--period-of must be an ISO time"):
        call_command("reconcile_meters", "--period-of", "2026-11")


def test_the_periods_hours_meet_without_a_gap(owner, stripe_fake) -> None:
    """Consecutive periods share their boundary hour: every hour is in one of them."""
    _, boundary = _mid_month()
    account = _account(owner, stripe_fake, (boundary, add_months(boundary, 1)))
    current = period_of(account, boundary + timedelta(days=3))
    before = period_before(account, current)
    assert meters.buckets(before)[1] == meters.buckets(current)[0] == boundary.replace(minute=0)
    assert period_before(account, before)[1] == before[0]
    # anchored on the 31st, held as Apr 30 - May 31: renewed on the 31st, not the 30th
    held = (datetime(2027, 4, 30, 8, 45, tzinfo=UTC), datetime(2027, 5, 31, 8, 45, tzinfo=UTC))
    account.current_period_start, account.current_period_end = held
    assert period_of(account, datetime(2027, 7, 15, tzinfo=UTC)) == (
        datetime(2027, 6, 30, 8, 45, tzinfo=UTC),
        datetime(2027, 7, 31, 8, 45, tzinfo=UTC),
    )
    assert period_before(account, held) == (datetime(2027, 3, 31, 8, 45, tzinfo=UTC), held[0])


def test_reconciling_against_stripe_finds_the_events_stripe_dropped_and_resends_them(
    owner, outsider, stripe_fake, caplog
) -> None:
    """Stripe validates streamed events afterwards: the outsider's, sent for a customer
    Stripe does not know, are accepted by the stream, marked sent in our ledger and
    dropped by Stripe. Our own reconciliation cannot see it; the one against Stripe's
    meter event summaries does (per hour, exit 1), and with --resend the hours Stripe
    holds nothing of go out again once the customer is right."""
    from io import StringIO

    month = meters.month_start(timezone.now())
    as_of = _as_of(stripe_fake, month).isoformat()
    account = _account(owner, stripe_fake)
    expected = _usage(owner.org.pk, month)
    wrong = Account.objects.create(
        org=outsider.org, plan=Plan.objects.get(slug="developer"), stripe_customer_id="cus_gone"
    )
    expected_outsider = _usage(outsider.org.pk, month)
    call_command("report_meters", "--now", as_of)
    assert not MeterReport.objects.filter(sent_at__isnull=True).exists()
    assert {e["code"] for e in stripe_fake.meter_errors} == {"meter_event_customer_not_found"}
    call_command("reconcile_meters", "--now", as_of)  # our ledger agrees with itself

    def against_stripe(*extra: str) -> tuple[int, list[dict]]:
        out = StringIO()
        try:
            call_command("reconcile_meters", "--now", as_of, "--against-stripe", *extra, stdout=out)
            code = 0
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        return code, [json.loads(line) for line in out.getvalue().splitlines()]

    code, rows = against_stripe()
    assert code == 1
    with time_machine.travel(as_of, tick=False), caplog.at_level("WARNING", "clinik.billing"):
        assert tasks.reconcile_meters_with_stripe() == {"organizations": 1, "hours": HOURS - 3}
    assert "1 organization(s), 237 hour(s)" in caplog.text
    assert str(outsider.org.pk) not in caplog.text and "cus_gone" not in caplog.text
    [row] = rows
    assert row["org_id"] == str(outsider.org.pk)
    assert (row["sent"], row["stripe"]) == (expected_outsider, 0)
    assert len(row["hours"]) == HOURS - 3 and row["resent"] == 0
    assert stripe_fake.meter_total(account.stripe_customer_id) == expected  # the owner's: equal
    # The account pointed at a customer Stripe does not have; put right, then resent.
    customer = stripe_fake.route("POST", ["customers"], {"metadata": {}})[1]["id"]
    Account.objects.filter(pk=wrong.pk).update(stripe_customer_id=customer)
    code, rows = against_stripe("--resend")
    assert code == 1 and rows[0]["resent"] == HOURS - 3
    assert MeterReport.objects.filter(org_id=outsider.org.pk, sent_at__isnull=True).count() == (
        HOURS - 3
    )
    call_command("report_meters", "--now", as_of)
    assert stripe_fake.meter_total(customer) == expected_outsider
    assert against_stripe() == (0, [])
    assert stripe_fake.meter_total(account.stripe_customer_id) == expected  # never twice
    # an event Stripe counted that our ledger never sent (another sender): a difference
    stripe_fake.meter_log.append(
        {
            "event_name": "api_requests",
            "timestamp": (month + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "payload": {"stripe_customer_id": account.stripe_customer_id, "value": "5"},
        }
    )
    code, rows = against_stripe()
    assert code == 1
    assert rows[0]["hours"] == [
        {"hour": (month + timedelta(hours=1)).isoformat(), "sent": 0, "stripe": 5}
    ]


def test_reconciling_against_stripe_needs_the_meter_and_billing_on(owner, stripe_fake, settings):
    stripe_fake.meters[0]["event_name"] = "something_else"
    with pytest.raises(CommandError, match="no active meter"):
        call_command("reconcile_meters", "--against-stripe")
    with pytest.raises(CommandError, match="--resend goes with --against-stripe"):
        call_command("reconcile_meters", "--resend")
    settings.BILLING_ENABLED = False
    with pytest.raises(CommandError, match="billing is off"):
        call_command("reconcile_meters", "--against-stripe")
