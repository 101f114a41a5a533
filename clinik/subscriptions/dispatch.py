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
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from clinik import audit
from clinik.fhir.http import FhirError
from clinik.fhir.search.index import write_index
from clinik.fhir.search.query import parse_search
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.fhir.store import get_store
from clinik.fhir.store.base import Version, VersionConflict
from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.webhooks import EndpointRefused, check_url
from clinik.subscriptions.models import Delivery, OutboxEvent, Subscription

OUTBOX_BATCH = 500
LOCK = 0x5B5C  # advisory lock namespace: one dispatcher per tenant
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
    """The FHIR validator's check of a Subscription (a 400 at create and update time).
    A store that does not report its changes (HealthLake) serves no subscriptions."""
    if not get_store().features.subscriptions:
        return [
            (
                "not-supported",
                "Subscription",
                "Subscriptions are not available on this server's FHIR store",
            )
        ]
    channel = resource.get("channel") or {}
    where, why = problem(
        channel_type=channel.get("type"),
        criteria=resource.get("criteria"),
        payload=channel.get("payload", ""),
        headers=channel.get("header", []),
        endpoint=channel.get("endpoint"),
    )
    return [("value", f"Subscription.{where}", why)] if why else []


SYSTEM_WRITE = "SELECT set_config('clinik.subscription_system', %s, true)"


def write_status(subscription: Subscription, status: str, error: str = "") -> bool:
    """Write the live status into the Subscription resource: a new version (audited as
    the system), only if the resource is still at the version the decision was made on
    (If-Match: a client's write since then wins, and is checked again). The trigger
    copies the status into the mirror row (migration 0003). False if it lost."""
    org_id = subscription.org_id
    store = get_store()
    try:
        with tenant_transaction(org_id):
            current = store.read(org_id, "Subscription", subscription.resource_id)
            if current is None or current.content is None:
                return False
            if current.version_id != subscription.version_id:
                return False
            document = orjson.loads(current.content)
            if document.get("status") == status and document.get("error", "") == error:
                # The resource says so already (a client wrote it): only the mirror moves.
                return bool(
                    Subscription.objects.filter(
                        pk=subscription.pk, version_id=subscription.version_id
                    ).update(
                        status=status,
                        error=error,
                        checked_version=subscription.version_id,
                        updated_at=timezone.now(),
                    )
                )
            document["status"] = status
            if error:
                document["error"] = error
            else:
                document.pop("error", None)
            with connection.cursor() as cursor:
                cursor.execute(SYSTEM_WRITE, ["on"])
                store.update(
                    org_id,
                    document,
                    subscription.resource_id,
                    if_match=subscription.version_id,
                )
                # The deferred write goes ahead of this statement, with the setting on.
                cursor.execute(SYSTEM_WRITE, [""])
            audit.record(
                "fhir.update",
                org=org_id,
                actor=None,
                target=("Subscription", subscription.resource_id),
            )
    except VersionConflict:
        return False
    return True


def check_subscriptions() -> int:
    """Activate (or put in error) the subscriptions written since they were checked.

    R4 leaves the moment to the server; ours is the check: valid criteria, channel and
    endpoint make the subscription `active` at once (no handshake, no waiting for a
    first delivery), anything else `error` with the reason in `error`. Either way a new
    version of the resource says so."""
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
        checked += write_status(subscription, status, error)
    return checked


MATCH_CHUNK = 200


def _matching_ids(org_id: UUID, criteria: str, ids: list[str]) -> set[str]:
    """Which of these resources (of the criteria's type) the criteria match now: one
    search per MATCH_CHUNK ids (`_id=a,b,c`), whatever the number of events."""
    resource_type, _, query = criteria.partition("?")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != "_count"]
    found: set[str] = set()
    for start in range(0, len(ids), MATCH_CHUNK):
        chunk = ids[start : start + MATCH_CHUNK]
        extra = [("_id", ",".join(chunk)), ("_count", str(len(chunk))), ("_total", "none")]
        try:
            search = parse_search([*params, *extra], [resource_type], strict=True)
        except FhirError:
            return set()
        found.update(v.id for v in get_store().search(org_id, search).matches)
    return found


class _Undo(Exception):
    """Raised to roll back the savepoint in which past versions were put back."""


def _current_versions(org_id: UUID, events: list[OutboxEvent]) -> dict[tuple[str, str], int]:
    """(type, id) -> the version now live in the search index (absent: deleted or gone)."""
    keys = sorted({(e.resource_type, e.resource_id) for e in events})
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT resource_type, id, version_id FROM fhir_resource"
            " WHERE org_id = %s AND deleted_at IS NULL"
            " AND (resource_type, id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
            [org_id, [k[0] for k in keys], [k[1] for k in keys]],
        )
        return {(t, i): v for t, i, v in cursor.fetchall()}


