"""Retention of clinik.notify's records about people.

Email records are a log of service emails (kind, template, recipient, status):
kept LOG_RETENTION_DAYS (90, policy §3 "Error logs are retained for 90 days" and §6
"API request logs ... retained for 90 days, then automatically purged"), then deleted
by a daily job. Retries end within hours, so no record past the cutoff is in flight."""

from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from clinik.lib.retention import BATCH, delete_in_batches
from clinik.notify import security
from clinik.notify.models import EmailRecord, KnownBrowser


def purge_expired(now: datetime | None = None, batch: int = BATCH) -> int:
    cutoff = (now or timezone.now()) - timedelta(days=settings.LOG_RETENTION_DAYS)
    return delete_in_batches(EmailRecord.objects.filter(created_at__lt=cutoff), "created_at", batch)


def purge_forgotten_browsers(now: datetime | None = None, batch: int = BATCH) -> int:
    """A browser not seen for 90 days alerts as new again (clinik.notify.security), so
    its fingerprint serves nothing any more: deleted by the same daily job."""
    cutoff = (now or timezone.now()) - security.KNOWN_FOR
    return delete_in_batches(KnownBrowser.objects.filter(last_seen__lt=cutoff), "last_seen", batch)
