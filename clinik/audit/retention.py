"""The 6-year retention purge (HIPAA): per chain, oldest sealed links first, one
batch per transaction through the sanctioned SECURITY DEFINER function, which
keeps the last purged hash as the chain's anchor. Idempotent; can be killed at any
point and rerun. Events not yet sealed are left for a later run."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from clinik.audit import seal

BATCH = 5000


def cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=settings.AUDIT_RETENTION_DAYS)


def _purgeable_upto(chain: str, before: datetime, batch: int) -> int | None:
    """The last link of the chain's oldest run of links whose events are all older
    than `before`, at most `batch` links long."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT s.seq, e.time < %s FROM audit_auditseal s"
            " JOIN audit_auditevent e ON e.id = s.event_id"
            " WHERE s.chain = %s ORDER BY s.seq LIMIT %s",
            [before, chain, batch],
        )
        upto = None
        for seq, old in cursor.fetchall():
            if not old:
                break
            upto = seq
        return upto


def purge_expired(now: datetime | None = None, batch: int = BATCH) -> int:
    """Delete audit events older than the retention period; returns how many."""
    before = cutoff(now)
    removed = 0
    for chain in seal.chains():
        while (upto := _purgeable_upto(chain, before, batch)) is not None:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT audit_purge_chain(%s, %s, %s)", [chain, upto, before])
                removed += cursor.fetchone()[0]
    return removed
