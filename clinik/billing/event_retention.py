"""Stripe webhook events are a log of what Stripe sent (event id, type, object id; no
payload): kept LOG_RETENTION_DAYS (90, policy §6 "API request logs ... retained for 90
days, then automatically purged") once processed. Stripe stops redelivering an event
after 3 days, so the dedup row is long useless by then. Billing records (invoices) are
kept 7 years by clinik.billing.records, not here. An event never processed stays, for
an operator to look at."""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from clinik.accounts.models import Organization
from clinik.billing.models import Account, MeterReport, StripeEvent
from clinik.lib.retention import BATCH, delete_in_batches
from clinik.privacy.models import Closure


def purge_processed(now: datetime | None = None, batch: int = BATCH) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=settings.LOG_RETENTION_DAYS)
    expired = StripeEvent.objects.filter(received_at__lt=cutoff, processed_at__isnull=False)
    return delete_in_batches(expired, "received_at", batch)


def purge_expired_meter_reports(now: datetime | None = None, batch: int = BATCH) -> int:
    """Overage reports are billing records (policy §6: 7 years): deleted once their hour
    is older than BILLING_RECORD_RETENTION_DAYS, like the invoices (clinik.billing.records),
    oldest first by primary key (rows are written hour by hour)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.BILLING_RECORD_RETENTION_DAYS)
    return delete_in_batches(MeterReport.objects.filter(hour__lt=cutoff), "pk", batch)


def purge_closed_accounts(now: datetime | None = None, batch: int = BATCH) -> int:
    """The billing account of a closed organization (its Stripe customer id and billing
    email) is kept with the invoices, 7 years after the closure completed, then deleted."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.BILLING_RECORD_RETENTION_DAYS)
    expired = Account.objects.filter(
        org__status=Organization.Status.CLOSED,
        org__closures__status=Closure.Status.COMPLETED,
        org__closures__completed_at__lt=cutoff,
    )
    return delete_in_batches(expired, "pk", batch)
