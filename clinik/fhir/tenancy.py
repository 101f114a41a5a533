"""The two tenancy walls.

1. The tag: every resource written carries the tenant tag (a client-sent tag with our
   system is replaced), and stores restrict every read to it.
2. The database: `tenant_transaction` sets `clinik.org_id` for one transaction; the
   FORCE row-level security policies of the FHIR tables refuse every other row.

In an API request the same statement sets the transaction's statement and lock
timeouts (settings.API_STATEMENT_TIMEOUT_MS, API_LOCK_TIMEOUT_MS).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from django.db import connection, transaction

from clinik.keys import recheck
from clinik.lib.db import defer, statement_limits

TENANT_SYSTEM = "https://clinikapi.com/fhir/tenant"

# Local to the transaction: it ends with it (the row-level security policies read it).
_SET_TENANT = "SELECT set_config('clinik.org_id', %s, true)"
# The same, with the API's statement and lock timeouts (clinik.lib.db.statement_limits).
_SET_TENANT_LIMITED = (
    "SELECT set_config('clinik.org_id', %s, true),"
    " set_config('statement_timeout', %s, true), set_config('lock_timeout', %s, true)"
)


def _set_tenant(org_id: UUID) -> tuple[str, list[str]]:
    limits = statement_limits.get()
    if limits is None:
        return _SET_TENANT, [str(org_id)]
    return _SET_TENANT_LIMITED, [str(org_id), f"{limits[0]}ms", f"{limits[1]}ms"]


def tenant_tag(org_id: UUID) -> dict[str, str]:
    return {"system": TENANT_SYSTEM, "code": str(org_id)}


def stamp(
    resource: dict[str, Any], org_id: UUID, resource_id: str, version_id: int, updated: datetime
) -> dict[str, Any]:
    """The resource as stored: server id, versionId and lastUpdated, and exactly one
    tenant tag (ours). Keys come in the order FHIR servers conventionally emit."""
    meta = dict(resource.get("meta") or {})
    tags = [
        t
        for t in meta.get("tag", [])
        if not (isinstance(t, dict) and t.get("system") == TENANT_SYSTEM)
    ]
    tags.append(tenant_tag(org_id))
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(updated)
    meta["tag"] = tags
    stamped: dict[str, Any] = {
        "resourceType": resource["resourceType"],
        "id": resource_id,
        "meta": meta,
    }
    for key, value in resource.items():
        if key not in stamped:
            stamped[key] = value
    return stamped


def carries_tenant_tag(resource: dict[str, Any], org_id: UUID) -> bool:
    tags = (resource.get("meta") or {}).get("tag") or []
    return any(t.get("system") == TENANT_SYSTEM and t.get("code") == str(org_id) for t in tags)


def format_instant(moment: datetime) -> str:
    """FHIR instant with millisecond precision in UTC, e.g. 2026-11-27T20:31:03.123Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@contextmanager
def tenant_transaction(org_id: UUID) -> Iterator[None]:
    """One database transaction in which row-level security admits org_id's rows only.

    Nested calls for the same tenant join the open transaction without another
    round trip; switching tenants inside one transaction is refused."""
    current = getattr(connection, "clinik_tenant", None)
    if current is not None and connection.in_atomic_block:
        if current != org_id:
            raise RuntimeError("a transaction cannot switch tenants")
        yield
        return
    with transaction.atomic():
        # Deferred: it travels with the transaction's first statement (same order).
        defer(*_set_tenant(org_id))
        if (check := recheck.statement(sent=False)) is not None:  # a key not looked up
            defer(*check)
        connection.clinik_tenant = org_id  # type: ignore[attr-defined]
        try:
            yield
        finally:
            connection.clinik_tenant = None  # type: ignore[attr-defined]


def tenant_query(org_id: UUID, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """One statement under the tenant, in one round trip, and its rows.

    Outside a transaction, `set_config` and the statement travel in one pipeline
    (bind parameters, one Sync), which PostgreSQL runs as one implicit transaction:
    the setting holds for the statement and ends with it, as in `tenant_transaction`.
    Inside one, the statement joins it (through `tenant_transaction`)."""
    if not connection.get_autocommit() or not hasattr(connection, "defer"):
        # (in a transaction; or Django's own backend, which has no queue: benchmarks)
        with tenant_transaction(org_id), connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cast(list[tuple[Any, ...]], cursor.fetchall())
    with connection.cursor() as cursor:
        ahead = [_set_tenant(org_id)]
        if (check := recheck.statement(sent=True)) is not None:
            ahead.append(check)  # an error there stops the rest
        # Queued on the connection, they travel with the statement (clinik.lib.pgbackend).
        connection.queue_ahead(ahead)  # type: ignore[attr-defined]
        cursor.execute(sql, params)
        return cast(list[tuple[Any, ...]], cursor.fetchall())
