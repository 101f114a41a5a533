"""The audit trail: `record(action, *, org, actor, target, outcome)` is the way in;
`note` (deferred), `note_many` (many targets, one INSERT) and `insert_from` (an INSERT
for a statement to carry) write the same row for the API's hot paths."""

import ipaddress
from typing import Any

import orjson
from django.db import connection
from django.http import HttpRequest
from django.utils import timezone

from clinik.audit.actions import ACTIONS
from clinik.lib.db import defer

__all__ = ["ACTIONS", "OUTCOMES", "insert_from", "note", "note_many", "record"]

OUTCOMES = frozenset({"success", "failure", "denied"})

# One statement, written once: record() runs on every FHIR interaction, inside the
# interaction's transaction, and compiling the same ORM insert each time costs more
# than the insert itself. Same round trip as the ORM's INSERT ... RETURNING.
_INSERT = (
    "INSERT INTO audit_auditevent (time, org_id, actor_type, actor_id, action, target_type,"
    " target_id, outcome, request_id, ip, user_agent)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def _actor_fields(actor: Any) -> tuple[str, str]:
    if actor is None:
        return "system", ""
    if isinstance(actor, tuple):
        return str(actor[0]), str(actor[1])
    kind = getattr(actor, "audit_actor_type", None)
    if kind is None:
        kind = "user" if getattr(actor, "is_authenticated", False) else "anonymous"
    return kind, "" if actor.pk is None else str(actor.pk)


def _target_fields(target: Any) -> tuple[str, str]:
    if target is None:
        return "", ""
    if isinstance(target, tuple):
        return str(target[0]), str(target[1])
    return target._meta.label_lower, str(target.pk)


def _client_ip(request: HttpRequest) -> str | None:
    from clinik.lib.http import client_ip  # honours TRUSTED_PROXY_COUNT

    raw = client_ip(request)
    if not raw:
        return None
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def _fields(
    action: str, org: Any, actor: Any, target: Any, outcome: str, request: HttpRequest | None
) -> dict[str, Any]:
    if action not in ACTIONS:
        raise ValueError(f"unregistered audit action {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    actor_type, actor_id = _actor_fields(actor)
    target_type, target_id = _target_fields(target)
    return {
        "time": timezone.now(),
        "org_id": getattr(org, "pk", org),
        "actor_type": actor_type[:10],
        "actor_id": actor_id[:64],
        "action": action,
        "target_type": target_type[:64],
        "target_id": target_id[:64],
        "outcome": outcome,
        "request_id": str(getattr(request, "request_id", "") or "")[:64] if request else "",
        "ip": _client_ip(request) if request else None,
        "user_agent": str(request.META.get("HTTP_USER_AGENT", ""))[:256] if request else "",
    }


def record(
    action: str,
    *,
    org: Any,
    actor: Any,
    target: Any = None,
    outcome: str = "success",
    request: HttpRequest | None = None,
) -> Any:
    """Write one audit event in the caller's transaction (one INSERT).

    org: an Organization, its id, or None. actor: a User, an ApiKey, a
    ("type", "id") tuple, or None for the system. target: a model instance, a
    ("type", "id") tuple, or None. request: the request it happened in, for the
    request id, IP address and user agent. Returns the (saved) AuditEvent.
    """
    from clinik.audit.models import AuditEvent

    fields = _fields(action, org, actor, target, outcome, request)
    with connection.cursor() as cursor:
        cursor.execute(f"{_INSERT} RETURNING id", list(fields.values()))
        (pk,) = cursor.fetchone()
    return AuditEvent(id=pk, **fields)


def note(
    action: str,
    *,
    org: Any,
    actor: Any,
    target: Any = None,
    outcome: str = "success",
    request: HttpRequest | None = None,
) -> None:
    """record() for the API's hot paths: the same row in the caller's transaction, but
    deferred (clinik.lib.db.defer): it travels with the transaction's next statement
    or its COMMIT, so auditing an interaction costs no round trip of its own."""
    defer(_INSERT, list(_fields(action, org, actor, target, outcome, request).values()))


def insert_from(
    action: str,
    *,
    org: Any,
    actor: Any,
    target: Any = None,
    request: HttpRequest | None = None,
    succeeded: str,
) -> tuple[str, list[Any]]:
    """The INSERT of one audit event, for a statement to carry as a data-modifying CTE
    (the read and its audit row in one statement): `succeeded` is an SQL condition
    deciding the outcome, success or failure."""
    fields = _fields(action, org, actor, target, "success", request)
    outcome = f"CASE WHEN {succeeded} THEN 'success' ELSE 'failure' END"
    return _insert_select(fields, {"outcome": outcome})


def _insert_select(fields: dict[str, Any], computed: dict[str, str]) -> tuple[str, list[Any]]:
    """INSERT ... SELECT of one event's fields: each a parameter, except the columns in
    `computed`, which are SQL expressions (this module's own, never values)."""
    names = list(fields)
    select = [computed.get(name, "%s") for name in names]
    values = [value for name, value in fields.items() if name not in computed]
    # Column names and expressions are this module's own; every value is a parameter.
    sql = f"INSERT INTO audit_auditevent ({', '.join(names)}) SELECT {', '.join(select)}"
    return sql, values


def note_many(
    action: str,
    *,
    org: Any,
    actor: Any,
    targets: list[tuple[str, str]],
    outcome: str = "success",
    request: HttpRequest | None = None,
) -> None:
    """note() for many targets of one request (a transaction bundle's creates): one
    deferred INSERT, the targets in one JSON parameter."""
    if not targets:
        return
    fields = _fields(action, org, actor, None, outcome, request)
    sql, values = _insert_select(
        fields, {"target_type": "left(t->>0, 64)", "target_id": "left(t->>1, 64)"}
    )
    targets_json = orjson.dumps(targets).decode()
    defer(f"{sql} FROM jsonb_array_elements(%s::jsonb) AS t", [*values, targets_json])
