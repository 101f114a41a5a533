from datetime import timedelta

from celery import shared_task
from django.conf import settings

from clinik.fhir import idempotency
from clinik.fhir.store.postgres import erase_deleted


def erase_deleted_resources_now() -> int:
    """Erase all versions of resources deleted more than the grace period ago."""
    return erase_deleted(timedelta(days=settings.FHIR_ERASE_DELETED_AFTER_DAYS))


@shared_task
def erase_deleted_resources() -> int:
    return erase_deleted_resources_now()


@shared_task
def purge_expired_idempotency_records() -> int:
    """Hourly: idempotency records past their 24-hour window (hashes and ids only)."""
    return idempotency.purge_expired()
