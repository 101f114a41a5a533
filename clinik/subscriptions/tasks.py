from uuid import UUID

from celery import shared_task

from clinik.subscriptions import delivery, dispatch, retention


@shared_task
def dispatch_subscriptions() -> int:
    orgs = dispatch.tick()
    for org_id in orgs:
        dispatch_tenant.delay(str(org_id))
    return len(orgs)


@shared_task
def dispatch_tenant(org_id: str) -> int:
    due = dispatch.run_tenant(UUID(org_id))
    for delivery_id in due:
        send_delivery.delay(org_id, delivery_id)
    return len(due)


@shared_task
def send_delivery(org_id: str, delivery_id: int) -> str:
    outcome = delivery.deliver(UUID(org_id), delivery_id)
    if outcome.result == "retry":
        send_delivery.apply_async((org_id, delivery_id), countdown=outcome.retry_in)
    if outcome.next_id is not None:
        send_delivery.delay(org_id, outcome.next_id)
    return outcome.result


@shared_task
def purge_finished_deliveries() -> int:
    """Daily: finished webhook deliveries older than 90 days (subscriptions.retention)."""
    return retention.purge_finished()
