"""Overage to Stripe Billing Meters, from the hourly usage rollups.

For each organization on a plan billed by overage, the requests of each finished hour
of its billing period (clinik.billing.periods: Stripe's subscription period, else the
calendar month, UTC; the one the quota and the Billing page count over) beyond the
plan's included amount are one meter event, identified by organization and hour. A
report row is claimed (INSERT ... ON CONFLICT DO NOTHING) before its event is sent and
marked sent after, so a rerun after a crash sends exactly the unsent hours again, with
the same identifier, which Stripe accepts once: a retry, a killed worker or two
workers never bill a request twice or miss one. Throttled requests (429) are not billed.

Periods and hours: the rollups are hourly and a Stripe period starts at any second
(09:23:41). A period takes the hour buckets from the one its start falls in
(date_trunc('hour', start), UTC) to the one the next period's start falls in: the
boundary hour is wholly the new period's, as on the Billing page, and the period before
ends at that same hour, so every hour is in exactly one period. Each claim covers each
organization's current period and the one before it (computed in Python per account,
passed to the SQL as arrays): a reporter down across a boundary still bills the old
period's last hours, once (rows already claimed stay; the running sum of the old
period is the same in every run).

Events go on Stripe's high-throughput meter event stream (v2: a session token, then
requests of up to 100 events on the meter-events address), not one API call each:
a month of 10,000 organizations in seconds instead of minutes (bench/README.md).

Stripe validates streamed events afterwards: one it drops then (unknown customer, too
old) stays marked sent here. `reconcile` compares our rollups with our ledger;
`reconcile_with_stripe` compares the ledger's sent hours with Stripe's meter event
summaries, which count only what Stripe kept (reconcile_meters --against-stripe)."""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime, timedelta
from typing import Any

import stripe
from django.conf import settings
from django.db import connection
from django.utils import timezone

from clinik.billing import stripe_api
from clinik.billing.models import Account
from clinik.billing.periods import buckets, period_before, period_of

logger = logging.getLogger("clinik.billing")

# A finished hour is reported once its request records have been drained (every 5 s).
SETTLE = timedelta(minutes=5)

# Each organization's periods come in as arrays (org, first hour, end hour, included):
# the running sum is windowed per organization and period, and only over the periods
# beyond their included amount (the others have no overage): it then sorts a fifth of
# the rows, not all (bench/README.md, "Billing").
_CLAIM = """
WITH periods AS (
  SELECT * FROM unnest(%(orgs)s::uuid[], %(starts)s::timestamptz[], %(ends)s::timestamptz[],
                       %(included)s::bigint[]) AS p(org_id, first_hour, end_hour, included)
), over AS (
  SELECT p.org_id, p.first_hour, p.end_hour, p.included
  FROM periods p
  JOIN usage_hourlyusage m ON m.org_id = p.org_id AND m.dim = 'all'
   AND m.bucket >= p.first_hour AND m.bucket < p.end_hour
  GROUP BY p.org_id, p.first_hour, p.end_hour, p.included
  HAVING sum(m.requests - m.throttled) > p.included
)
INSERT INTO billing_meterreport (org_id, hour, quantity, identifier)
SELECT org_id, bucket, overage, org_id::text || ':' || to_char(bucket, 'YYYYMMDDHH24')
FROM (
  SELECT org_id, bucket,
         GREATEST(0, cum - included) - GREATEST(0, cum - n - included) AS overage
  FROM (
    SELECT u.org_id, u.bucket, u.requests - u.throttled AS n, o.included,
           sum(u.requests - u.throttled)
             OVER (PARTITION BY u.org_id, o.first_hour ORDER BY u.bucket) AS cum
    FROM over o
    JOIN usage_hourlyusage u ON u.org_id = o.org_id AND u.dim = 'all'
     AND u.bucket >= o.first_hour AND u.bucket < o.end_hour
  ) hours
) overage
WHERE overage > 0
ON CONFLICT DO NOTHING
"""


def month_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def finished_until(now: datetime | None = None) -> datetime:
    """The end of the last hour considered finished (its records drained)."""
    return ((now or timezone.now()) - SETTLE).replace(minute=0, second=0, microsecond=0)


