"""Dashboard actions on subscriptions (one transaction each, audited, side effects
after commit) and the closure purge."""

from uuid import UUID

from django.db import connection, transaction
from django.http import HttpRequest
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Organization, User
from clinik.fhir.tenancy import tenant_transaction
from clinik.subscriptions import sealing
from clinik.subscriptions.models import Delivery, OutboxEvent, Subscription

PURGE_BATCH = 5000


def purge_org(org_id: UUID) -> dict[str, int]:
    """Account closure: the tenant's subscriptions (no more notifications), then its
    outbox and deliveries, in batches under the tenant; safe to kill and rerun."""
    counts = {"subscriptions": Subscription.objects.filter(org_id=org_id).delete()[0]}
    for model in (OutboxEvent, Delivery):
        table = model._meta.db_table
        counts[table] = 0
        while True:
            with tenant_transaction(org_id), connection.cursor() as cursor:
                cursor.execute(
                    f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("  # noqa: S608 - model table
                    f"SELECT ctid FROM {table} WHERE org_id = %s LIMIT %s))",
                    [org_id, PURGE_BATCH],
                )
                deleted = cursor.rowcount
            counts[table] += deleted
            if deleted < PURGE_BATCH:
                break
    return counts


def _enqueue(org_id: UUID, delivery_id: int) -> None:
    from clinik.subscriptions.tasks import send_delivery

    transaction.on_commit(lambda: send_delivery.delay(str(org_id), delivery_id))


def do_ping(
    *, org: Organization, subscription: Subscription, actor: User, request: HttpRequest | None
) -> Delivery:
    """Send a test ping (an empty notification Bundle) to the subscription's endpoint."""
    with tenant_transaction(org.pk):
        org.lock_writable()
        delivery = Delivery.objects.create(
            org=org,
            subscription=subscription,
            kind=Delivery.Kind.PING,
            next_attempt_at=timezone.now(),
        )
        audit.record("webhook.ping", org=org, actor=actor, target=subscription, request=request)
        _enqueue(org.pk, delivery.pk)
    return delivery


def do_rotate_secret(
    *, org: Organization, subscription: Subscription, actor: User, request: HttpRequest | None
) -> str:
    """A new signing secret, effective for the next delivery. Returned to be shown once."""
    secret = sealing.new_secret()
    with transaction.atomic():
        org.lock_writable()
        Subscription.objects.filter(pk=subscription.pk).update(
            secret=sealing.seal(secret), secret_shown=True, updated_at=timezone.now()
        )
        audit.record("webhook.rotate", org=org, actor=actor, target=subscription, request=request)
    return secret


def do_reveal_secret(
    *, org: Organization, subscription: Subscription, actor: User, request: HttpRequest | None
) -> str | None:
    """The subscription's secret (made now if no delivery made it yet), exactly once;
    None once it has been shown. Raises sealing.SecretUnavailable (nothing is marked
    shown) when the stored secret is sealed with a key no longer configured."""
    with transaction.atomic():
        shown = Subscription.objects.filter(pk=subscription.pk, secret_shown=False).update(
            secret_shown=True
        )
        if not shown:
            return None
        secret = sealing.signing_secret(subscription)
        audit.record("webhook.reveal", org=org, actor=actor, target=subscription, request=request)
    return secret


def do_replay(
    *, org: Organization, delivery: Delivery, actor: User, request: HttpRequest | None
) -> Delivery:
    """Send a failed delivery again, as a new delivery with the same content reference
    (a new event id: the receiver saw the old one fail)."""
    with tenant_transaction(org.pk):
        org.lock_writable()
        replay = Delivery.objects.create(
            org=org,
            subscription_id=delivery.subscription_id,
            kind=delivery.kind,
            resource_type=delivery.resource_type,
            resource_id=delivery.resource_id,
            version_id=delivery.version_id,
            deleted=delivery.deleted,
            next_attempt_at=timezone.now(),
        )
        subscription = Subscription.objects.get(pk=delivery.subscription_id)
        audit.record("webhook.replay", org=org, actor=actor, target=subscription, request=request)
        _enqueue(org.pk, replay.pk)
    return replay
