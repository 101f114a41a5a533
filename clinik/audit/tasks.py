from celery import shared_task

from clinik.audit import exports as audit_exports
from clinik.audit import retention, seal


@shared_task(expires=120)
def seal_audit_trail() -> int:
    return seal.seal_all()


@shared_task
def purge_expired_audit_records() -> int:
    """HIPAA: audit records are kept six years, then purged (the chain keeps an anchor)."""
    seal.seal_all()
    return retention.purge_expired()


@shared_task(autoretry_for=(OSError,), retry_backoff=True, max_retries=3)
def write_audit_export(export_id: int) -> None:
    audit_exports.run_export(export_id)


@shared_task
def purge_expired_audit_exports() -> int:
    return audit_exports.purge_expired()
