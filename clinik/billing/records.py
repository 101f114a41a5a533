"""Billing records are kept 7 years (policy §6), through account closure, then
deleted by a daily job that writes an audit record per organization."""

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from clinik import audit
from clinik.billing.models import Invoice


def purge_expired(now: datetime | None = None, batch: int = 1000) -> int:
    """Delete invoices older than BILLING_RECORD_RETENTION_DAYS, in batches ordered by
    the indexed invoice date; idempotent, safe to kill and rerun."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.BILLING_RECORD_RETENTION_DAYS)
    removed = 0
    while True:
        with transaction.atomic():
            rows = list(
                Invoice.objects.select_for_update(skip_locked=True)
                .filter(invoice_date__lt=cutoff)
                .order_by("invoice_date")
                .values_list("pk", "org_id")[:batch]
            )
            if not rows:
                return removed
            Invoice.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
            counts: dict[Any, int] = {}
            for _, org_id in rows:
                counts[org_id] = counts.get(org_id, 0) + 1
            for org_id, count in counts.items():
                audit.record(
                    "billing.records_purge",
                    org=org_id,
                    actor=None,
                    target=("invoices", str(count)),
                )
            removed += len(rows)
