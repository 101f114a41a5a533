"""The PostgreSQL FHIR store: the embedded default and the reference for behaviour.

Each call runs inside `tenant_transaction(tenant)`, so row-level security admits the
tenant's rows only (wall 2). The SQL also names the tenant explicitly (wall 1); a
store built with tag_wall=False leaves that predicate out, which the isolation
tests use to show that row-level security holds on its own.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import orjson
from django.db import connection, transaction
from django.utils import timezone

from clinik.fhir.search.index import purge_index, remove_index, write_index, write_index_many
from clinik.fhir.store.base import (
    SEARCH_FEATURES,
    Alongside,
    HistoryPage,
    SearchResult,
    StoreFeatures,
    Version,
    VersionConflict,
)
from clinik.fhir.tenancy import stamp, tenant_query, tenant_transaction
from clinik.lib.db import defer, send_ahead

if TYPE_CHECKING:
    from clinik.fhir.search.query import SearchQuery

_PURGE_BATCH = 5000

# The history rows of the versions 1 a CTE `r` inserted (RETURNING every column).
_HISTORY_OF_R = (
    " RETURNING org_id, resource_type, id, version_id, last_updated, content)"
    " INSERT INTO fhir_history"
    " (org_id, resource_type, id, version_id, last_updated, method, content)"
    " SELECT org_id, resource_type, id, version_id, last_updated, 'create', content FROM r"
)

# Version 1 of many resources and their history rows: [type, id, content] per row of
# one JSON parameter (a JSON string round-trips the content text exactly).
_INSERT_MANY = (
    "WITH r AS (INSERT INTO fhir_resource"
    " (org_id, resource_type, id, version_id, last_updated, content)"
    " SELECT %s, x->>0, x->>1, 1, %s, x->>2 FROM jsonb_array_elements(%s::jsonb) AS x"
    + _HISTORY_OF_R
)

# Version 1 of a resource and its history row, in one statement.
_INSERT_FIRST = (
    "WITH r AS (INSERT INTO fhir_resource"
    " (org_id, resource_type, id, version_id, last_updated, content)"
    " VALUES (%s, %s, %s, 1, %s, %s){on_conflict}" + _HISTORY_OF_R
)


def dumps(document: dict[str, Any]) -> str:
    return orjson.dumps(document).decode()


class PostgresStore:
    features = StoreFeatures(search=True, search_features=SEARCH_FEATURES, subscriptions=True)

    def __init__(self, *, tag_wall: bool = True) -> None:
        self.tag_wall = tag_wall
        # "org_id = %s AND " or "" — the tag wall's share of every WHERE clause.
        self._org = "org_id = %s AND " if tag_wall else ""

    def _args(self, tenant: UUID, *rest: Any) -> list[Any]:
        return [tenant, *rest] if self.tag_wall else list(rest)

    # --- reads -----------------------------------------------------------------

    def read(
        self,
        tenant: UUID,
        resource_type: str,
        resource_id: str,
        *,
        alongside: Alongside | None = None,
    ) -> Version | None:
        select = (
            "SELECT version_id, last_updated, content FROM fhir_resource"
            f" WHERE {self._org}resource_type = %s AND id = %s"
        )
        args = self._args(tenant, resource_type, resource_id)
        if alongside is not None:
            # One statement, one round trip: the read and what it carries (its audit row).
            insert, insert_args = alongside("EXISTS (SELECT 1 FROM r WHERE content IS NOT NULL)")
            select = f"WITH r AS ({select}), a AS ({insert}) SELECT * FROM r"
            args += insert_args
        rows = tenant_query(tenant, select, args)
        if not rows:
            return None
        row = rows[0]
        method = "delete" if row[2] is None else "update"
        return Version(resource_type, resource_id, row[0], row[1], row[2], method)

    def vread(
        self, tenant: UUID, resource_type: str, resource_id: str, version_id: int
    ) -> Version | None:
        with tenant_transaction(tenant), connection.cursor() as cursor:
            cursor.execute(
                "SELECT last_updated, content, method FROM fhir_history"
                f" WHERE {self._org}resource_type = %s AND id = %s AND version_id = %s",
                self._args(tenant, resource_type, resource_id, version_id),
            )
            row = cursor.fetchone()
        if row is None:
            return None
        return Version(resource_type, resource_id, version_id, row[0], row[1], row[2])

    # --- writes ----------------------------------------------------------------

    def create(
        self, tenant: UUID, resource: dict[str, Any], *, resource_id: str | None = None
    ) -> Version:
        resource_type = resource["resourceType"]
        resource_id = resource_id or str(uuid4())
        now = timezone.now()
        document = stamp(resource, tenant, resource_id, 1, now)
        content = dumps(document)
        with tenant_transaction(tenant):
            # Deferred, with its index rows: a create needs no answer from the database
            # (an id that exists already fails the transaction at its COMMIT).
            defer(
                _INSERT_FIRST.format(on_conflict=""),
                [tenant, resource_type, resource_id, now, content],
            )
            write_index(tenant, resource_type, resource_id, document, replace=False)
        return Version(resource_type, resource_id, 1, now, content, "create")

    def create_many(
        self, tenant: UUID, resources: list[tuple[dict[str, Any], str]]
    ) -> list[Version]:
        """Create many resources (document, new id): one statement for the resources
        with their history rows, then their index rows (write_index_many), each sent
        without waiting for its answer (a transaction bundle's POST entries)."""
        now = timezone.now()
        documents = [stamp(resource, tenant, rid, 1, now) for resource, rid in resources]
        contents = [dumps(document) for document in documents]
        rows = [
            [document["resourceType"], document["id"], content]
            for document, content in zip(documents, contents, strict=True)
        ]
        with tenant_transaction(tenant):
            defer(_INSERT_MANY, [tenant, now, orjson.dumps(rows).decode()])
            send_ahead()  # inserted while the index rows are extracted
            write_index_many(
                tenant, [(row[0], row[1], doc) for row, doc in zip(rows, documents, strict=True)]
            )
        return [Version(r[0], r[1], 1, now, r[2], "create") for r in rows]

    @staticmethod
    def _insert_first(
        cursor: Any, tenant: UUID, resource_type: str, resource_id: str, now: datetime, content: str
    ) -> bool:
        """Insert version 1; False if the id exists already (a concurrent create)."""
        cursor.execute(
            _INSERT_FIRST.format(on_conflict=" ON CONFLICT DO NOTHING"),
            [tenant, resource_type, resource_id, now, content],
        )
        return bool(cursor.rowcount)

    def _lock_current(
        self, cursor: Any, tenant: UUID, resource_type: str, resource_id: str
    ) -> tuple[int, bool] | None:
        cursor.execute(
            "SELECT version_id, deleted_at IS NOT NULL FROM fhir_resource"
            f" WHERE {self._org}resource_type = %s AND id = %s FOR UPDATE",
            self._args(tenant, resource_type, resource_id),
        )
        row = cursor.fetchone()
        return (int(row[0]), bool(row[1])) if row else None

    def update(
        self,
        tenant: UUID,
        resource: dict[str, Any],
        resource_id: str,
        *,
        if_match: int | None = None,
    ) -> tuple[Version, bool]:
        """Store a new version; create it (update-as-create) if the id is new.
        Returns the version and whether it was created."""
        resource_type = resource["resourceType"]
        with tenant_transaction(tenant), connection.cursor() as cursor:
            for _attempt in range(2):
                now = timezone.now()
                current = self._lock_current(cursor, tenant, resource_type, resource_id)
                if current is None:
                    if if_match is not None:
                        raise VersionConflict(None)
                    document = stamp(resource, tenant, resource_id, 1, now)
                    content = dumps(document)
                    if self._insert_first(cursor, tenant, resource_type, resource_id, now, content):
                        write_index(tenant, resource_type, resource_id, document, replace=False)
                        return Version(resource_type, resource_id, 1, now, content, "create"), True
                    continue  # lost a race with a concurrent create: update it instead
                current_version, _was_deleted = current
                if if_match is not None and if_match != current_version:
                    raise VersionConflict(current_version)
                version_id = current_version + 1
                document = stamp(resource, tenant, resource_id, version_id, now)
                content = dumps(document)
                defer(
                    "WITH u AS (UPDATE fhir_resource"
                    " SET version_id = %s, last_updated = %s, content = %s, deleted_at = NULL"
                    " WHERE org_id = %s AND resource_type = %s AND id = %s"
                    " RETURNING org_id, resource_type, id, version_id, last_updated, content)"
                    " INSERT INTO fhir_history"
                    " (org_id, resource_type, id, version_id, last_updated, method, content)"
                    " SELECT org_id, resource_type, id, version_id, last_updated, 'update', content"
                    " FROM u",
                    [version_id, now, content, tenant, resource_type, resource_id],
                )
                write_index(tenant, resource_type, resource_id, document, replace=True)
                return Version(
                    resource_type, resource_id, version_id, now, content, "update"
                ), False
        raise RuntimeError("update did not converge")  # pragma: no cover

    def delete(self, tenant: UUID, resource_type: str, resource_id: str) -> Version | None:
        """Mark deleted (410 from now on) and queue all its versions for erasure.
        Deleting a deleted resource changes nothing and returns the delete."""
        with tenant_transaction(tenant), connection.cursor() as cursor:
            current = self._lock_current(cursor, tenant, resource_type, resource_id)
            if current is None:
                return None
            current_version, was_deleted = current
            if was_deleted:
                return self.vread(tenant, resource_type, resource_id, current_version)
            now = timezone.now()
            version_id = current_version + 1
            defer(
                "WITH u AS (UPDATE fhir_resource"
                " SET version_id = %s, last_updated = %s, content = NULL, deleted_at = %s"
                " WHERE org_id = %s AND resource_type = %s AND id = %s"
                " RETURNING org_id, resource_type, id, version_id, last_updated)"
                " INSERT INTO fhir_history"
                " (org_id, resource_type, id, version_id, last_updated, method, content)"
                " SELECT org_id, resource_type, id, version_id, last_updated, 'delete', NULL"
                " FROM u",
                [version_id, now, now, tenant, resource_type, resource_id],
            )
            remove_index(tenant, resource_type, resource_id)
            defer(
                "INSERT INTO fhir_erasure (org_id, resource_type, id, version_id, deleted_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (org_id, resource_type, id)"
                " DO UPDATE SET version_id = EXCLUDED.version_id, deleted_at = EXCLUDED.deleted_at",
                [tenant, resource_type, resource_id, version_id, now],
            )
        return Version(resource_type, resource_id, version_id, now, None, "delete")

    def expunge(self, tenant: UUID, resource_type: str, resource_id: str) -> int:
        """Erase every version of the resource at once. Returns the versions erased."""
        with tenant_transaction(tenant), connection.cursor() as cursor:
            args = self._args(tenant, resource_type, resource_id)
            cursor.execute(
                f"DELETE FROM fhir_history WHERE {self._org}resource_type = %s AND id = %s", args
            )
            erased = cursor.rowcount
            cursor.execute(
                f"DELETE FROM fhir_resource WHERE {self._org}resource_type = %s AND id = %s", args
            )
            remove_index(tenant, resource_type, resource_id)
            cursor.execute(
                "DELETE FROM fhir_erasure WHERE org_id = %s AND resource_type = %s AND id = %s",
                [tenant, resource_type, resource_id],
            )
        return int(erased)

    # --- history ---------------------------------------------------------------

    def history(
        self,
        tenant: UUID,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        since: datetime | None = None,
        at: datetime | None = None,
        count: int = 20,
        offset: int = 0,
    ) -> HistoryPage:
        """Versions newest first. `_since` keeps versions updated at or after it; `_at`
        keeps, per resource, the version that was current at that instant."""
        where = ["org_id = %s"] if self.tag_wall else ["TRUE"]
        args: list[Any] = [tenant] if self.tag_wall else []
        if resource_type:
            where.append("resource_type = %s")
            args.append(resource_type)
        if resource_id:
            where.append("id = %s")
            args.append(resource_id)
        if since:
            where.append("last_updated >= %s")
            args.append(since)
        columns = "resource_type, id, version_id, last_updated, content, method"
        source = f"SELECT {columns} FROM fhir_history WHERE {' AND '.join(where)}"
        if at:
            source = (
                f"SELECT DISTINCT ON (resource_type, id) {columns} FROM fhir_history"
                f" WHERE {' AND '.join(where)} AND last_updated <= %s"
                " ORDER BY resource_type, id, version_id DESC"
            )
            args.append(at)
        sql = (
            f"SELECT {columns} FROM ({source}) h"
            " ORDER BY last_updated DESC, resource_type, id, version_id DESC LIMIT %s OFFSET %s"
        )
        with tenant_transaction(tenant), connection.cursor() as cursor:
            cursor.execute(sql, [*args, count + 1, offset])
            rows = cursor.fetchall()
        versions = [Version(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows[:count]]
        return HistoryPage(versions=versions, total=-1, has_more=len(rows) > count)

    def list_current(
        self, tenant: UUID, resource_type: str, count: int, offset: int
    ) -> tuple[list[Version], bool]:
        """Current, non-deleted resources of one type, newest first."""
        with tenant_transaction(tenant), connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, version_id, last_updated, content FROM fhir_resource"
                f" WHERE {self._org}resource_type = %s AND deleted_at IS NULL"
                " ORDER BY last_updated DESC, id LIMIT %s OFFSET %s",
                self._args(tenant, resource_type, count + 1, offset),
            )
            rows = cursor.fetchall()
        versions = [Version(resource_type, r[0], r[1], r[2], r[3]) for r in rows[:count]]
        return versions, len(rows) > count

    # --- search --------------------------------------------------------------------

    def search(self, tenant: UUID, query: "SearchQuery") -> SearchResult:
        from clinik.fhir.search.sql import run_search

        with tenant_transaction(tenant):
            return run_search(tenant, query, tag_wall=self.tag_wall)

    # --- whole tenant ------------------------------------------------------------

    def iter_tenant(
        self, tenant: UUID, *, types: list[str] | None = None, since: datetime | None = None
    ) -> Iterator[Version]:
        """Current, non-deleted versions in one consistent snapshot, streamed in batches
        through a server-side cursor so memory stays flat."""
        where = ["org_id = %s", "deleted_at IS NULL"]
        args: list[Any] = [tenant]
        if types:
            where.append("resource_type = ANY(%s)")
            args.append(types)
        if since:
            where.append("last_updated > %s")
            args.append(since)
        with tenant_transaction(tenant):
            cursor = connection.chunked_cursor()
            try:
                cursor.execute(
                    "SELECT resource_type, id, version_id, last_updated, content"
                    f" FROM fhir_resource WHERE {' AND '.join(where)} ORDER BY resource_type, id",
                    args,
                )
                while rows := cursor.fetchmany(1000):
                    for r in rows:
                        yield Version(r[0], r[1], r[2], r[3], r[4], "update")
            finally:
                cursor.close()

    def staged(self, tenant: UUID) -> None:
        """Writes roll back with the bundle's PostgreSQL transaction: written directly."""
        return None

    def purge_tenant(self, tenant: UUID) -> dict[str, int]:
        """Delete every row of the tenant, in batches, each batch its own transaction:
        safe to kill at any point and run again to the same end state."""
        counts: dict[str, int] = {}
        for table in ("fhir_history", "fhir_resource", "fhir_erasure"):
            counts[table] = 0
            while True:
                with tenant_transaction(tenant), connection.cursor() as cursor:
                    cursor.execute(
                        f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                        f"SELECT ctid FROM {table} WHERE org_id = %s LIMIT %s))",
                        [tenant, _PURGE_BATCH],
                    )
                    deleted = cursor.rowcount
                counts[table] += deleted
                if deleted < _PURGE_BATCH:
                    break
        counts.update(purge_index(tenant, batch=_PURGE_BATCH))
        return counts


def erase_deleted(older_than: timedelta, *, batch: int = 500) -> int:
    """Erase for good every version up to the delete of resources deleted before
    now - older_than. Idempotent; each resource is erased in its own transaction."""
    erased = 0
    cutoff = timezone.now() - older_than
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT org_id, resource_type, id, version_id FROM fhir_erasure"
                " WHERE deleted_at < %s ORDER BY deleted_at LIMIT %s",
                [cutoff, batch],
            )
            due = cursor.fetchall()
        for org_id, resource_type, resource_id, version_id in due:
            with tenant_transaction(org_id), connection.cursor() as cursor:
                cursor.execute(
                    "DELETE FROM fhir_history WHERE org_id = %s AND resource_type = %s"
                    " AND id = %s AND version_id <= %s",
                    [org_id, resource_type, resource_id, version_id],
                )
                erased += cursor.rowcount
                cursor.execute(
                    "DELETE FROM fhir_resource WHERE org_id = %s AND resource_type = %s"
                    " AND id = %s AND deleted_at IS NOT NULL",
                    [org_id, resource_type, resource_id],
                )
                if cursor.rowcount:  # still deleted (not re-created since): no index rows
                    remove_index(org_id, resource_type, resource_id)
                cursor.execute(
                    "DELETE FROM fhir_erasure WHERE org_id = %s AND resource_type = %s AND id = %s",
                    [org_id, resource_type, resource_id],
                )
        if len(due) < batch:
            return erased
