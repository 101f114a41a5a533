"""The AWS HealthLake FHIR store (FHIR_STORE=healthlake).

HealthLake has no row-level security: the tenant tag is the only wall, so it is
enforced here on every path, whatever the datastore answers:

- every write is stamped with the tenant tag (a client's tag of our system dropped);
- every read, vread and history checks the tag: another tenant's resource is None
  (404), exactly like a missing id, also when it is deleted;
- every search is sent with the tenant's `_tag` (and chained / `_has` criteria with
  the tag on the resources they reach), and every resource of the answer, matches
  and includes alike, is checked again: one without our tag is dropped;
- paging links are our own `_cursor` tokens; the datastore's URL stays in Redis,
  bound to the tenant, and is only ever followed on the datastore's own endpoint.

Ids are one namespace per datastore (not per tenant as in PostgreSQL), so
update-as-create is not offered: a PUT of an id the tenant does not have gets the
same not-supported answer whether the id is unknown or another tenant's (no leak). A delete erases
the resource with its whole version history at once (`$erase`), so what HealthLake
keeps after a delete is gone within the erase job, not kept for 30 days; the delete
is remembered per tenant (Redis) so a read answers 410 like PostgreSQL.

A transaction bundle becomes one HealthLake transaction (HealthLakeTransaction): its
writes are collected after the usual pre-checks and sent together, atomically.
"""

import logging
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import orjson
from django.utils import timezone

from clinik.fhir.http import FhirError
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.fhir.store.base import (
    Alongside,
    HistoryPage,
    SearchResult,
    StoreFeatures,
    Version,
    VersionConflict,
)
from clinik.fhir.store.healthlake_client import Answer, HealthLakeClient
from clinik.fhir.tenancy import TENANT_SYSTEM, carries_tenant_tag, stamp, tenant_query

if TYPE_CHECKING:
    from clinik.fhir.search.query import SearchQuery

logger = logging.getLogger(__name__)

MAX_COUNT = 100
"""HealthLake's largest search page (_count)."""
MAX_BUNDLE_ENTRIES = 160
"""HealthLake's documented "number of resources per Bundle" quota (not adjustable)."""
GONE_DAYS = 30
PAGE_TOKEN_SECONDS = 3600
_CURSOR_KIND = "healthlake"

# Search parameters HealthLake documents as unsupported (type, code).
UNSUPPORTED_PARAMS = frozenset(
    {
        ("Account", "patient"),
        ("Appointment", "practitioner"),
        ("Appointment", "patient"),
        ("AppointmentResponse", "patient"),
        ("AppointmentResponse", "location"),
        ("AppointmentResponse", "practitioner"),
        ("Bundle", "composition"),
        ("Bundle", "identifier"),
        ("Bundle", "message"),
        ("Bundle", "type"),
        ("Bundle", "timestamp"),
        ("Communication", "patient"),
        ("CommunicationRequest", "patient"),
        ("Consent", "source-reference"),
        ("Contract", "patient"),
        ("DeviceRequest", "patient"),
        ("EpisodeOfCare", "care-manager"),
        ("Group", "characteristic-value"),
        ("Group", "value"),
        ("GuidanceResponse", "patient"),
        ("List", "patient"),
        ("Location", "near"),
        ("MeasureReport", "patient"),
        ("Person", "practitioner"),
        ("Person", "relatedperson"),
        ("PlanDefinition", "definition"),
        ("Provenance", "patient"),
        ("QuestionnaireResponse", "patient"),
        ("RequestGroup", "patient"),
        ("RiskAssessment", "probability"),
        ("Specimen", "patient"),
    }
)
# What HealthLake answers of FHIR search (no _sort, no _total, _count <= 100).
SEARCH_FEATURES = frozenset(
    {"parameters", "modifiers", "chain", "has", "include", "revinclude", "summary", "elements"}
)
# Parameters we handle ourselves and never forward.
_LOCAL = frozenset(
    {"_cursor", "_offset", "_format", "_pretty", "_elements", "_summary", "_total", "_sort"}
)


def _instant(text: str | None) -> datetime:
    if not text:
        return timezone.now()
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def _version(document: dict[str, Any], content: str, method: str = "update") -> Version:
    meta = document.get("meta") or {}
    return Version(
        document["resourceType"],
        str(document["id"]),
        int(meta.get("versionId") or 1),
        _instant(meta.get("lastUpdated")),
        content,
        method,
    )


def _etag_version(etag: str | None) -> int:
    digits = "".join(c for c in (etag or "") if c.isdigit())
    return int(digits) if digits else 0