def _match_past(
    org_id: UUID,
    past: list[tuple[OutboxEvent, Version]],
    criteria_of: dict[int, tuple[str, str]],
) -> dict[int, set[int]]:
    """Match events against a version that is no longer the indexed one (a delete: the
    version before it; a change overwritten or deleted since: its own version), with the
    search engine itself: in a savepoint, each such version is put back as the current
    one with its index rows, the criteria are searched (`_id=...`), and the savepoint is
    rolled back. Every criteria the API accepts is supported this way (chained and
    reverse-chained parameters see the other resources as they are now, as for any
    match). Returns subscription pk -> event pks matched."""
    matched: dict[int, set[int]] = defaultdict(set)
    rounds: list[dict[tuple[str, str], tuple[OutboxEvent, Version]]] = []
    for event, version in past:  # one version per resource in a round
        key = (event.resource_type, event.resource_id)
        for round_ in rounds:
            if key not in round_:
                round_[key] = (event, version)
                break
        else:
            rounds.append({key: (event, version)})
    for round_ in rounds:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                for (rtype, rid), (_event, version) in round_.items():
                    cursor.execute(
                        "UPDATE fhir_resource SET version_id = %s, last_updated = %s,"
                        " content = %s, deleted_at = NULL"
                        " WHERE org_id = %s AND resource_type = %s AND id = %s",
                        [
                            version.version_id,
                            version.last_updated,
                            version.content,
                            org_id,
                            rtype,
                            rid,
                        ],
                    )
                    if cursor.rowcount:
                        document = orjson.loads(version.content or "{}")
                        write_index(org_id, rtype, rid, document, replace=True)
                for subscription_pk, (rtype, criteria) in criteria_of.items():
                    ids = sorted(rid for (t, rid) in round_ if t == rtype)
                    if not ids:
                        continue
                    hits = _matching_ids(org_id, criteria, ids)
                    matched[subscription_pk].update(
                        event.pk
                        for (t, rid), (event, _v) in round_.items()
                        if t == rtype and rid in hits
                    )
                cursor.execute("SELECT 1")  # nothing of the round left queued
                raise _Undo
        except _Undo:
            pass
    return matched


def dispatch_org(org_id: UUID) -> int:
    """Turn one batch of the tenant's outbox, in commit order, into deliveries.
    Returns the number of outbox rows consumed (0 also when another dispatcher holds
    the tenant: one dispatcher per tenant keeps the order of its deliveries)."""
    store = get_store()
    with tenant_transaction(org_id):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", [LOCK, str(org_id)]
            )
            if not cursor.fetchone()[0]:
                return 0
        events = list(
            OutboxEvent.objects.select_for_update(skip_locked=True)
            .filter(org_id=org_id)
            # Commit order (migration 0004); rows older than it (seq NULL) come first.
            .order_by(F("seq").asc(nulls_first=True), "pk")[:OUTBOX_BATCH]
        )
        if not events:
            return 0
        criteria_of: dict[int, tuple[str, str]] = {}  # subscription pk -> (type, criteria)
        changed_types = {e.resource_type for e in events}
        for subscription in Subscription.objects.filter(
            org_id=org_id, status=Subscription.Status.ACTIVE, criteria_type__in=changed_types
        ).order_by("pk"):
            criteria = read_criteria(org_id, subscription.resource_id)
            if criteria:
                criteria_of[subscription.pk] = (subscription.criteria_type, criteria)
        watched = {rtype for rtype, _criteria in criteria_of.values()}
        events_watched = [e for e in events if e.resource_type in watched]
        current = _current_versions(org_id, events_watched) if events_watched else {}
        # An event about the version in the index now is matched by a plain search; any
        # other (a delete, a version overwritten or deleted since) against its version.
        now_live = [
            e
            for e in events_watched
            if not e.deleted and current.get((e.resource_type, e.resource_id)) == e.version_id
        ]
        past: list[tuple[OutboxEvent, Version]] = []
        erased: set[int] = set()
        live_pks = {e.pk for e in now_live}
        for event in events_watched:
            if event.pk in live_pks:
                continue
            wanted = event.version_id - 1 if event.deleted else event.version_id
            version = store.vread(org_id, event.resource_type, event.resource_id, wanted)
            if version is None or version.content is None:
                # Erased already ($expunge, or the erasure 30 days after a delete):
                # nothing left to match against, so every subscription of the type
                # hears of it rather than none (README).
                erased.add(event.pk)
            else:
                past.append((event, version))
        matched = _match_past(org_id, past, criteria_of) if past else defaultdict(set)
        for subscription_pk, (rtype, criteria) in criteria_of.items():
            mine = [e for e in now_live if e.resource_type == rtype]
            hits = _matching_ids(org_id, criteria, sorted({e.resource_id for e in mine}))
            matched[subscription_pk].update(e.pk for e in mine if e.resource_id in hits)
            matched[subscription_pk].update(
                e.pk for e in events_watched if e.pk in erased and e.resource_type == rtype
            )
        now = timezone.now()
        deliveries = [
            Delivery(
                org_id=org_id,
                subscription_id=subscription_pk,
                resource_type=event.resource_type,
                resource_id=event.resource_id,
                version_id=event.version_id,
                deleted=event.deleted,
                next_attempt_at=now,
            )
            for event in events  # commit order, hence delivery order
            for subscription_pk in sorted(matched)
            if event.pk in matched[subscription_pk]
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


def tick() -> list[UUID]:
    """Check new subscriptions; the organizations whose outbox and deliveries need a
    look (each gets its own task: one tenant's backlog does not hold up another)."""
    check_subscriptions()
    return list(Subscription.objects.values_list("org_id", flat=True).distinct())


def run_tenant(org_id: UUID) -> list[int]:
    """Drain the tenant's outbox; its deliveries due now, for the caller to enqueue."""
    while dispatch_org(org_id) == OUTBOX_BATCH:
        pass
    return due_deliveries(org_id)


def lease_until() -> Any:
    return timezone.now() + timedelta(seconds=settings.SUBSCRIPTIONS_LEASE_SECONDS)
