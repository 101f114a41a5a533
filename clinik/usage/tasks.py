from celery import shared_task

from clinik.usage import store


@shared_task(expires=30)
def drain_request_logs() -> int:
    """Move buffered request records from Redis into PostgreSQL (every few seconds)."""
    return store.drain()


@shared_task
def purge_request_logs() -> dict[str, int]:
    """Policy §6: request and error logs are purged after 90 days."""
    return store.purge()