def _billed_accounts(with_customer: bool = True) -> Any:
    """Accounts on a plan billed by overage (included amount and a price for more)."""
    accounts = Account.objects.filter(
        plan__included_requests__isnull=False, plan__overage_per_1000_cents__gt=0
    )
    if with_customer:
        accounts = accounts.exclude(stripe_customer_id="")
    return accounts.select_related("plan").only(
        "org_id",
        "stripe_customer_id",
        "stripe_subscription_id",
        "current_period_start",
        "current_period_end",
        "plan__included_requests",
    )


def claim(now: datetime | None = None) -> int:
    """Write the report rows of every finished hour not yet claimed, of each
    organization's billing period (clinik.billing.periods) and the period before it (a
    reporter down across the boundary still bills the old period's last hours; the
    rows already claimed stay, ON CONFLICT on organization and hour)."""
    until = finished_until(now)
    last = until - timedelta(microseconds=1)  # in the last finished hour
    orgs: list[Any] = []
    starts: list[datetime] = []
    ends: list[datetime] = []
    included: list[int] = []
    for account in _billed_accounts().iterator(chunk_size=2000):
        current = period_of(account, last)
        while last < current[0]:  # a period Stripe has told us of that starts later
            current = period_before(account, current)
        for period in (period_before(account, current), current):
            first, end = buckets(period)
            end = min(end, until)
            if first < end:
                orgs.append(account.org_id)
                starts.append(first)
                ends.append(end)
                included.append(account.plan.included_requests)
    if not orgs:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, {"orgs": orgs, "starts": starts, "ends": ends, "included": included})
        return int(cursor.rowcount)


# Stripe's meter event stream takes up to 100 events a request.
STREAM_BATCH = 100
# A session token is valid 15 minutes; a new one is taken this long before it ends.
_TOKEN_MARGIN = timedelta(minutes=2)


class StreamSession:
    """The short-lived token of Stripe's meter event stream (v2): created with the
    secret key on the API, used as the bearer of the stream's requests, taken anew
    before it expires, or when Stripe says it has. Shared by the sending threads."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.token = ""
        self.expires_at = datetime.min.replace(tzinfo=UTC)
        self.created = 0

    def current(self) -> str:
        with self.lock:
            if not self.token or timezone.now() >= self.expires_at - _TOKEN_MARGIN:
                self._renew()
            return self.token

    def expired(self, token: str) -> None:
        with self.lock:
            if token == self.token:  # another thread may have renewed it already
                self._renew()

    def _renew(self) -> None:
        session = self.client.v2.billing.meter_event_session.create()
        self.token = session.authentication_token
        # Its lifetime, counted on our clock (ours and Stripe's may differ).
        lifetime = _parse_time(session.expires_at) - _parse_time(session.created)
        self.expires_at = timezone.now() + lifetime
        self.created += 1

    def send(self, events: list[Any]) -> None:
        """One request of at most STREAM_BATCH events; an expired token is renewed and
        the request sent again (the identifiers make a repeat harmless)."""
        for attempt in range(3):
            token = self.current()
            try:
                self.client.v2.billing.meter_event_stream.create(
                    params={"events": events}, options={"api_key": token}
                )
                return
            except stripe.TemporarySessionExpiredError:
                if attempt == 2:
                    raise
                self.expired(token)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _stream_event(identifier: str, hour: datetime, quantity: int, customer: str) -> dict[str, Any]:
    return {
        "event_name": settings.STRIPE_METER_EVENT_NAME,
        "identifier": identifier,
        "timestamp": hour.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "payload": {"stripe_customer_id": customer, "value": str(quantity)},
    }


# The next unsent reports with their Stripe customer, in claim order.
_UNSENT = """
SELECT m.id, m.identifier, m.hour, m.quantity, a.stripe_customer_id
FROM billing_meterreport m JOIN billing_account a ON a.org_id = m.org_id
WHERE m.sent_at IS NULL AND m.id > %s AND a.stripe_customer_id <> ''
ORDER BY m.id
LIMIT %s
"""
_MARK_SENT = "UPDATE billing_meterreport SET sent_at = %s WHERE id = ANY(%s)"


def send(batch: int = 2000, concurrency: int = 4) -> int:
    """Send the claimed, unsent reports on Stripe's meter event stream: requests of
    100 events, a few at once; each request's rows are marked sent when Stripe has
    accepted it. A crash between Stripe's answer and the mark leaves rows that the
    next run sends again with the same identifiers, which Stripe drops as repeats
    (within 24 hours; the hourly job reruns long before). Returns how many were sent."""
    session = StreamSession(stripe_api.client())
    sent = 0

    def one(chunk: list[tuple[Any, ...]]) -> list[int]:
        session.send([_stream_event(*row[1:]) for row in chunk])
        return [row[0] for row in chunk]

    last = 0
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        while True:
            with connection.cursor() as cursor:
                cursor.execute(_UNSENT, [last, batch])
                rows = cursor.fetchall()
            if not rows:
                return sent
            last = rows[-1][0]
            chunks = [rows[i : i + STREAM_BATCH] for i in range(0, len(rows), STREAM_BATCH)]
            failure = None
            for future in as_completed([pool.submit(one, chunk) for chunk in chunks]):
                try:
                    done = future.result()
                except Exception as error:  # the others are marked; raised after
                    failure = failure or error
                    continue
                with connection.cursor() as cursor:
                    cursor.execute(_MARK_SENT, [timezone.now(), done])
                sent += len(done)
            if failure is not None:
                raise failure


def report(now: datetime | None = None) -> dict[str, int]:
    return {"claimed": claim(now), "sent": send()}


_RECONCILE = """
SELECT p.org_id, p.included,
       COALESCE((SELECT sum(u.requests - u.throttled) FROM usage_hourlyusage u
         WHERE u.org_id = p.org_id AND u.dim = 'all'
           AND u.bucket >= p.first_hour AND u.bucket < p.end_hour), 0),
       COALESCE((SELECT sum(m.quantity) FROM billing_meterreport m
         WHERE m.org_id = p.org_id AND m.hour >= p.first_hour AND m.hour < p.end_hour), 0),
       COALESCE((SELECT sum(m.quantity) FROM billing_meterreport m
         WHERE m.org_id = p.org_id AND m.hour >= p.first_hour AND m.hour < p.end_hour
           AND m.sent_at IS NOT NULL), 0)
