"""The dispatcher: subscriptions checked, outbox rows turned into deliveries.

Runs every second from beat (`tick`). Each step is its own transaction and can be
killed at any point: outbox rows are deleted in the transaction that creates their
deliveries, claimed with FOR UPDATE SKIP LOCKED so two dispatchers never share one."""

from collections import defaultdict
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

import orjson
from django.conf import settings
from django.utils import timezone

from clinik.fhir.http import FhirError
from clinik.fhir.search.query import parse_search
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.fhir.store import get_store
from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.webhooks import EndpointRefused, check_url
from clinik.subscriptions.models import Delivery, OutboxEvent, Subscription

OUTBOX_BATCH = 500
PAYLOADS = ("", "application/fhir+json")
# Headers a channel may not set: ours, and those that change how the request travels.
RESERVED_HEADERS = {
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "clinikapi-signature",
    "clinikapi-event-id",
    "clinikapi-event-type",
}


def read_criteria(org_id: UUID, resource_id: str) -> str | None:
    """The criteria of a Subscription resource, read from the store (it holds search
    values, so it lives only there)."""
    version = get_store().read(org_id, "Subscription", resource_id)
    if version is None or version.content is None:
        return None
    criteria = orjson.loads(version.content).get("criteria")
    return criteria if isinstance(criteria, str) else None


def parse_criteria(criteria: str, resource_id: str | None = None) -> Any:
    """The SearchQuery of a criteria URL (strict: an unknown parameter is an error),
    restricted to one resource when resource_id is given."""
    resource_type, _, query = criteria.partition("?")
    if resource_type not in RESOURCE_TYPES:
        raise FhirError(400, "value", "criteria must start with a FHIR resource type")
    params = parse_qsl(query, keep_blank_values=True)
    if resource_id is not None:
        params.append(("_id", resource_id))
    return parse_search(params, [resource_type], strict=True)


def problem(
    *, channel_type: object, criteria: object, payload: object, headers: object, endpoint: object
) -> tuple[str, str]:
    """(element, why) when a subscription with these values cannot be active, in words
    that quote no value; ("", "") when it can."""
    if channel_type != "rest-hook":
        return "channel.type", "channel.type must be rest-hook"
    if not isinstance(criteria, str) or not criteria:
        return "criteria", "criteria is missing"
    try:
        parse_criteria(criteria)
    except FhirError as error:
        return "criteria", f"criteria is not a valid search ({error.code})"
    if payload not in PAYLOADS:
        return "channel.payload", "channel.payload must be empty or application/fhir+json"
    if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
        return "channel.header", "channel.header must be a list of strings"
    for header in headers:
        name, colon, _value = header.partition(":")
        if (
            not colon
            or not name.strip()
            or any(c in header for c in "\r\n\0")
            or name.strip().lower() in RESERVED_HEADERS
        ):
            return "channel.header", (
                "channel.header entries must be 'Name: value' and not a reserved header"
            )
    if not isinstance(endpoint, str):
        return "channel.endpoint", "channel.endpoint is missing"
    try:
        check_url(endpoint, allow_private=settings.SUBSCRIPTIONS_ALLOW_PRIVATE_ENDPOINTS)
    except EndpointRefused as refused:
        return "channel.endpoint", str(refused)
    return "", ""


