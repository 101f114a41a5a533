"""Writing and removing a resource's search index rows (PostgreSQL store).

One statement per change: data-modifying CTEs delete the old rows and insert the
new ones (all sub-statements see the same snapshot, so the DELETE never sees the
rows the INSERTs add), inside the caller's transaction, so a resource and its index
rows are committed or rolled back together. The statement is deferred
(clinik.lib.db.defer): it travels with the transaction's next statement or COMMIT.
"""

import math
from typing import Any
from uuid import UUID

import orjson
from django.db import connection

from clinik.fhir.search.extract import TABLES, IndexRows, extract
from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.db import defer, send_ahead

# table -> (IndexRows attribute, columns after org_id/resource_type/id, SQL array types)
_LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "fhir_idx_string": ("string", ("param", "value", "exact"), ("text",) * 3),
    "fhir_idx_token": (
        "token",
        ("param", "system", "code", "subject_type", "subject_id"),
        ("text",) * 5,
    ),
    "fhir_idx_date": ("date", ("param", "low", "high"), ("text", "timestamptz", "timestamptz")),
    "fhir_idx_number": ("number", ("param", "low", "high"), ("text", "float8", "float8")),
    "fhir_idx_quantity": (
        "quantity",
        ("param", "low", "high", "system", "code", "unit"),
        ("text", "float8", "float8", "text", "text", "text"),
    ),
    "fhir_idx_reference": ("reference", ("param", "target_type", "target_id"), ("text",) * 3),
    "fhir_idx_uri": ("uri", ("param", "value"), ("text",) * 2),
    "fhir_idx_composite": (
        "composite",
        (
            "param",
            "system1",
            "code1",
            "system2",
            "code2",
            "text2",
            "low2",
            "high2",
            "dlow2",
            "dhigh2",
            "low3",
            "high3",
        ),
        ("text",) * 6 + ("float8", "float8", "timestamptz", "timestamptz", "float8", "float8"),
    ),
}
assert set(_LAYOUT) == set(TABLES)


def _from_json(columns: tuple[str, ...], types: tuple[str, ...]) -> str:
    """The select list that reads one row from a JSON array `r` holding
    [resource_type, id, *columns]. JSON has no infinity: orjson writes an open range's
    float bound as null, read back as -infinity (low) or infinity (high); these
    tables have no other nulls in those columns. The composite table's optional
    float columns are really null: its infinite bounds travel as strings instead."""
    exprs = []
    for k, (column, sql_type) in enumerate(zip(columns, types, strict=True), start=2):
        value = f"r->>{k}"
        if sql_type == "float8" and column in ("low", "high"):
            bound = "-infinity" if column == "low" else "infinity"
            exprs.append(f"COALESCE(({value})::float8, '{bound}')")
        elif sql_type == "text":
            exprs.append(value)
        else:
            exprs.append(f"({value})::{sql_type}")
    return ", ".join(exprs)


_FROM_JSON = {
    table: _from_json(columns, types) for table, (_attribute, columns, types) in _LAYOUT.items()
}


