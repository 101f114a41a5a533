"""Sending one delivery: claim it (a lease, so a worker that dies mid-way only delays
it), POST it signed, record the outcome (status code, latency, attempt: never the
payload or the answer), and schedule the retry."""

import logging
import random
import time
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import orjson
from django.conf import settings
from django.utils import timezone

from clinik.fhir.store import get_store
from clinik.fhir.tenancy import format_instant, tenant_transaction
from clinik.lib import webhooks
from clinik.subscriptions import sealing
from clinik.subscriptions.dispatch import lease_until, write_status
from clinik.subscriptions.models import Delivery, Subscription
from clinik.usage import store as usage_store

USER_AGENT = "ClinikAPI-Webhooks/1"
logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    result: str  # delivered, retry, failed, skipped
    retry_in: float = 0.0
    next_id: int | None = None  # the subscription's next delivery, due now


def notification(delivery: Delivery, subscription: Subscription, content: str | None) -> bytes:
    """The notification Bundle (type history). Id-only unless the channel asked for
    application/fhir+json: then the version that changed travels in the entry."""
    bundle: dict[str, object] = {
        "resourceType": "Bundle",
        "id": str(delivery.event_id),
        "type": "history",
        "timestamp": format_instant(timezone.now()),
        "entry": [],
    }
    if delivery.kind == Delivery.Kind.CHANGE:
        rtype, rid = delivery.resource_type, delivery.resource_id
        method = "DELETE" if delivery.deleted else "POST" if delivery.version_id == 1 else "PUT"
        entry: dict[str, object] = {
            "fullUrl": f"{settings.SITE_URL}/fhir/R4/{rtype}/{rid}",
            "request": {"method": method, "url": f"{rtype}/{rid}"},
            "response": {
                "status": "204" if delivery.deleted else "201" if method == "POST" else "200",
                "etag": f'W/"{delivery.version_id}"',
            },
        }
        if content is not None and subscription.payload == "application/fhir+json":
            entry["resource"] = orjson.loads(content)
        bundle["entry"] = [entry]
    return orjson.dumps(bundle)


def _headers(
    delivery: Delivery, subscription: Subscription, body: bytes, secret: str
) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in subscription.headers if isinstance(subscription.headers, list) else []:
        name, _, value = str(line).partition(":")
        headers[name.strip()] = value.strip()
    headers.update(
        {
            "Content-Type": "application/fhir+json",
            "User-Agent": USER_AGENT,
            "ClinikAPI-Event-Id": str(delivery.event_id),
            "ClinikAPI-Event-Type": str(delivery.kind),
            "ClinikAPI-Signature": webhooks.sign(secret, body, int(time.time())),
        }
    )
    return headers


def backoff_seconds(attempt: int) -> float:
    """Exponential from SUBSCRIPTIONS_RETRY_BASE_MS, capped, with 0-50 % jitter."""
    base = settings.SUBSCRIPTIONS_RETRY_BASE_MS / 1000
    delay = min(base * 2 ** (attempt - 1), settings.SUBSCRIPTIONS_RETRY_MAX_MS / 1000)
    return delay * (1 + random.random() / 2)  # jitter, not a secret


def _claim(org_id: UUID, delivery_id: int) -> tuple[Delivery, Subscription, bytes] | None:
    now = timezone.now()
    with tenant_transaction(org_id):
        delivery = (
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(
                pk=delivery_id,
                org_id=org_id,
                status=Delivery.Status.PENDING,
                next_attempt_at__lte=now,
            )
            .first()
        )
        if delivery is None:
            return None
        subscription = Subscription.objects.filter(pk=delivery.subscription_id).first()
        if (
            subscription is not None
            and delivery.kind == Delivery.Kind.CHANGE
            and subscription.status == Subscription.Status.REQUESTED
        ):
            return None  # the client wrote it again: it waits for the check (a second)
        if subscription is None or (
            delivery.kind == Delivery.Kind.CHANGE
            and subscription.status != Subscription.Status.ACTIVE
        ):
            delivery.status = Delivery.Status.FAILED
            delivery.last_error = "subscription not active"
            delivery.finished_at = now
            delivery.save(update_fields=["status", "last_error", "finished_at"])
            return None
        earlier = Delivery.objects.filter(
            subscription_id=delivery.subscription_id,
            status=Delivery.Status.PENDING,
            kind=Delivery.Kind.CHANGE,
            pk__lt=delivery.pk,
        )
        if delivery.kind == Delivery.Kind.CHANGE and earlier.exists():
            return None  # order per subscription: the older one goes first
        content = None
        wants_body = subscription.payload == "application/fhir+json"
        if delivery.kind == Delivery.Kind.CHANGE and wants_body and delivery.version_id:
            version = get_store().vread(
                org_id, delivery.resource_type, delivery.resource_id, delivery.version_id
            )
            content = version.content if version else None
        delivery.attempts += 1
        delivery.next_attempt_at = lease_until()
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    return delivery, subscription, notification(delivery, subscription, content)