FROM unnest(%(orgs)s::uuid[], %(starts)s::timestamptz[], %(ends)s::timestamptz[],
            %(included)s::bigint[]) AS p(org_id, first_hour, end_hour, included)
"""


def reconcile(at: datetime, until: datetime) -> list[dict[str, Any]]:
    """Per organization, over its billing period that contains `at` (its hours before
    `until`): the overage our rollups give against what we claimed and sent. Rows that
    differ are returned, with the period."""
    orgs: list[Any] = []
    starts: list[datetime] = []
    ends: list[datetime] = []
    included: list[int] = []
    periods = {}
    for account in _billed_accounts(with_customer=False).iterator(chunk_size=2000):
        period = period_of(account, at)
        while at < period[0]:
            period = period_before(account, period)
        first, end = buckets(period)
        end = min(end, until)
        if first < end:
            orgs.append(account.org_id)
            starts.append(first)
            ends.append(end)
            included.append(account.plan.included_requests)
            periods[str(account.org_id)] = period
    if not orgs:
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            _RECONCILE, {"orgs": orgs, "starts": starts, "ends": ends, "included": included}
        )
        rows = cursor.fetchall()
    differences = []
    for org_id, included_, used, claimed, sent in rows:
        expected = max(0, int(used) - int(included_))
        if expected != int(claimed) or expected != int(sent):
            start, end = periods[str(org_id)]
            differences.append(
                {
                    "org_id": str(org_id),
                    "period_start": start.isoformat(),
                    "period_end": end.isoformat(),
                    "expected": expected,
                    "claimed": int(claimed),
                    "sent": int(sent),
                }
            )
    return differences


# Stripe aggregates meter events asynchronously: hours whose event we sent this
# recently are left out of the comparison with Stripe's summaries (on both sides).
SUMMARY_LAG = timedelta(minutes=15)

# Our ledger's sent rows of one organization over [first, end), by hour.
_SENT_HOURS = """
SELECT hour, quantity, sent_at FROM billing_meterreport
WHERE org_id = %s AND hour >= %s AND hour < %s AND sent_at IS NOT NULL
"""
# The hours of reports Stripe holds nothing of: unmarked, the next report sends them
# again (same identifier: Stripe counts one that it dropped as invalid).
_UNMARK = """
UPDATE billing_meterreport SET sent_at = NULL
WHERE org_id = %s AND hour = ANY(%s) AND sent_at IS NOT NULL
"""


class NoMeter(Exception):
    """Stripe has no active meter with our event name (STRIPE_METER_EVENT_NAME)."""


def meter_id(client: stripe.StripeClient) -> str:
    """The id of Stripe's active meter our events go to, found by its event name."""
    name = settings.STRIPE_METER_EVENT_NAME
    for meter in client.v1.billing.meters.list(
        {"status": "active", "limit": 100}
    ).auto_paging_iter():
        if meter.event_name == name:
            return str(meter.id)
    raise NoMeter(f"Stripe has no active meter with the event name {name!r}")


