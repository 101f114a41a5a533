import logging
import threading
from typing import Any

import stripe
from celery import shared_task
from kombu.exceptions import OperationalError

from clinik.billing import dunning, event_retention, meters, records, stripe_api, webhooks

logger = logging.getLogger("clinik.billing")


@shared_task(
    autoretry_for=(stripe.StripeError, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def process_stripe_event(event_pk: int) -> bool:
    """A stored webhook event, processed (Stripe re-read) with bounded retries."""
    return webhooks.process(event_pk)


# The webhook's publish, on a connection of its own: one connect attempt of at most
# this long, no retries (the app's pooled connection retries for ~6 s with the broker
# down, which would hold Stripe's delivery that long). Only this publish uses it.
PUBLISH_TIMEOUT = 0.5
_publish = threading.local()


def _publisher() -> Any:
    """This thread's fail-fast broker connection (kombu connections are not shared
    between threads), made on first use and again after a failure."""
    conn = getattr(_publish, "connection", None)
    if conn is None:
        conn = process_stripe_event.app.connection_for_write(
            connect_timeout=PUBLISH_TIMEOUT,
            transport_options={
                "max_retries": 0,
                "socket_connect_timeout": PUBLISH_TIMEOUT,
                "socket_timeout": PUBLISH_TIMEOUT,
            },
        )
        _publish.connection = conn
    return conn


def enqueue_stripe_event(event_pk: int) -> None:
    """Queue a stored event's processing, once, without retries and with a short
    connect timeout (PUBLISH_TIMEOUT): the webhook answers within milliseconds even
    with the broker down, and the sweeper queues what could not be queued now. A
    connection the broker dropped (a restart) is reconnected by the Redis client on
    the next publish (tests/test_billing_webhook.py)."""
    try:
        # `connection` reaches send_task through **options (not in the stubs)
        process_stripe_event.apply_async(  # type: ignore[call-arg]
            (event_pk,), retry=False, connection=_publisher()
        )
    except (OperationalError, OSError):
        conn = getattr(_publish, "connection", None)
        _publish.connection = None
        if conn is not None:
            conn.release()
        logger.warning("Broker unreachable: a stored Stripe event waits for the sweeper")


@shared_task(expires=3000)
def sweep_stripe_events() -> int:
    """Every 10 minutes: queue again the stored events no task has processed."""
    pending = webhooks.unprocessed()
    for event_pk in pending:
        process_stripe_event.delay(event_pk)
    if stuck := webhooks.stuck_count():
        logger.warning("%d Stripe event(s) failed every attempt; not queued again", stuck)
    return len(pending)


@shared_task(expires=3000)
def report_meters() -> dict[str, Any]:
    """Hourly: overage of finished hours to Stripe's meter (idempotent per org and hour)."""
    return meters.report()


@shared_task(expires=3000)
def reconcile_meters_with_stripe() -> dict[str, int]:
    """Daily: our ledger's sent hours of the current periods against Stripe's meter
    event summaries (reconcile_meters --against-stripe). Stripe validates streamed
    events afterwards and drops the invalid ones; this is where that shows. Logged as
    counts only; nothing is resent by itself (an hour too old for Stripe can never
    be, a wrong customer needs a person): the operator runs the command with --resend."""
    from django.utils import timezone

    now = timezone.now()
    try:
        differences = meters.reconcile_with_stripe(now, meters.finished_until(now), now)
    except (stripe_api.BillingOff, meters.NoMeter):
        return {"organizations": 0, "hours": 0}
    hours = sum(len(row["hours"]) for row in differences)
    if differences:
        logger.warning(
            "Stripe's meter differs from our ledger: %d organization(s), %d hour(s);"
            " run reconcile_meters --against-stripe",
            len(differences),
            hours,
        )
    return {"organizations": len(differences), "hours": hours}


@shared_task
def purge_expired_records() -> int:
    """Daily: billing records older than 7 years (policy §6)."""
    return records.purge_expired()


@shared_task
def end_grace_periods() -> int:
    """Hourly: audit organizations whose grace period ended (Free limits apply)."""
    return dunning.note_ended_grace()


@shared_task
def purge_processed_stripe_events() -> int:
    """Daily: processed webhook events older than 90 days (clinik.billing.event_retention)."""
    return event_retention.purge_processed()


@shared_task
def purge_expired_billing_state() -> int:
    """Daily: overage reports older than 7 years and billing accounts of organizations
    closed 7 years ago (clinik.billing.event_retention)."""
    return event_retention.purge_expired_meter_reports() + event_retention.purge_closed_accounts()
