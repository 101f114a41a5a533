"""Overage to Stripe Billing Meters, from the hourly usage rollups.

For each organization on a plan billed by overage, the requests of each finished hour
of the calendar month (UTC) beyond the plan's included amount are one meter event,
identified by organization and hour. A report row is claimed (INSERT ... ON CONFLICT
DO NOTHING) before its event is sent and marked sent after, so a rerun after a crash
sends exactly the unsent hours again, with the same identifier, which Stripe
accepts once: a retry, a killed worker or two workers never bill a request twice
or miss one. Throttled requests (429) are not billed.

Events go on Stripe's high-throughput meter event stream (v2: a session token, then
requests of up to 100 events on the meter-events address), not one API call each:
a month of 10,000 organizations in seconds instead of minutes (bench/README.md)."""

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

logger = logging.getLogger("clinik.billing")

# A finished hour is reported once its request records have been drained (every 5 s).
SETTLE = timedelta(minutes=5)

# Only organizations whose month is beyond the included amount are windowed (the
# others have no overage): the running sum then sorts a fifth of the rows, not all
# (bench/README.md, "Billing").
_CLAIM = """
INSERT INTO billing_meterreport (org_id, hour, quantity, identifier)
SELECT org_id, bucket, overage, org_id::text || ':' || to_char(bucket, 'YYYYMMDDHH24')
FROM (
  SELECT org_id, bucket,
         GREATEST(0, cum - included) - GREATEST(0, cum - n - included) AS overage
  FROM (
    SELECT u.org_id, u.bucket, u.requests - u.throttled AS n, o.included,
           sum(u.requests - u.throttled) OVER (PARTITION BY u.org_id ORDER BY u.bucket) AS cum
    FROM (
      SELECT m.org_id, p.included_requests AS included
      FROM usage_hourlyusage m
      JOIN billing_account a ON a.org_id = m.org_id
      JOIN billing_plan p ON p.id = a.plan_id
      WHERE m.dim = 'all' AND m.bucket >= %(month)s AND m.bucket < %(until)s
        AND p.included_requests IS NOT NULL AND p.overage_per_1000_cents > 0
        AND a.stripe_customer_id <> ''
      GROUP BY m.org_id, p.included_requests
      HAVING sum(m.requests - m.throttled) > p.included_requests
    ) o
    JOIN usage_hourlyusage u ON u.org_id = o.org_id
    WHERE u.dim = 'all' AND u.bucket >= %(month)s AND u.bucket < %(until)s
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


def claim(now: datetime | None = None) -> int:
    """Write the report rows of every finished hour of this month not yet claimed."""
    until = finished_until(now)
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, {"month": month_start(until - timedelta(seconds=1)), "until": until})
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


def reconcile(start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per organization, for [start, end): the overage our rollups give against what
    we claimed and sent. Rows that differ are returned."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.org_id, p.included_requests,
                   COALESCE((SELECT sum(u.requests - u.throttled) FROM usage_hourlyusage u
                     WHERE u.org_id = a.org_id AND u.dim = 'all'
                       AND u.bucket >= %(start)s AND u.bucket < %(end)s), 0),
                   COALESCE((SELECT sum(m.quantity) FROM billing_meterreport m
                     WHERE m.org_id = a.org_id AND m.hour >= %(start)s AND m.hour < %(end)s), 0),
                   COALESCE((SELECT sum(m.quantity) FROM billing_meterreport m
                     WHERE m.org_id = a.org_id AND m.hour >= %(start)s AND m.hour < %(end)s
                       AND m.sent_at IS NOT NULL), 0)
            FROM billing_account a JOIN billing_plan p ON p.id = a.plan_id
            WHERE p.included_requests IS NOT NULL AND p.overage_per_1000_cents > 0
            """,
            {"start": start, "end": end},
        )
        rows = cursor.fetchall()
    differences = []
    for org_id, included, used, claimed, sent in rows:
        expected = max(0, int(used) - int(included))
        if expected != int(claimed) or expected != int(sent):
            differences.append(
                {
                    "org_id": str(org_id),
                    "expected": expected,
                    "claimed": int(claimed),
                    "sent": int(sent),
                }
            )
    return differences