class HealthLakeStore:
    features = StoreFeatures(
        history=True,
        versioned_reads=True,
        conditional_update=True,
        transactions=True,
        search=True,
        search_features=SEARCH_FEATURES,
        expunge=True,
        interactions=("read", "vread", "update", "patch", "delete", "history-instance", "create"),
        max_count=MAX_COUNT,
        unsupported_params=UNSUPPORTED_PARAMS,
        system_history=False,
        update_create=False,
        max_transaction_entries=MAX_BUNDLE_ENTRIES,
    )

    def __init__(self, client: HealthLakeClient, redis_client: Any) -> None:
        self.client = client
        self.redis = redis_client
        self.datastore = client.quota.datastore_id

    # --- helpers -------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join(("clinik:healthlake", self.datastore, *parts))

    def _gone_key(self, tenant: UUID, resource_type: str, resource_id: str) -> str:
        return self._key("gone", str(tenant), resource_type, resource_id)

    def _pending_key(self, tenant: UUID) -> str:
        return self._key("erase", str(tenant))

    def _refused(self, answer: Answer) -> FhirError:
        """The datastore refused a call: our own OperationOutcome (the store's
        diagnostics may quote content), with its issue codes only."""
        codes = []
        try:
            body = answer.json() or {}
            codes = [i.get("code") for i in body.get("issue", []) if isinstance(i, dict)]
        except (orjson.JSONDecodeError, AttributeError):
            pass
        if answer.status in (400, 422):
            code = next((c for c in codes if isinstance(c, str)), "invalid")
            return FhirError(answer.status, code, "The FHIR store refused the request")
        if answer.status in (401, 403):
            logger.error("HealthLake refused our credentials (status %s)", answer.status)
        else:
            logger.error("HealthLake answered status %s", answer.status)
        return FhirError(
            503, "transient", "The FHIR store is not available", headers={"Retry-After": "5"}
        )

    def _get_own(self, tenant: UUID, path: str) -> tuple[int, dict[str, Any] | None, str | None]:
        """(status, document, text) of a GET, the document None unless it is ours."""
        answer = self.client.call("GET", path)
        if answer.status == 200:
            text = answer.body.decode()
            document = orjson.loads(text)
            if isinstance(document, dict) and carries_tenant_tag(document, tenant):
                return 200, document, text
            return 404, None, None
        if answer.status in (404, 410):
            return answer.status, None, None
        raise self._refused(answer)

    def _history_entries(self, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
        """Every version of one resource (newest first), as the datastore lists them."""
        entries: list[dict[str, Any]] = []
        answer = self.client.call(
            "GET", f"{resource_type}/{resource_id}/_history", params=[("_count", str(MAX_COUNT))]
        )
        for _page in range(100):
            if answer.status in (404, 410):
                return []
            if answer.status != 200:
                raise self._refused(answer)
            bundle = answer.json() or {}
            entries += bundle.get("entry") or []
            following = _link(bundle, "next")
            if not following:
                break
            answer = self.client.call("GET", following)
        return entries

    def _owned_history(
        self, tenant: UUID, resource_type: str, resource_id: str
    ) -> list[dict[str, Any]] | None:
        """The resource's versions if they are the tenant's (every version with
        content carries its tag, and at least one does), else None."""
        entries = self._history_entries(resource_type, resource_id)
        bodies = [e["resource"] for e in entries if isinstance(e.get("resource"), dict)]
        if not bodies or not all(carries_tenant_tag(b, tenant) for b in bodies):
            return None
        return entries

    def _audit(self, alongside: Alongside | None, tenant: UUID, ok: bool) -> None:
        if alongside is None:
            return
        insert, args = alongside("TRUE" if ok else "FALSE")
        tenant_query(tenant, f"{insert} RETURNING 1", args)  # one round trip

    def _gone(self, tenant: UUID, resource_type: str, resource_id: str) -> Version | None:
        raw = self.redis.get(self._gone_key(tenant, resource_type, resource_id))
        if raw is None:
            return None
        body = orjson.loads(raw)
        return Version(
            resource_type,
            resource_id,
            int(body["v"]),
            _instant(body["t"]),
            None,
            "delete",
        )

    # --- reads -----------------------------------------------------------------------

    def read(
        self,
        tenant: UUID,
        resource_type: str,
        resource_id: str,
        *,
        alongside: Alongside | None = None,
    ) -> Version | None:
        status, document, text = self._get_own(tenant, f"{resource_type}/{resource_id}")
        version: Version | None = None
        if document is not None and text is not None:
            version = _version(document, text)
        elif status in (404, 410):
            version = self._gone(tenant, resource_type, resource_id)
            if version is None and status == 410:
                entries = self._owned_history(tenant, resource_type, resource_id)
                if entries:
                    latest = entries[0].get("response") or {}
                    version = Version(
                        resource_type,
                        resource_id,
                        _etag_version(latest.get("etag")),
                        _instant(latest.get("lastModified")),
                        None,
                        "delete",
                    )
        self._audit(alongside, tenant, version is not None and not version.deleted)
        return version

    def vread(
        self, tenant: UUID, resource_type: str, resource_id: str, version_id: int
    ) -> Version | None:
        _status, document, text = self._get_own(
            tenant, f"{resource_type}/{resource_id}/_history/{version_id}"
        )
        if document is not None and text is not None:
            return _version(document, text)
        gone = self._gone(tenant, resource_type, resource_id)
        if gone is not None and gone.version_id == version_id:
            return gone
        return None

    # --- writes ------------------------------------------------------------------------

    def _put(
        self,
        tenant: UUID,
        resource: dict[str, Any],
        resource_id: str,
        version_id: int,
        *,
        if_match: int | None,
        method: str,
    ) -> Version:
        document = stamp(resource, tenant, resource_id, version_id, timezone.now())
        headers = {"Prefer": "return=representation"}
        if if_match is not None:
            headers["If-Match"] = f'W/"{if_match}"'
        answer = self.client.call(
            "PUT", f"{document['resourceType']}/{resource_id}", body=document, headers=headers
        )
        if answer.status in (409, 412):
            raise VersionConflict(None)
        if answer.status not in (200, 201):
            raise self._refused(answer)
        text = answer.body.decode()
        stored = orjson.loads(text)
        if not carries_tenant_tag(stored, tenant):  # the store dropped our tag: never
            raise FhirError(503, "transient", "The FHIR store did not keep the tenant tag")
        self.redis.delete(self._gone_key(tenant, document["resourceType"], resource_id))
        return _version(stored, text, method)

    def create(
        self, tenant: UUID, resource: dict[str, Any], *, resource_id: str | None = None
    ) -> Version:
        """A PUT of an id we chose (a new UUID unless given): retried safely, never
        duplicated."""
        return self._put(
            tenant, resource, resource_id or str(uuid4()), 1, if_match=None, method="create"
        )

    def create_many(
        self, tenant: UUID, resources: list[tuple[dict[str, Any], str]]
    ) -> list[Version]:
        return [self.create(tenant, resource, resource_id=rid) for resource, rid in resources]

    def _plan_update(
        self, tenant: UUID, resource_type: str, resource_id: str, if_match: int | None
    ) -> tuple[int, int | None]:
        """(the version an update writes, the If-Match to send: None for a create)."""
        answer = self.client.call("GET", f"{resource_type}/{resource_id}")
        current = orjson.loads(answer.body) if answer.status == 200 else None
        if current is not None and carries_tenant_tag(current, tenant):
            current_version = int((current.get("meta") or {}).get("versionId") or 1)
            if if_match is not None and if_match != current_version:
                raise VersionConflict(current_version)
            return current_version + 1, current_version
        if answer.status not in (200, 404, 410):
            raise self._refused(answer)
        # Not the tenant's: missing, or another tenant's (ids are one namespace per
        # datastore). Both get the same answers, so neither reveals that the id exists.
        if if_match is not None:
            raise VersionConflict(None)
        if current is None and self._gone(tenant, resource_type, resource_id) is not None:
            return 1, None  # the tenant's own deleted resource (its versions are erased)
        raise no_update_create()

    def update(
        self,
        tenant: UUID,
        resource: dict[str, Any],
        resource_id: str,
        *,
        if_match: int | None = None,
    ) -> tuple[Version, bool]:
        version_id, expected = self._plan_update(
            tenant, resource["resourceType"], resource_id, if_match
        )
        method = "create" if expected is None else "update"
        version = self._put(
            tenant, resource, resource_id, version_id, if_match=expected, method=method
        )
        return version, expected is None

    def _erase(self, resource_type: str, resource_id: str) -> None:
        answer = self.client.call("POST", f"{resource_type}/{resource_id}/$erase")
        if answer.status not in (200, 201, 202, 404, 410):
            raise self._refused(answer)

    def delete(self, tenant: UUID, resource_type: str, resource_id: str) -> Version | None:
        """Delete, then erase every version at once (`$erase`). The resource is noted
        as pending erasure (Redis) before the delete, so an interrupted delete is
        finished by the next delete, expunge or the closure."""
        status, document, _text = self._get_own(tenant, f"{resource_type}/{resource_id}")
        if document is None:
            return self._gone(tenant, resource_type, resource_id) if status in (404, 410) else None
        version_id = int((document.get("meta") or {}).get("versionId") or 1) + 1
        pending = f"{resource_type}/{resource_id}"
        self.redis.sadd(self._pending_key(tenant), pending)
        answer = self.client.call("DELETE", f"{resource_type}/{resource_id}")
        if answer.status not in (200, 202, 204, 404, 410):
            raise self._refused(answer)
        now = timezone.now()
        self.redis.set(
            self._gone_key(tenant, resource_type, resource_id),
            orjson.dumps({"v": version_id, "t": now.isoformat()}),
            ex=GONE_DAYS * 86400,
        )
        self._erase(resource_type, resource_id)
        self.redis.srem(self._pending_key(tenant), pending)
        return Version(resource_type, resource_id, version_id, now, None, "delete")

    def expunge(self, tenant: UUID, resource_type: str, resource_id: str) -> int:
        _status, document, _text = self._get_own(tenant, f"{resource_type}/{resource_id}")
        if document is not None:
            versions = int((document.get("meta") or {}).get("versionId") or 1)
            self._erase(resource_type, resource_id)
            return versions
        gone = self._gone(tenant, resource_type, resource_id)
        if gone is None:
            return 0
        self._erase(resource_type, resource_id)  # erased at delete already: again is harmless
        self.redis.delete(self._gone_key(tenant, resource_type, resource_id))
        return gone.version_id

    # --- history -----------------------------------------------------------------------

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
        if not (resource_type and resource_id):
            raise FhirError(
                400,
                "not-supported",
                "Type- and system-level history are not supported by this server's FHIR store;"
                " read the history of one resource, or search",
            )
        entries = self._owned_history(tenant, resource_type, resource_id) or []
        versions = []
        for entry in entries:
            body = entry.get("resource")
            response = entry.get("response") or {}
            method = str((entry.get("request") or {}).get("method", "PUT")).upper()
            if isinstance(body, dict):
                version = _version(body, orjson.dumps(body).decode())
                kind = "create" if method == "POST" or version.version_id == 1 else "update"
                versions.append(
                    Version(
                        version.resource_type,
                        version.id,
                        version.version_id,
                        version.last_updated,
                        version.content,
                        kind,
                    )
                )
            else:
                versions.append(
                    Version(
                        resource_type,
                        resource_id,
                        _etag_version(response.get("etag")),
                        _instant(response.get("lastModified")),
                        None,
                        "delete",
                    )
                )
        versions.sort(key=lambda v: v.version_id, reverse=True)
        if since:
            versions = [v for v in versions if v.last_updated >= since]
        if at:
            versions = [v for v in versions if v.last_updated <= at][:1]
        page = versions[offset : offset + count]
        return HistoryPage(versions=page, total=-1, has_more=len(versions) > offset + count)

    def list_current(
        self, tenant: UUID, resource_type: str, count: int, offset: int
    ) -> tuple[list[Version], bool]:
        if offset:
            raise FhirError(400, "not-supported", "_offset is not supported by this FHIR store")
        matches, _included, following, _dropped, _total = self._page(
            tenant, resource_type, [("_count", str(min(max(count, 1), MAX_COUNT)))]
        )
        return matches[:count], following is not None or len(matches) > count

    # --- search ------------------------------------------------------------------------

    def _page(
        self, tenant: UUID, path: str, params: list[tuple[str, str]] | str, *, post: bool = True
    ) -> tuple[list[Version], list[Version], str | None, int, int | None]:
        """One page from the datastore: (matches, includes, next URL, dropped, total).
        Every resource is checked for the tenant's tag; others are dropped."""
        if isinstance(params, str):  # a paging link of the datastore's
            answer = self.client.call("GET", params, kind="search")
        else:
            params = [*params, ("_tag", f"{TENANT_SYSTEM}|{tenant}")]
            if post:
                answer = self.client.call(
                    "POST", f"{path}/_search" if path else "_search", form=params, kind="search"
                )
            else:
                answer = self.client.call("GET", path, params=params, kind="search")
        if answer.status != 200:
            raise self._refused(answer)
        bundle = answer.json() or {}
        matches: list[Version] = []
        included: list[Version] = []
        dropped = 0
        for entry in bundle.get("entry") or []:
            body = entry.get("resource")
            if not isinstance(body, dict) or body.get("resourceType") == "OperationOutcome":
                continue
            if body.get("resourceType") not in RESOURCE_TYPES or "id" not in body:
                dropped += 1
                continue
            if not carries_tenant_tag(body, tenant):
                dropped += 1
                continue
            version = _version(body, orjson.dumps(body).decode())
            mode = (entry.get("search") or {}).get("mode", "match")
            (included if mode == "include" else matches).append(version)
        if dropped:
            # A security signal without PHI: the store answered outside the tenant.
            logger.warning("HealthLake answered %d resource(s) of other tenants: dropped", dropped)
        total = bundle.get("total") if isinstance(bundle.get("total"), int) else None
        return matches, included, _link(bundle, "next"), dropped, total

    def _remember_page(self, tenant: UUID, url: str) -> str:
        token = secrets.token_urlsafe(18)
        self.redis.set(
            self._key("page", token),
            orjson.dumps({"t": str(tenant), "u": url}),
            ex=PAGE_TOKEN_SECONDS,
        )
        return token

    def _recall_page(self, tenant: UUID, token: str) -> str:
        raw = self.redis.get(self._key("page", token))
        body = orjson.loads(raw) if raw else {}
        if body.get("t") != str(tenant) or not self.client.owns(str(body.get("u", ""))):
            raise FhirError(410, "expired", "This page of results has expired; search again")
        return str(body["u"])

    def search(self, tenant: UUID, query: "SearchQuery") -> SearchResult:
        from clinik.fhir.search.query import Cursor

        note = _Noter(query)
        params = upstream_params(tenant, query, note)
        wanted = query.count
        path = query.types[0] if not query.system else ""
        cursor = query.cursor
        if cursor.after and cursor.after[0] == _CURSOR_KIND:
            source: list[tuple[str, str]] | str = self._recall_page(tenant, cursor.after[1])
        else:
            if cursor.offset or cursor.after or cursor.before:
                note("_offset and _cursor from another store are not supported here")
            source = params
        matches: list[Version] = []
        included: list[Version] = []
        following: str | None = None
        total: int | None = None
        dropped = 0
        for _page in range(max(1, -(-wanted // MAX_COUNT))):
            page_matches, page_included, following, page_dropped, total = self._page(
                tenant, path, source
            )
            matches += page_matches
            included += page_included
            dropped += page_dropped
            if following is None or len(matches) >= wanted or wanted <= MAX_COUNT:
                break
            source = following
        result = SearchResult(matches=matches[:wanted] if wanted else [], included=included)
        first = not (cursor.after and cursor.after[0] == _CURSOR_KIND)
        if query.summary == "count" or wanted == 0:
            result.matches = []
            result.total = total if not dropped else None
        elif query.total != "none" and first and following is None:
            result.total = len(matches)  # exact: the whole answer is this one page
        if following is not None:
            result.next = Cursor(after=(_CURSOR_KIND, self._remember_page(tenant, following)))
        return result

    # --- whole tenant ------------------------------------------------------------------

    def iter_tenant(
        self, tenant: UUID, *, types: list[str] | None = None, since: datetime | None = None
    ) -> Iterator[Version]:
        """The tenant's current resources, type by type, by tenant-tag search paging
        (never a whole-datastore export): every resource re-checked for the tag."""
        for resource_type in sorted(types or RESOURCE_TYPES):
            params = [("_count", str(MAX_COUNT))]
            if since:
                params.append(("_lastUpdated", "gt" + since.astimezone(UTC).isoformat()))
            source: list[tuple[str, str]] | str = params
            while True:
                matches, _included, following, _dropped, _total = self._page(
                    tenant, resource_type, source
                )
                yield from matches
                if following is None:
                    break
                source = following

    def staged(self, tenant: UUID) -> "HealthLakeTransaction":
        return HealthLakeTransaction(self, tenant)

    def purge_tenant(self, tenant: UUID) -> dict[str, int]:
        """Erase every resource of the tenant with all its versions (`$erase`), type by
        type, within the quota: first the deletes that were interrupted, then every
        resource the tenant-tag search still finds, until none is left. Safe to kill
        at any point and run again: the same end state."""
        counts = {"healthlake_pending_erased": 0, "healthlake_erased": 0}
        for pending in list(self.redis.smembers(self._pending_key(tenant))):
            resource_type, _, resource_id = pending.decode().partition("/")
            self._erase(resource_type, resource_id)
            self.redis.srem(self._pending_key(tenant), pending)
            counts["healthlake_pending_erased"] += 1
        for resource_type in sorted(RESOURCE_TYPES):
            erased: set[str] = set()
            while True:
                matches, _inc, _next, _dropped, _total = self._page(
                    tenant, resource_type, [("_count", str(MAX_COUNT))]
                )
                fresh = [v for v in matches if v.id not in erased]
                if not fresh:  # empty, or only erasures the search index has yet to see
                    break
                for version in fresh:
                    # $erase alone (no DELETE first): until it is done the resource
                    # stays findable, so a killed run leaves nothing a rerun cannot see.
                    self._erase(resource_type, version.id)
                    erased.add(version.id)
                    counts["healthlake_erased"] += 1
        counts["healthlake_remaining"] = sum(1 for _ in self.iter_tenant(tenant))
        for key in self.redis.scan_iter(match=self._key("gone", str(tenant), "*"), count=1000):
            self.redis.delete(key)
        return counts


@dataclass(frozen=True)
class _Op:
    method: str  # PUT or DELETE
    resource_type: str
    resource_id: str
    document: dict[str, Any] | None
    if_match: int | None
    staged: Version


class HealthLakeTransaction:
    """A transaction bundle on HealthLake: the bundle code runs as on PostgreSQL (ids,
    conditional matches and reference rewriting decided here, inside the tenant), but
    the writes are only collected, each after the same pre-check reads a direct write
    makes (the tenant's own resource, its version, If-Match). `commit` sends them as
    one HealthLake transaction bundle (atomic there: all or nothing, in order): PUTs of
    stamped documents (the tenant tag set, a client's tag of our system dropped) with
    If-Match on the version read, DELETEs, then `$erase` of the deleted ones. No
    urn:uuid reaches the datastore: every id is ours and every reference resolved."""

    def __init__(self, store: HealthLakeStore, tenant: UUID) -> None:
        self.store = store
        self.tenant = tenant
        self.features = store.features
        self.ops: list[_Op] = []
        self.written: dict[tuple[str, str], Version] = {}

    # --- reads see the collected writes ---------------------------------------------

    def read(
        self,
        tenant: UUID,
        resource_type: str,
        resource_id: str,
        *,
        alongside: Alongside | None = None,
    ) -> Version | None:
        written = self.written.get((resource_type, resource_id))
        if written is None:
            return self.store.read(tenant, resource_type, resource_id, alongside=alongside)
        self.store._audit(alongside, tenant, not written.deleted)
        return written

    def vread(
        self, tenant: UUID, resource_type: str, resource_id: str, version_id: int
    ) -> Version | None:
        return self.store.vread(tenant, resource_type, resource_id, version_id)

    def search(self, tenant: UUID, query: "SearchQuery") -> SearchResult:
        return self.store.search(tenant, query)

    def history(self, tenant: UUID, **kwargs: Any) -> HistoryPage:
        return self.store.history(tenant, **kwargs)

    def list_current(
        self, tenant: UUID, resource_type: str, count: int, offset: int
    ) -> tuple[list[Version], bool]:
        return self.store.list_current(tenant, resource_type, count, offset)

    def iter_tenant(
        self, tenant: UUID, *, types: list[str] | None = None, since: datetime | None = None
    ) -> Iterator[Version]:
        return self.store.iter_tenant(tenant, types=types, since=since)

    def expunge(self, tenant: UUID, resource_type: str, resource_id: str) -> int:
        raise FhirError(400, "not-supported", "$expunge is not supported in a transaction")

    def purge_tenant(self, tenant: UUID) -> dict[str, int]:
        raise FhirError(400, "not-supported", "Not in a transaction")

    def staged(self, tenant: UUID) -> "HealthLakeTransaction":
        return self

    # --- writes are collected ---------------------------------------------------------

    def _collect(self, op: _Op) -> Version:
        key = (op.resource_type, op.resource_id)
        if key in self.written:
            raise _twice()
        self.ops.append(op)
        self.written[key] = op.staged
        return op.staged

    def _put(
        self,
        tenant: UUID,
        resource: dict[str, Any],
        resource_id: str,
        version_id: int,
        if_match: int | None,
        method: str,
    ) -> Version:
        document = stamp(resource, tenant, resource_id, version_id, timezone.now())
        staged = _version(document, orjson.dumps(document).decode(), method)
        op = _Op("PUT", staged.resource_type, resource_id, document, if_match, staged)
        return self._collect(op)

    def create(
        self, tenant: UUID, resource: dict[str, Any], *, resource_id: str | None = None
    ) -> Version:
        return self._put(tenant, resource, resource_id or str(uuid4()), 1, None, "create")

    def create_many(
        self, tenant: UUID, resources: list[tuple[dict[str, Any], str]]
    ) -> list[Version]:
        return [self.create(tenant, resource, resource_id=rid) for resource, rid in resources]

    def update(
        self,
        tenant: UUID,
        resource: dict[str, Any],
        resource_id: str,
        *,
        if_match: int | None = None,
    ) -> tuple[Version, bool]:
        if (resource["resourceType"], resource_id) in self.written:
            raise _twice()
        version_id, expected = self.store._plan_update(
            tenant, resource["resourceType"], resource_id, if_match
        )
        method = "create" if expected is None else "update"
        return self._put(tenant, resource, resource_id, version_id, expected, method), (
            expected is None
        )

    def delete(self, tenant: UUID, resource_type: str, resource_id: str) -> Version | None:
        if (resource_type, resource_id) in self.written:
            raise _twice()
        path = f"{resource_type}/{resource_id}"
        status, document, _text = self.store._get_own(tenant, path)
        if document is None:
            return (
                self.store._gone(tenant, resource_type, resource_id)
                if status in (404, 410)
                else None
            )
        current = int((document.get("meta") or {}).get("versionId") or 1)
        staged = Version(resource_type, resource_id, current + 1, timezone.now(), None, "delete")
        return self._collect(_Op("DELETE", resource_type, resource_id, None, current, staged))

    # --- the transaction ---------------------------------------------------------------

    def pending(self, version: Version) -> bool:
        return self.written.get((version.resource_type, version.id)) is version

    def unknown_references(self, references: set[str]) -> set[str]:
        unknown = set()
        for reference in sorted(references):
            resource_type, _, resource_id = reference.partition("/")
            written = self.written.get((resource_type, resource_id))
            if written is not None:
                if written.deleted:
                    unknown.add(reference)
                continue
            _status, document, _text = self.store._get_own(self.tenant, reference)
            if document is None:
                unknown.add(reference)
        return unknown

    def commit(self) -> dict[Version, Version]:
        """Send the collected writes as one HealthLake transaction. Nothing is written
        unless all are (HealthLake's transactions are atomic); a write another request
        made meanwhile fails it with 412 (If-Match), never overwritten."""
        if not self.ops:
            return {}
        store, tenant = self.store, self.tenant
        store.features.check_transaction_writes(len(self.ops))
        deleting = [
            f"{op.resource_type}/{op.resource_id}" for op in self.ops if op.document is None
        ]
        # HealthLake counts a transaction as twice the writes it holds: so does the quota
        # (the call below takes one more).
        deadline = time.monotonic() + store.client.retry_budget
        for _write in range(2 * len(self.ops) - 1):
            store.client.quota.acquire("crud", deadline)
        if deleting:  # an interrupted erase is finished by the next delete or the closure
            store.redis.sadd(store._pending_key(tenant), *deleting)
        entries = []
        for op in self.ops:
            request: dict[str, Any] = {
                "method": op.method,
                "url": f"{op.resource_type}/{op.resource_id}",
            }
            if op.if_match is not None:
                request["ifMatch"] = f'W/"{op.if_match}"'
            entry: dict[str, Any] = {"request": request}
            if op.document is not None:
                entry["resource"] = op.document
            entries.append(entry)
        answer = store.client.call(
            "POST",
            "",
            body={"resourceType": "Bundle", "type": "transaction", "entry": entries},
            headers={"Prefer": "return=representation"},
            idempotent=False,
        )
        if answer.status != 200:
            if deleting:
                store.redis.srem(store._pending_key(tenant), *deleting)
            if answer.status in (409, 412):
                raise VersionConflict(None)
            raise store._refused(answer)
        responses = (answer.json() or {}).get("entry") or []
        if len(responses) != len(self.ops):
            logger.error("HealthLake answered a transaction with a different number of entries")
            raise FhirError(503, "transient", "The FHIR store answered the transaction oddly")
        committed: dict[Version, Version] = {}
        now = timezone.now()
        for op, item in zip(self.ops, responses, strict=True):
            committed[op.staged] = self._stored(op, item if isinstance(item, dict) else {})
        for op in self.ops:
            if op.document is None:
                store.redis.set(
                    store._gone_key(tenant, op.resource_type, op.resource_id),
                    orjson.dumps({"v": op.staged.version_id, "t": now.isoformat()}),
                    ex=GONE_DAYS * 86400,
                )
            else:
                store.redis.delete(store._gone_key(tenant, op.resource_type, op.resource_id))
        # The transaction is applied: a failed erase must not turn its answer into a
        # failure (the client would retry and write twice). The resource stays in the
        # pending set, which the closure's purge_tenant erases first.
        for op in self.ops:
            if op.document is None:
                try:
                    store._erase(op.resource_type, op.resource_id)
                except FhirError:
                    logger.warning("HealthLake erase after a transaction failed; left pending")
                    continue
                store.redis.srem(store._pending_key(tenant), f"{op.resource_type}/{op.resource_id}")
        return committed

    def _stored(self, op: _Op, item: dict[str, Any]) -> Version:
        """The version the datastore stored for one entry, its tenant tag checked."""
        response = item.get("response") or {}
        if not str(response.get("status", "")).startswith("2"):
            logger.error("HealthLake answered a transaction with a failed entry")
            raise FhirError(503, "transient", "The FHIR store answered the transaction oddly")
        if op.document is None:
            return op.staged
        stored = item.get("resource")
        if not isinstance(stored, dict):  # no representation: ours, as the datastore dated it
            meta = dict(op.document["meta"])
            meta["versionId"] = str(_etag_version(response.get("etag")) or op.staged.version_id)
            meta["lastUpdated"] = response.get("lastModified") or meta["lastUpdated"]
            stored = {**op.document, "meta": meta}
        if stored.get("id") != op.resource_id or not carries_tenant_tag(stored, self.tenant):
            raise FhirError(503, "transient", "The FHIR store did not keep the tenant tag")
        return _version(stored, orjson.dumps(stored).decode(), op.staged.method)


def _twice() -> FhirError:
    return FhirError(
        400,
        "not-supported",
        "A transaction may write each resource only once with this server's FHIR store",
    )


def no_update_create() -> FhirError:
    """A PUT of an id the tenant does not have. HealthLake's ids are one namespace for
    every tenant of the datastore, so update-as-create is not offered (`/metadata`:
    updateCreate false): an id that does not exist and another tenant's id get this
    same answer, and a PUT never learns whether the id is taken."""
    return FhirError(
        400,
        "not-supported",
        "Update as create (a PUT of an id that does not exist) is not supported by this"
        " server's FHIR store; create the resource with POST",
    )


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == relation and link.get("url"):
            return str(link["url"])
    return None


class _Noter:
    """Record an unsupported feature: a warning in the searchset (lenient) or 400."""

    def __init__(self, query: "SearchQuery") -> None:
        self.query = query

    def __call__(self, diagnostics: str) -> None:
        if getattr(self.query, "strict", False):
            raise FhirError(400, "not-supported", diagnostics)
        if diagnostics not in self.query.issues:
            self.query.issues.append(diagnostics)


def _tenant_chains(name: str, tag: str) -> list[tuple[str, str]]:
    """Tenant criteria on every resource a chained or `_has` criterion reaches, so the
    datastore never matches through another tenant's resource."""
    extra = []
    if name.startswith("_has:"):
        parts = name.split(":")
        if len(parts) >= 4:
            extra.append((f"_has:{parts[1]}:{parts[2]}:_tag", tag))
        return extra
    links = name.split(".")[:-1]
    for depth in range(1, len(links) + 1):
        extra.append((".".join(links[:depth]) + "._tag", tag))
    return extra


def upstream_params(tenant: UUID, query: "SearchQuery", note: Any) -> list[tuple[str, str]]:
    """The query as HealthLake parameters: each criterion the parser accepted (parsed
    again alone, strictly, so a parameter it ignored is never forwarded), tenant
    criteria for chains and `_has`, `_include`/`_revinclude`, and `_count` <= 100.
    `_sort`, `_total` and a `_count` over 100 are unsupported features (noted)."""
    from clinik.fhir.search.query import parse_search

    tag = f"{TENANT_SYSTEM}|{tenant}"
    types = None if query.system else query.types
    prefix = [("_type", ",".join(query.types))] if query.system else []
    params: list[tuple[str, str]] = []
    extra: list[tuple[str, str]] = []
    for name, raw in query.params:
        base = name.split(":", 1)[0]
        if base == "_sort":
            note("_sort is not supported by this server's FHIR store")
            continue
        if base == "_total":
            if raw != "none":
                note("_total is not supported by this server's FHIR store")
            continue
        if base == "_count":
            if raw.isdigit() and int(raw) > MAX_COUNT:
                note(f"_count is at most {MAX_COUNT} with this server's FHIR store")
            continue
        if base in _LOCAL or base == "_type" or (base == "_tag" and raw == tag):
            continue
        try:
            parse_search([*prefix, (name, raw)], types, strict=True)
        except FhirError:
            continue  # the parser ignored it (and noted it already)
        if base not in ("_include", "_revinclude") and "." not in name:
            code = name.split(":", 1)[0]
            if any((t, code) in UNSUPPORTED_PARAMS for t in query.types):
                note(f"Search parameter {code} is not supported by this server's FHIR store")
                continue
        params.append((name, raw))
        for pair in _tenant_chains(name, tag):
            if pair not in extra:
                extra.append(pair)
    if query.system:
        params.insert(0, ("_type", ",".join(query.types)))
    if query.summary == "count" or query.count == 0:
        params.append(("_summary", "count"))
    page = min(max(query.count, 1), MAX_COUNT)
    return [*params, *extra, ("_count", str(page))]
