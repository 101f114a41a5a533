"""Thin shells around clinik.notify's functions (which the tests call directly)."""

from celery import shared_task

from clinik.notify import announcements, retention
from clinik.privacy.models import PolicyVersion


@shared_task
def announce_policy(policy_id: int) -> int:
    version = PolicyVersion.objects.filter(pk=policy_id).first()
    return announcements.announce(version) if version else 0


@shared_task
def announce_policy_versions() -> int:
    return announcements.announce_pending()


@shared_task
def purge_expired_email_records() -> int:
    """Daily: email records older than 90 days and browsers not seen for 90 days
    (clinik.notify.retention)."""
    return retention.purge_expired() + retention.purge_forgotten_browsers()
