from typing import Any

import stripe
from celery import shared_task

from clinik.billing import dunning, event_retention, meters, records, webhooks


@shared_task(
    autoretry_for=(stripe.StripeError, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def process_stripe_event(event_pk: int) -> bool:
    """A stored webhook event, processed (Stripe re-read) with bounded retries."""
    return webhooks.process(event_pk)


@shared_task(expires=3000)
def report_meters() -> dict[str, Any]:
    """Hourly: overage of finished hours to Stripe's meter (idempotent per org and hour)."""
    return meters.report()


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