def deliver(org_id: UUID, delivery_id: int) -> Outcome:
    claimed = _claim(org_id, delivery_id)
    if claimed is None:
        return Outcome("skipped")
    delivery, subscription, body = claimed
    try:
        secret = sealing.signing_secret(subscription)
        result = webhooks.post(
            subscription.endpoint,
            body,
            _headers(delivery, subscription, body, secret),
            allow_private=settings.SUBSCRIPTIONS_ALLOW_PRIVATE_ENDPOINTS,
            connect_timeout=settings.SUBSCRIPTIONS_CONNECT_TIMEOUT,
            read_timeout=settings.SUBSCRIPTIONS_READ_TIMEOUT,
        )
        refused = ""
    except webhooks.EndpointRefused as error:
        result, refused = webhooks.PostResult(None, 0, "refused"), str(error)
    except sealing.SecretUnavailable:
        # Not sent, retried like a network failure: the operator restores the key
        # (`manage.py check --database default` names the problem).
        logger.error(
            "subscription %s: signing secret not readable with the configured keys", subscription.pk
        )
        result, refused = webhooks.PostResult(None, 0, "signing secret unreadable"), ""

    now = timezone.now()
    code = result.status
    outcome = Outcome("failed")
    fields: dict[str, object] = {
        "last_status_code": code,
        "last_latency_ms": result.latency_ms,
        "last_error": result.error,
    }
    if code is not None and 200 <= code < 300:
        outcome = Outcome("delivered")
    elif refused:
        fields["last_error"] = "refused"
    elif code is None or code >= 500 or code == 429:
        if delivery.attempts < settings.SUBSCRIPTIONS_MAX_ATTEMPTS:
            outcome = Outcome("retry", backoff_seconds(delivery.attempts))
    elif 300 <= code < 400:
        fields["last_error"] = "redirect not followed"
    with tenant_transaction(org_id):
        if outcome.result == "retry":
            fields["next_attempt_at"] = now + timedelta(seconds=outcome.retry_in)
        else:
            fields["status"] = (
                Delivery.Status.DELIVERED
                if outcome.result == "delivered"
                else Delivery.Status.FAILED
            )
            fields["finished_at"] = now
        Delivery.objects.filter(pk=delivery.pk).update(**fields)
        # Usage analytics: the attempt's outcome class and latency, nothing else.
        usage_store.count_delivery(org_id, now, code, result.latency_ms)
        if outcome.result != "retry" and delivery.kind == Delivery.Kind.CHANGE:
            # Chain: the next one of this subscription goes now, not at the next tick.
            following = (
                Delivery.objects.filter(
                    subscription_id=delivery.subscription_id,
                    status=Delivery.Status.PENDING,
                    kind=Delivery.Kind.CHANGE,
                    next_attempt_at__lte=now,
                )
                .order_by("pk")
                .values_list("pk", flat=True)
                .first()
            )
            outcome.next_id = following
    if delivery.kind == Delivery.Kind.CHANGE:
        # The resource shows it: a new version by the system (dispatch.write_status).
        if refused:
            write_status(subscription, Subscription.Status.ERROR, refused)
        elif code == 410:
            write_status(subscription, Subscription.Status.OFF, "the endpoint answered 410 Gone")
        elif outcome.result == "failed" and (code is None or code >= 500 or code == 429):
            write_status(
                subscription,
                Subscription.Status.ERROR,
                f"delivery failed after {delivery.attempts} attempts",
            )
    return outcome