def check_resource(resource: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The FHIR validator's check of a Subscription (a 400 at create and update time)."""
    channel = resource.get("channel") or {}
    where, why = problem(
        channel_type=channel.get("type"),
        criteria=resource.get("criteria"),
        payload=channel.get("payload", ""),
        headers=channel.get("header", []),
        endpoint=channel.get("endpoint"),
    )
    return [("value", f"Subscription.{where}", why)] if why else []


def check_subscriptions() -> int:
    """Activate (or put in error) the subscriptions written since they were checked."""
    checked = 0
    pending = Subscription.objects.filter(status=Subscription.Status.REQUESTED)
    for subscription in pending.order_by("pk")[:OUTBOX_BATCH]:
        with tenant_transaction(subscription.org_id):
            criteria = read_criteria(subscription.org_id, subscription.resource_id)
            _where, error = problem(
                channel_type=subscription.channel_type,
                criteria=criteria,
                payload=subscription.payload,
                headers=subscription.headers,
                endpoint=subscription.endpoint,
            )
            status = Subscription.Status.ERROR if error else Subscription.Status.ACTIVE
            # Only the version checked: a write since then asks again.
            checked += Subscription.objects.filter(
                pk=subscription.pk,
                version_id=subscription.version_id,
                status=Subscription.Status.REQUESTED,
            ).update(status=status, error=error, checked_version=subscription.version_id)
    return checked


def _matches(org_id: UUID, criteria: str, event: OutboxEvent) -> bool:
    if event.deleted:
        return True  # the search index forgets a deleted resource: type only (README)
    try:
        query = parse_criteria(criteria, event.resource_id)
    except FhirError:
        return False
    if get_store().search(org_id, query).matches:
        return True
    # Matching reads the index, which holds the current version only: a version
    # deleted since it was written is matched, like the delete, on its type (README).
    current = get_store().read(org_id, event.resource_type, event.resource_id)
    return current is not None and current.content is None


def dispatch_org(org_id: UUID) -> int:
    """Turn one batch of the tenant's outbox, in commit order, into deliveries.
    Returns the number of outbox rows consumed."""
    with tenant_transaction(org_id):
        events = list(
            OutboxEvent.objects.select_for_update(skip_locked=True)
            .filter(org_id=org_id)
            .order_by("pk")[:OUTBOX_BATCH]
        )
        if not events:
            return 0
        by_type: dict[str, list[tuple[Subscription, str]]] = defaultdict(list)
        for subscription in Subscription.objects.filter(
            org_id=org_id, status=Subscription.Status.ACTIVE
        ).order_by("pk"):
            criteria = read_criteria(org_id, subscription.resource_id)
            if criteria:
                by_type[subscription.criteria_type].append((subscription, criteria))
        now = timezone.now()
        deliveries = [
            Delivery(
                org_id=org_id,
                subscription=subscription,
                resource_type=event.resource_type,
                resource_id=event.resource_id,
                version_id=event.version_id,
                deleted=event.deleted,
                next_attempt_at=now,
            )
            for event in events
            for subscription, criteria in by_type.get(event.resource_type, [])
            if _matches(org_id, criteria, event)
        ]
        Delivery.objects.bulk_create(deliveries)
        OutboxEvent.objects.filter(pk__in=[e.pk for e in events]).delete()
    return len(events)


def due_deliveries(org_id: UUID) -> list[int]:
    """The deliveries to send now: per subscription only its oldest pending one (order
    follows commit order), at most SUBSCRIPTIONS_TENANT_CONCURRENCY per tenant."""
    now = timezone.now()
    with tenant_transaction(org_id):
        heads = (
            Delivery.objects.filter(org_id=org_id, status=Delivery.Status.PENDING)
            .order_by("subscription_id", "pk")
            .distinct("subscription_id")
            .values_list("pk", "next_attempt_at")
        )
        due = sorted(pk for pk, when in heads if when <= now)
    return due[: settings.SUBSCRIPTIONS_TENANT_CONCURRENCY]


def tick() -> list[tuple[UUID, int]]:
    """One round: check new subscriptions, drain every tenant's outbox, and return the
    (org id, delivery id) pairs due now, for the caller to enqueue."""
    check_subscriptions()
    due: list[tuple[UUID, int]] = []
    orgs = list(Subscription.objects.values_list("org_id", flat=True).distinct())
    for org_id in orgs:
        while dispatch_org(org_id) == OUTBOX_BATCH:
            pass
        due += [(org_id, pk) for pk in due_deliveries(org_id)]
    return due


def lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.SUBSCRIPTIONS_LEASE_SECONDS)