def _finite(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _subjects(rows: IndexRows) -> list[tuple[str | None, str | None]]:
    """The resource's `subject` references (type, id), repeated on its token rows
    (migration 0008): one copy of the token rows per subject, one with none."""
    subjects = sorted((t, i) for param, t, i in rows.reference if param == "subject")
    return list(subjects) or [(None, None)]


def _statement(
    tenant: UUID,
    written: list[tuple[str, str, IndexRows]],
    removed: tuple[str, str] | None = None,
) -> tuple[str, list[Any]]:
    """One statement: remove the rows of `removed` (resource type, id), then insert the
    rows of every resource `written`, one INSERT per table, each table's rows in one
    JSON parameter (orjson and one quoted string cost a fraction of adapting one
    array per column, bench/README.md)."""
    parts: list[str] = []
    args: list[Any] = []
    if removed is not None:
        for number, table in enumerate(TABLES):
            parts.append(
                f"d{number} AS (DELETE FROM {table}"
                " WHERE org_id = %s AND resource_type = %s AND id = %s)"
            )
            args += [tenant, *removed]
    for number, table in enumerate(TABLES):
        attribute, columns, _types = _LAYOUT[table]
        composite = table == "fhir_idx_composite"
        if table == "fhir_idx_token":
            rows = [
                [resource_type, resource_id, *value, *subject]
                for resource_type, resource_id, index_rows in written
                for subject in _subjects(index_rows)
                for value in index_rows.token
            ]
        else:
            rows = [
                [resource_type, resource_id, *(map(_finite, value) if composite else value)]
                for resource_type, resource_id, index_rows in written
                for value in getattr(index_rows, attribute)
            ]
        if not rows:
            continue
        parts.append(
            f"i{number} AS (INSERT INTO {table} (org_id, resource_type, id, {', '.join(columns)})"
            f" SELECT %s, r->>0, r->>1, {_FROM_JSON[table]}"
            " FROM jsonb_array_elements(%s::jsonb) AS r)"
        )
        args += [tenant, orjson.dumps(rows).decode()]
    if not parts:
        return "", []
    return f"WITH {', '.join(parts)} SELECT 1", args


def write_index(
    tenant: UUID,
    resource_type: str,
    resource_id: str,
    resource: dict[str, Any],
    *,
    replace: bool,
) -> None:
    """Index a resource version; `replace` first removes the previous version's rows."""
    removed = (resource_type, resource_id) if replace else None
    sql, args = _statement(tenant, [(resource_type, resource_id, extract(resource))], removed)
    if sql:
        defer(sql, args)


# Resources per statement of write_index_many.
CHUNK = 100


def write_index_many(tenant: UUID, resources: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Index new resources (resource type, id, document), one statement per CHUNK
    resources, each sent as soon as it is built: PostgreSQL inserts one chunk's rows
    while Python extracts the next one's (`send_ahead`)."""
    for start in range(0, len(resources), CHUNK):
        chunk = resources[start : start + CHUNK]
        sql, args = _statement(tenant, [(t, i, extract(r)) for t, i, r in chunk])
        if sql:
            defer(sql, args)
            send_ahead()


def remove_index(tenant: UUID, resource_type: str, resource_id: str) -> None:
    """Remove a resource's rows (delete, expunge, erase): it is absent from search at once."""
    sql, args = _statement(tenant, [], (resource_type, resource_id))
    defer(sql, args)


def purge_index(tenant: UUID, *, batch: int = 5000) -> dict[str, int]:
    """Delete every index row of a tenant (account closure), table by table, in batches
    that each are their own transaction: safe to stop and rerun.

    Batches walk the (org_id, resource_type, id, param) index forward from the last
    key deleted. A plain `WHERE org_id = %s LIMIT n` would step over every dead entry
    of the earlier batches again, which makes purging millions of rows quadratic."""
    counts: dict[str, int] = {}
    for table in TABLES:
        counts[table] = 0
        after: tuple[str, str] = ("", "")
        while True:
            with tenant_transaction(tenant), connection.cursor() as cursor:
                cursor.execute(
                    f"WITH doomed AS (SELECT ctid, resource_type, id FROM {table}"
                    " WHERE org_id = %s AND (resource_type, id) >= (%s, %s)"
                    " ORDER BY resource_type, id LIMIT %s),"
                    f" gone AS (DELETE FROM {table}"
                    " WHERE ctid = ANY(ARRAY(SELECT ctid FROM doomed)))"
                    " SELECT count(*), max(resource_type), max(id) FILTER (WHERE resource_type ="
                    " (SELECT max(resource_type) FROM doomed)) FROM doomed",
                    [tenant, *after, batch],
                )
                deleted, last_type, last_id = cursor.fetchone()
            counts[table] += deleted
            if deleted < batch:
                break
            after = (last_type, last_id)
    return counts


def reindex_tenant(tenant: UUID, *, batch: int = 500) -> int:
    """Rebuild the index rows of every current resource of a tenant, in batches (each
    its own transaction, so it can be stopped and rerun). Returns resources indexed."""
    indexed, after = 0, ("", "")
    while True:
        with tenant_transaction(tenant), connection.cursor() as cursor:
            cursor.execute(
                "SELECT resource_type, id, content FROM fhir_resource"
                " WHERE org_id = %s AND (resource_type, id) > (%s, %s) AND deleted_at IS NULL"
                " ORDER BY resource_type, id LIMIT %s",
                [tenant, *after, batch],
            )
            rows = cursor.fetchall()
            for resource_type, resource_id, content in rows:
                write_index(tenant, resource_type, resource_id, orjson.loads(content), replace=True)
        indexed += len(rows)
        if len(rows) < batch:
            return indexed
        after = (rows[-1][0], rows[-1][1])