def stripe_hours(
    client: stripe.StripeClient, meter: str, customer: str, first: datetime, end: datetime
) -> dict[datetime, int]:
    """What Stripe's meter holds for a customer, per hour of [first, end) (hour
    aligned): its event summaries with an hourly window. Only the events Stripe
    accepted count: one it dropped later (unknown customer, too old) is not there."""
    summaries = client.v1.billing.meters.event_summaries.list(
        meter,
        {
            "customer": customer,
            "start_time": int(first.timestamp()),
            "end_time": int(end.timestamp()),
            "value_grouping_window": "hour",
            "limit": 100,
        },
    )
    hours: dict[datetime, int] = {}
    for summary in summaries.auto_paging_iter():
        hour = datetime.fromtimestamp(summary.start_time, UTC)
        hours[hour] = hours.get(hour, 0) + round(summary.aggregated_value)
    return {hour: value for hour, value in hours.items() if value}


def reconcile_with_stripe(
    at: datetime, until: datetime, now: datetime, resend: bool = False
) -> list[dict[str, Any]]:
    """Per organization with a Stripe customer, over its billing period that contains
    `at` (its hours before `until`): what our ledger marks sent against what Stripe's
    meter holds (its event summaries), hour by hour. Hours sent within SUMMARY_LAG of
    `now` are left out (Stripe may not have aggregated them yet). Differences are
    returned with the hours that differ (times and counts only). With `resend`, the
    hours Stripe holds nothing of are marked unsent, for the next report to send
    again with the same identifier (an hour Stripe holds part of is never resent:
    that could bill twice)."""
    client = stripe_api.client()
    meter = meter_id(client)
    recent = now - SUMMARY_LAG
    differences = []
    for account in _billed_accounts().iterator(chunk_size=2000):
        period = period_of(account, at)
        while at < period[0]:
            period = period_before(account, period)
        first, end = buckets(period)
        end = min(end, until)
        if first >= end:
            continue
        with connection.cursor() as cursor:
            cursor.execute(_SENT_HOURS, [account.org_id, first, end])
            rows = cursor.fetchall()
        skip = {hour for hour, _quantity, sent_at in rows if sent_at >= recent}
        ours = {hour: int(quantity) for hour, quantity, _sent_at in rows if hour not in skip}
        theirs = {
            hour: value
            for hour, value in stripe_hours(
                client, meter, account.stripe_customer_id, first, end
            ).items()
            if hour not in skip
        }
        differ = sorted(
            hour for hour in ours.keys() | theirs.keys() if ours.get(hour) != theirs.get(hour)
        )
        if not differ:
            continue
        missing = [hour for hour in differ if hour not in theirs]
        if resend and missing:
            with connection.cursor() as cursor:
                cursor.execute(_UNMARK, [account.org_id, missing])
        differences.append(
            {
                "org_id": str(account.org_id),
                "period_start": period[0].isoformat(),
                "period_end": period[1].isoformat(),
                "sent": sum(ours.values()),
                "stripe": sum(theirs.values()),
                "hours": [
                    {"hour": h.isoformat(), "sent": ours.get(h, 0), "stripe": theirs.get(h, 0)}
                    for h in differ
                ],
                "resent": len(missing) if resend else 0,
            }
        )
    return differences
