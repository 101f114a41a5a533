"""Webhook delivery records (status code, latency, error class, the resource type and
id notified) are a delivery log: a finished one is kept LOG_RETENTION_DAYS (90, policy
§6 "API request logs ... retained for 90 days, then automatically purged"). The table
is behind row-level security, so the purge runs tenant by tenant, each batch in its own
tenant transaction, oldest first by the indexed (org, id); killed, it is rerun."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from clinik.accounts.models import Organization
from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.retention import BATCH

_DELETE = (
    "DELETE FROM subscriptions_delivery WHERE id IN (SELECT id FROM subscriptions_delivery"
    " WHERE org_id = %s AND status <> 'pending' AND finished_at < %s ORDER BY id LIMIT %s)"
)


def purge_finished(now: datetime | None = None, batch: int = BATCH) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=settings.LOG_RETENTION_DAYS)
    removed = 0
    for org_id in Organization.objects.order_by("pk").values_list("pk", flat=True).iterator():
        while True:
            with tenant_transaction(org_id), connection.cursor() as cursor:
                cursor.execute(_DELETE, [org_id, cutoff, batch])
                deleted = cursor.rowcount
            removed += deleted
            if deleted < batch:
                break
    return removed
