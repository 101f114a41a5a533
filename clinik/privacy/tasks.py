"""Celery tasks of data rights and retention: thin shells around plain functions.

Beat (settings.CELERY_BEAT_SCHEDULE): purge_expired_exports hourly, start_due_deletions
hourly (queues every closure and account deletion past its grace period), and
deletion_safety_net daily (runs the due ones inline, in case a queued job was lost).
"""

import logging

from celery import shared_task

from clinik.fhir import export
from clinik.privacy import closure, deletion

logger = logging.getLogger(__name__)


@shared_task
def run_export(job_id: str) -> str:
    return export.run_export(job_id)


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def delete_export_files(job_id: str) -> bool:
    return export.delete_files(job_id)


@shared_task
def purge_expired_exports() -> int:
    return export.purge_expired_exports()


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def run_closure(closure_id: int) -> str:
    return closure.run_closure(closure_id)


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=5)
def run_deletion(deletion_id: int) -> str:
    return deletion.run_deletion(deletion_id)


def start_due_deletions_now() -> int:
    queued = 0
    for closure_id in closure.due_closures():
        run_closure.delay(closure_id)
        queued += 1
    for deletion_id in deletion.due_deletions():
        run_deletion.delay(deletion_id)
        queued += 1
    return queued


@shared_task
def start_due_deletions() -> int:
    return start_due_deletions_now()


def deletion_safety_net_now() -> dict[str, str]:
    """Run every due closure and deletion here and now, one by one. Those a live
    worker holds are skipped; a failure is logged and does not stop the others."""
    results: dict[str, str] = {}
    for closure_id in closure.due_closures():
        try:
            results[f"closure:{closure_id}"] = closure.run_closure(closure_id)
        except Exception:
            logger.exception("safety net: closure %s failed", closure_id)
            results[f"closure:{closure_id}"] = "failed"
    for deletion_id in deletion.due_deletions():
        try:
            results[f"deletion:{deletion_id}"] = deletion.run_deletion(deletion_id)
        except Exception:
            logger.exception("safety net: deletion %s failed", deletion_id)
            results[f"deletion:{deletion_id}"] = "failed"
    return results


@shared_task
def deletion_safety_net() -> dict[str, str]:
    return deletion_safety_net_now()
