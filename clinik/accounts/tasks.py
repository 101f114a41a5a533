from celery import shared_task
from django.contrib.sessions.models import Session
from django.utils import timezone

from clinik.accounts.models import Invitation


def clear_expired_sessions_now(batch: int = 5000) -> int:
    """Delete expired sessions in batches ordered by the indexed expiry column."""
    deleted = 0
    while True:
        keys = list(
            Session.objects.filter(expire_date__lt=timezone.now())
            .order_by("expire_date")
            .values_list("session_key", flat=True)[:batch]
        )
        if not keys:
            return deleted
        deleted += Session.objects.filter(session_key__in=keys).delete()[0]


@shared_task
def clear_expired_sessions() -> int:
    return clear_expired_sessions_now()


def purge_expired_invitations_now(batch: int = 5000) -> int:
    deleted = 0
    while True:
        ids = list(
            Invitation.objects.filter(expires_at__lt=timezone.now(), accepted_at__isnull=True)
            .order_by("expires_at")
            .values_list("id", flat=True)[:batch]
        )
        if not ids:
            return deleted
        deleted += Invitation.objects.filter(id__in=ids).delete()[0]


@shared_task
def purge_expired_invitations() -> int:
    return purge_expired_invitations_now()
