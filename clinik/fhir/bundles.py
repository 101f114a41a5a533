"""batch and transaction Bundles POSTed to the base.

A transaction runs in one tenant transaction: entries are processed in the spec's
order (DELETE, POST, PUT/PATCH, GET), `urn:uuid:` and other fullUrls of new resources
are resolved and every reference to them rewritten, conditional references and
ifNoneExist/ifMatch/ifNoneMatch are honoured, and the first failing entry rolls
everything back. On a store whose writes would not roll back with PostgreSQL
(HealthLake: `store.staged`), the writes are collected instead and sent at the end as
one transaction of that store (`_commit`). A batch processes each entry on its own."""

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import jsonpatch
import orjson
from django.db import transaction

from clinik.audit.interactions import record_fhir_interaction
from clinik.fhir import conditional
from clinik.fhir.http import ETAG_PATTERN, FhirError, parse_fhir_datetime
from clinik.fhir.outcomes import NOTHING_TO_DELETE, outcome_body
from clinik.fhir.search.query import parse_search
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.fhir.store import FhirStore, Version, VersionConflict, get_store
from clinik.fhir.store.base import Staged
from clinik.fhir.tenancy import format_instant, tenant_transaction
from clinik.fhir.validation import ID_PATTERN, validate_resource

MAX_ENTRIES = 10_000
"""Entries per bundle; the body limit (FHIR_MAX_BUNDLE_BYTES) bounds it too."""
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_STATUS_TEXT = {
    200: "200 OK",
    201: "201 Created",
    204: "204 No Content",
    304: "304 Not Modified",
    400: "400 Bad Request",
    404: "404 Not Found",
    409: "409 Conflict",
    410: "410 Gone",
    412: "412 Precondition Failed",
    422: "422 Unprocessable Entity",
}


@dataclass
class Entry:
    index: int
    method: str
    resource_type: str
    resource_id: str | None = None
    version: str | None = None
    criteria: str | None = None
    full_url: str | None = None
    resource: dict[str, Any] | None = None
    if_none_exist: str | None = None
    if_match: int | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None
    # results
    status: int = 200
    result: Version | None = None
    body: Any = None
    outcome: dict[str, Any] | None = None
    target_id: str | None = field(default=None)
    fresh: bool = False
    """A conditional PUT without a match nor an id: a create of an id we chose."""

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


@dataclass
class Context:
    tenant: UUID
    request: Any
    references: dict[str, str] = field(default_factory=dict)
    found: dict[tuple[str, str], list[Version] | FhirError] = field(default_factory=dict)
    """Matches of ifNoneExist criteria looked up ahead, together (conditional.find_many)."""
    store: FhirStore = field(default_factory=get_store)
    """Where entries read and write: a transaction's staged store on HealthLake."""


def _entry_error(entry: Entry, error: FhirError) -> FhirError:
    return FhirError(
        error.status,
        error.code,
        f"{entry.where}: {error.diagnostics}",
        expression=[entry.where],
        issues=[
            {**issue, "diagnostics": f"{entry.where}: {issue.get('diagnostics', '')}"}
            for issue in error.issues
        ]
        if error.issues
        else None,
    )


def _parse_url(raw: Any, index: int, base: str) -> tuple[str, list[str], str]:
    if not isinstance(raw, str) or not raw.strip():
        raise FhirError(400, "required", f"Bundle.entry[{index}].request.url is required")
    url = raw.strip()
    if url.startswith(base):
        url = url[len(base) :]
    elif urlsplit(url).scheme:
        raise FhirError(400, "not-supported", f"Bundle.entry[{index}] names another server")
    path, _, query = url.lstrip("/").partition("?")
    parts = [p for p in path.split("/") if p]
    return path, parts, query


def parse_entries(bundle: dict[str, Any], base: str) -> list[Entry]:
    parsed = []
    for index, raw in enumerate(bundle.get("entry") or []):
        try:
            parsed.append(_parse_entry(index, raw, base))
        except FhirError as error:
            if error.expression is None and not error.issues:
                error.expression = [f"Bundle.entry[{index}]"]
            raise
    return parsed


def _parse_entry(index: int, raw: dict[str, Any], base: str) -> Entry:
    request = raw.get("request") or {}
    method = str(request.get("method", "")).upper()
    if method not in _ORDER:
        raise FhirError(
            400, "required", f"Bundle.entry[{index}].request.method is missing or unknown"
        )
    _path, parts, query = _parse_url(request.get("url"), index, base)
    if any(part.startswith("$") for part in parts):
        raise FhirError(
            400,
            "not-supported",
            f"Bundle.entry[{index}]: operations are not supported in bundles",
        )
    if not parts or parts[0] not in RESOURCE_TYPES:
        raise FhirError(
            400, "not-supported", f"Bundle.entry[{index}].request.url names no resource type"
        )
    entry = Entry(index=index, method=method, resource_type=parts[0])
    if len(parts) >= 2:
        if not ID_PATTERN.fullmatch(parts[1]):
            raise FhirError(400, "value", f"Bundle.entry[{index}].request.url has a bad id")
        entry.resource_id = parts[1]
    if len(parts) == 4 and parts[2] == "_history" and method in ("GET", "HEAD"):
        entry.version = parts[3]
    elif len(parts) > 2:
        raise FhirError(400, "not-supported", f"Bundle.entry[{index}].request.url is not supported")
    if query:
        entry.criteria = query
    entry.full_url = raw.get("fullUrl")
    entry.resource = raw.get("resource")
    entry.if_none_exist = request.get("ifNoneExist")
    entry.if_none_match = request.get("ifNoneMatch")
    entry.if_modified_since = request.get("ifModifiedSince")
    if request.get("ifMatch") is not None:
        match = ETAG_PATTERN.match(str(request["ifMatch"]).strip())
        if not match:
            raise FhirError(400, "value", f"Bundle.entry[{index}].request.ifMatch is no ETag")
        entry.if_match = int(match.group(1))
    if method in ("POST", "PUT") and not isinstance(entry.resource, dict):
        raise FhirError(400, "required", f"Bundle.entry[{index}].resource is required")
    body_type = (entry.resource or {}).get("resourceType")
    if method in ("POST", "PUT") and body_type != entry.resource_type:
        raise FhirError(
            400,
            "invalid",
            f"Bundle.entry[{index}].resource is not a {entry.resource_type}",
            expression=[f"Bundle.entry[{index}].resource.resourceType"],
        )
    if method == "PUT" and entry.resource_id is None and entry.criteria is None:
        raise FhirError(400, "required", f"Bundle.entry[{index}]: PUT needs an id or criteria")
    if method in ("DELETE", "PATCH") and not (entry.resource_id or entry.criteria):
        raise FhirError(400, "required", f"Bundle.entry[{index}] needs an id or criteria")
    return entry


def _patch_operations(entry: Entry) -> Any:
    binary = entry.resource or {}
    if binary.get("resourceType") != "Binary" or binary.get("contentType") != (
        "application/json-patch+json"
    ):
        raise FhirError(
            400, "not-supported", "PATCH entries carry a Binary with a JSON Patch document"
        )
    try:
        return orjson.loads(base64.b64decode(binary.get("data", ""), validate=True))
    except (ValueError, orjson.JSONDecodeError):
        raise FhirError(400, "structure", "The Binary does not hold a JSON Patch") from None


# --- references ------------------------------------------------------------------------


def _rewrite(node: Any, ctx: Context, resolve_conditional: bool) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                node[key] = _resolve_reference(value, ctx, resolve_conditional)
            elif isinstance(value, (dict, list)):
                _rewrite(value, ctx, resolve_conditional)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item, ctx, resolve_conditional)
    return node


def _resolve_reference(value: str, ctx: Context, resolve_conditional: bool) -> str:
    if value in ctx.references:
        return ctx.references[value]
    if value.startswith(("urn:uuid:", "urn:oid:")):
        raise FhirError(400, "not-found", "A reference names a fullUrl that is not in the bundle")
    if resolve_conditional and conditional.is_conditional_reference(value):
        resolved = conditional.resolve_conditional_reference(ctx.tenant, value)
        ctx.references[value] = resolved
        return resolved
    return value


def _conditional_references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and conditional.is_conditional_reference(value):
                yield value
            elif isinstance(value, (dict, list)):
                yield from _conditional_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _conditional_references(item)


def _look_ahead(ctx: Context, entries: list[Entry], *, references: bool) -> None:
    """Look up the entries' ifNoneExist criteria (locked) and, with `references`, their
    resources' conditional references, all together: a few searches instead of one per
    entry. A reference with exactly one match is resolved; any other goes the usual
    way when it is met (and fails there with the usual error)."""
    wanted = [(e.resource_type, e.if_none_exist) for e in entries if e.if_none_exist]
    refs = (
        {r for e in entries for r in _conditional_references(e.resource)} if references else set()
    )
    wanted += [(r.partition("?")[0], r.partition("?")[2]) for r in refs]
    if not wanted:
        return
    found = conditional.find_many(ctx.tenant, wanted)
    ctx.found.update(found)
    for reference in refs:
        hit = found.get((reference.partition("?")[0], reference.partition("?")[2]))
        if isinstance(hit, list) and len(hit) == 1:
            ctx.references[reference] = f"{hit[0].resource_type}/{hit[0].id}"


def _existing(ctx: Context, entry: Entry) -> Version | None:
    """The one match of a POST entry's ifNoneExist (None: create), 412 for several."""
    assert entry.if_none_exist is not None
    hit = ctx.found.get((entry.resource_type, entry.if_none_exist))
    if hit is None:
        return conditional.find_one(ctx.tenant, entry.resource_type, entry.if_none_exist)
    if isinstance(hit, FhirError):
        raise hit
    if len(hit) > 1:
        raise FhirError(412, "multiple-matches", "The criteria match more than one resource")
    return hit[0] if hit else None


def _map_full_url(ctx: Context, entry: Entry, resource_id: str) -> None:
    target = f"{entry.resource_type}/{resource_id}"
    if entry.full_url:
        ctx.references[entry.full_url] = target
        if not entry.full_url.startswith("urn:"):
            # An absolute or relative URL of a resource whose id the server changes.
            tail = "/".join(entry.full_url.rstrip("/").split("/")[-2:])
            if tail.split("/")[0] == entry.resource_type and tail != target:
                ctx.references[tail] = target


# --- one entry at a time --------------------------------------------------------------


def _record(ctx: Context, action: str, entry: Entry, ok: bool) -> None:
    target = (entry.resource_type, entry.target_id or entry.resource_id or "")
    record_fhir_interaction(ctx.request, action, target, outcome="success" if ok else "failure")


def _resolve_target(ctx: Context, entry: Entry) -> None:
    """Fix the id a POST or conditional PUT will write, before references are rewritten."""
    if entry.method == "POST":
        if entry.if_none_exist:
            existing = _existing(ctx, entry)
            if existing is not None:
                entry.result, entry.status = existing, 200
                entry.target_id = existing.id
                _map_full_url(ctx, entry, existing.id)
                return
        entry.target_id = str(uuid4())
        _map_full_url(ctx, entry, entry.target_id)
    elif entry.method == "PUT":
        if entry.criteria:
            match = conditional.find_one(ctx.tenant, entry.resource_type, entry.criteria)
            body_id = (entry.resource or {}).get("id")
            if match is not None:
                if body_id and body_id != match.id:
                    raise FhirError(400, "invalid", "The resource id differs from the match")
                entry.target_id = match.id
            else:
                entry.target_id = body_id or str(uuid4())
                entry.fresh = not body_id  # an id the server chose: a create
        else:
            entry.target_id = entry.resource_id
        assert entry.target_id is not None
        _map_full_url(ctx, entry, entry.target_id)
        if entry.resource is not None:
            entry.resource["id"] = entry.target_id


def _delete(ctx: Context, entry: Entry) -> None:
    store = ctx.store
    if entry.criteria:
        params = conditional.parse_criteria(entry.criteria)
        conditional.lock_criteria(ctx.tenant, entry.resource_type, params)
        matches = conditional.find(ctx.tenant, entry.resource_type, params)
        if len(matches) > 1:
            raise FhirError(412, "multiple-matches", "The criteria match more than one resource")
        if not matches:
            entry.status = 204
            return
        entry.target_id = matches[0].id
    else:
        entry.target_id = entry.resource_id
    assert entry.target_id is not None
    if entry.if_match is not None:
        current = store.read(ctx.tenant, entry.resource_type, entry.target_id)
        if current is None or current.version_id != entry.if_match:
            raise FhirError(412, "conflict", "ifMatch does not name the current version")
    version = store.delete(ctx.tenant, entry.resource_type, entry.target_id)
    _record(ctx, "fhir.delete", entry, ok=True)
    if version is None:  # never known: a no-op that succeeds (as HAPI answers)
        entry.status = 200
        entry.outcome = outcome_body("information", "informational", NOTHING_TO_DELETE)
        return
    entry.result, entry.status = version, 204


def _write(ctx: Context, entry: Entry) -> None:
    store = ctx.store
    if entry.method == "POST":
        if entry.result is not None:  # ifNoneExist matched
            return
        assert entry.resource is not None and entry.target_id is not None
        entry.result = store.create(ctx.tenant, entry.resource, resource_id=entry.target_id)
        entry.status = 201
        _record(ctx, "fhir.create", entry, ok=True)
        return
    if entry.method == "PATCH":
        _patch(ctx, entry)
        return
    assert entry.resource is not None and entry.target_id is not None
    try:
        if entry.fresh and entry.if_match is None:
            version = store.create(ctx.tenant, entry.resource, resource_id=entry.target_id)
            created = True
        else:
            version, created = store.update(
                ctx.tenant, entry.resource, entry.target_id, if_match=entry.if_match
            )
    except VersionConflict:
        raise FhirError(412, "conflict", "ifMatch does not name the current version") from None
    entry.result, entry.status = version, 201 if created else 200
    _record(ctx, "fhir.update", entry, ok=True)


def _patch(ctx: Context, entry: Entry) -> None:
    store = ctx.store
    if entry.criteria:
        match = conditional.find_one(ctx.tenant, entry.resource_type, entry.criteria)
        if match is None:
            raise FhirError(404, "not-found", "No resource matches the criteria")
        entry.target_id = match.id
    else:
        entry.target_id = entry.resource_id
    assert entry.target_id is not None
    current = store.read(ctx.tenant, entry.resource_type, entry.target_id)
    if current is None or current.deleted:
        raise FhirError(404, "not-found", f"{entry.resource_type}/{entry.target_id} is not known")
    if entry.if_match is not None and entry.if_match != current.version_id:
        raise FhirError(412, "conflict", "ifMatch does not name the current version")
    try:
        patched = jsonpatch.apply_patch(
            orjson.loads(current.content or "{}"), _patch_operations(entry)
        )
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError):
        raise FhirError(422, "processing", "The patch cannot be applied") from None
    issues = validate_resource(
        patched, resource_type=entry.resource_type, resource_id=entry.target_id
    )
    if issues:
        raise FhirError(
            400,
            "invalid",
            "The patched resource is not valid",
            issues=[i.as_outcome_issue() for i in issues],
        )
    version, _ = store.update(ctx.tenant, patched, entry.target_id, if_match=current.version_id)
    entry.result, entry.status = version, 200
    _record(ctx, "fhir.patch", entry, ok=True)


def _get(ctx: Context, entry: Entry, base: str) -> None:
    store = ctx.store
    if entry.resource_id is None:
        params = conditional.parse_criteria(entry.criteria) if entry.criteria else []
        query = parse_search(params, [entry.resource_type])
        result = store.search(ctx.tenant, query)
        _record(ctx, "fhir.search", entry, ok=True)
        searchset: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
        if result.total is not None:
            searchset["total"] = result.total
        searchset["entry"] = [
            {
                "fullUrl": f"{base}{v.resource_type}/{v.id}",
                "resource": orjson.Fragment(v.content or "{}"),
                "search": {"mode": "match"},
            }
            for v in result.matches
        ]
        entry.body, entry.status = searchset, 200
        return
    if entry.version is not None:
        if not entry.version.isdigit() or len(entry.version) > 9:
            raise FhirError(404, "not-found", "No such version")
        version = store.vread(
            ctx.tenant, entry.resource_type, entry.resource_id, int(entry.version)
        )
        _record(ctx, "fhir.vread", entry, ok=version is not None)
    else:
        version = store.read(ctx.tenant, entry.resource_type, entry.resource_id)
        _record(ctx, "fhir.read", entry, ok=version is not None and not version.deleted)
    if version is None:
        raise FhirError(404, "not-found", f"{entry.resource_type}/{entry.resource_id} is not known")
    if version.deleted:
        raise FhirError(410, "deleted", f"{entry.resource_type}/{entry.resource_id} is deleted")
    entry.result = version
    if _not_modified(entry, version):
        entry.status = 304
    else:
        entry.status, entry.body = 200, orjson.Fragment(version.content or "{}")


def _not_modified(entry: Entry, version: Version) -> bool:
    if entry.if_none_match:
        return entry.if_none_match.strip() in (version.etag, f'"{version.version_id}"')
    if entry.if_modified_since:
        since = parse_fhir_datetime(entry.if_modified_since, name="ifModifiedSince")
        return version.last_updated.replace(microsecond=0) <= since
    return False


def _process(ctx: Context, entry: Entry, base: str, *, phase: str) -> None:
    if phase == "resolve" and entry.method in ("POST", "PUT"):
        _resolve_target(ctx, entry)
    elif phase == "delete" and entry.method == "DELETE":
        _delete(ctx, entry)
    elif phase == "write" and entry.method == "POST" and entry.result is not None:
        return  # created with the others (_create_all), or matched by ifNoneExist
    elif phase == "write" and entry.method in ("POST", "PUT", "PATCH"):
        if entry.resource is not None and entry.method != "PATCH":
            _rewrite(entry.resource, ctx, resolve_conditional=True)
        _write(ctx, entry)
    elif phase == "read" and entry.method in ("GET", "HEAD"):
        _get(ctx, entry, base)


# --- the bundle ---------------------------------------------------------------------------


def _validate(bundle: dict[str, Any]) -> None:
    issues = validate_resource(bundle, resource_type="Bundle")
    if issues:
        raise FhirError(
            400, "invalid", "The bundle is not valid", issues=[i.as_outcome_issue() for i in issues]
        )


def process(request: Any, bundle: Any, base: str, representation: bool) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "POST to the base takes a batch or transaction Bundle")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError(400, "value", "Bundle.type must be batch or transaction")
    if kind == "transaction" and not get_store().features.transactions:
        raise FhirError(
            400,
            "not-supported",
            "Transaction bundles are not supported by this server's FHIR store; send a batch",
        )
    if len(bundle.get("entry") or []) > MAX_ENTRIES:
        raise FhirError(
            413, "too-costly", f"A bundle may hold at most {MAX_ENTRIES} entries; split it"
        )
    if kind == "transaction":
        _validate(bundle)  # every entry's resource, with Bundle.entry[i]... expressions
    else:
        shell = {**bundle, "entry": [_without_resource(e) for e in bundle.get("entry") or []]}
        _validate(shell)  # each batch entry's resource is validated on its own
    entries = parse_entries(bundle, base)
    if kind == "transaction":
        writes = sum(1 for e in entries if e.method in ("POST", "PUT", "PATCH", "DELETE"))
        get_store().features.check_transaction_writes(writes)
    ctx = Context(tenant=request.org.pk, request=request)
    if kind == "transaction":
        _transaction(ctx, entries, base)
    else:
        _batch(ctx, entries, base)
    return _response(kind, entries, base, representation)


def _transaction(ctx: Context, entries: list[Entry], base: str) -> None:
    ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.index))
    with tenant_transaction(ctx.tenant):
        staged = ctx.store.staged(ctx.tenant)
        if staged is not None:
            ctx.store = staged
        for phase in ("delete", "resolve", "write", "read"):
            if phase == "read" and staged is not None:
                _commit(ctx, staged, ordered)
            if phase == "resolve":
                # After the deletes, as each lookup would be; the creates' references
                # resolve before any write (_create_all), so ahead gives the same.
                _look_ahead(ctx, [e for e in ordered if e.method == "POST"], references=True)
            if phase == "write":
                _create_all(ctx, [e for e in ordered if e.method == "POST" and e.result is None])
            for entry in ordered:
                try:
                    _process(ctx, entry, base, phase=phase)
                except FhirError as error:
                    transaction.set_rollback(True)
                    raise _entry_error(entry, error) from None


_LITERAL = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[0-9]+)?")


def _literal_references(node: Any, found: set[str]) -> set[str]:
    """The `Type/id` of this server that a resource references (relative literal
    references; urn:, absolute URLs and contained `#id` are not ours to check)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                match = _LITERAL.fullmatch(value)
                if match and match.group(1) in RESOURCE_TYPES:
                    found.add(f"{match.group(1)}/{match.group(2)}")
            elif isinstance(value, (dict, list)):
                _literal_references(value, found)
    elif isinstance(node, list):
        for item in node:
            _literal_references(item, found)
    return found


def _commit(ctx: Context, staged: Staged, entries: list[Entry]) -> None:
    """Send a staged transaction's writes (HealthLake), after checking that what they
    write references only the tenant's own resources: another tenant's is refused
    exactly like a missing one (the datastore's ids are shared and it would accept
    it). Then every entry answers with the version the datastore stored."""
    for entry in entries:
        if entry.result is None or entry.result.deleted or not staged.pending(entry.result):
            continue
        references = _literal_references(orjson.loads(entry.result.content or "{}"), set())
        references.discard(f"{entry.result.resource_type}/{entry.result.id}")
        if references and staged.unknown_references(references):
            transaction.set_rollback(True)
            error = FhirError(400, "not-found", "A reference names a resource that is not known")
            raise _entry_error(entry, error)
    try:
        committed = staged.commit()
    except VersionConflict:
        transaction.set_rollback(True)
        raise FhirError(
            412, "conflict", "A resource changed while the transaction ran; nothing was written"
        ) from None
    except FhirError:
        transaction.set_rollback(True)
        raise
    for entry in entries:
        if entry.result is not None:
            entry.result = committed.get(entry.result, entry.result)


def _create_all(ctx: Context, entries: list[Entry]) -> None:
    """A transaction's creates (POST entries without an ifNoneExist match) together:
    resources with history, index rows and audit rows in three statements, however
    many entries (they come first in the write phase: spec order)."""
    if not entries:
        return
    for entry in entries:
        assert entry.resource is not None and entry.target_id is not None
        try:
            _rewrite(entry.resource, ctx, resolve_conditional=True)
        except FhirError as error:
            transaction.set_rollback(True)
            raise _entry_error(entry, error) from None
    versions = ctx.store.create_many(
        ctx.tenant, [(entry.resource or {}, entry.target_id or "") for entry in entries]
    )
    for entry, version in zip(entries, versions, strict=True):
        entry.result, entry.status = version, 201
    record_fhir_interaction(
        ctx.request,
        "fhir.create",
        [(entry.resource_type, entry.target_id or "") for entry in entries],
    )


def _without_resource(entry: Any) -> Any:
    if isinstance(entry, dict):
        return {k: v for k, v in entry.items() if k != "resource"}
    return entry


def _validate_entry(entry: Entry) -> None:
    if entry.method not in ("POST", "PUT") or entry.resource is None:
        return
    issues = validate_resource(entry.resource, resource_type=entry.resource_type)
    if issues:
        outcome = []
        for issue in issues:
            rest = issue.expression.partition(".")[2]
            where = f"{entry.where}.resource" + (f".{rest}" if rest else "")
            outcome.append({**issue.as_outcome_issue(), "expression": [where]})
        raise FhirError(400, "invalid", "The resource is not valid", issues=outcome)


def _fail(entry: Entry, error: FhirError) -> None:
    entry.status = error.status
    entry.outcome = error.response_body()


def _batch(ctx: Context, entries: list[Entry], base: str) -> None:
    ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.index))
    for entry in ordered:
        if entry.method == "DELETE":
            _batch_one(ctx, entry, base)
    _batch_creates(ctx, [e for e in ordered if e.method == "POST"])
    for entry in ordered:
        if entry.method not in ("DELETE", "POST"):
            _batch_one(ctx, entry, base)


def _batch_one(ctx: Context, entry: Entry, base: str) -> None:
    own = Context(tenant=ctx.tenant, request=ctx.request)
    try:
        _validate_entry(entry)
        with tenant_transaction(ctx.tenant):
            for phase in ("delete", "resolve", "write", "read"):
                _process(own, entry, base, phase=phase)
    except FhirError as error:
        _fail(entry, error)


BATCH_CHUNK = 1000
"""A batch's POST entries are written this many per transaction: bounded statements,
lock sets and memory per round, and no round trip per entry."""


def _batch_creates(ctx: Context, entries: list[Entry]) -> None:
    """A batch's POST entries (Synthea's provider bundles are thousands of conditional
    creates), BATCH_CHUNK per transaction: their ifNoneExist criteria and conditional
    references looked up together, the new resources written together. The result is
    that of processing them one by one in entry order, with two liberties the spec's
    independent batch entries allow: entries without conditional references come
    first, so a reference may find a resource a later entry creates; and an entry
    whose ifNoneExist repeats an earlier entry's gets that entry's resource."""
    valid = []
    for entry in entries:
        try:
            _validate_entry(entry)
            valid.append(entry)
        except FhirError as error:
            _fail(entry, error)
    plain = [e for e in valid if next(_conditional_references(e.resource), None) is None]
    referring = [e for e in valid if next(_conditional_references(e.resource), None) is not None]
    for wave in (plain, referring):
        for start in range(0, len(wave), BATCH_CHUNK):
            with tenant_transaction(ctx.tenant):
                _create_chunk(ctx, wave[start : start + BATCH_CHUNK])


def _create_chunk(ctx: Context, chunk: list[Entry]) -> None:
    own = Context(tenant=ctx.tenant, request=ctx.request)  # no fullUrls: entries are apart
    _look_ahead(own, chunk, references=True)
    first: dict[tuple[str, str], Entry] = {}
    repeats: list[tuple[Entry, Entry]] = []
    new: list[Entry] = []
    for entry in chunk:
        try:
            if entry.if_none_exist:
                existing = _existing(own, entry)
                if existing is not None:
                    entry.result, entry.status, entry.target_id = existing, 200, existing.id
                    continue
                key = (entry.resource_type, entry.if_none_exist)
                if key in first:
                    repeats.append((entry, first[key]))
                    continue
                first[key] = entry
            _rewrite(entry.resource, own, resolve_conditional=True)
        except FhirError as error:
            _fail(entry, error)
            continue
        entry.target_id = str(uuid4())
        new.append(entry)
    if new:
        versions = get_store().create_many(
            ctx.tenant, [(entry.resource or {}, entry.target_id or "") for entry in new]
        )
        for entry, version in zip(new, versions, strict=True):
            entry.result, entry.status = version, 201
    for entry, earlier in repeats:
        entry.result, entry.status, entry.target_id = earlier.result, 200, earlier.target_id
    done = [e for e in chunk if e.result is not None]
    if done:
        record_fhir_interaction(
            ctx.request, "fhir.create", [(e.resource_type, e.target_id or "") for e in done]
        )


def _response(kind: str, entries: list[Entry], base: str, representation: bool) -> dict[str, Any]:
    out = []
    for entry in entries:
        response: dict[str, Any] = {"status": _STATUS_TEXT.get(entry.status, str(entry.status))}
        item: dict[str, Any] = {}
        version = entry.result
        if version is not None and entry.method in ("POST", "PUT", "PATCH"):
            response["location"] = (
                f"{version.resource_type}/{version.id}/_history/{version.version_id}"
            )
            item["fullUrl"] = f"{base}{version.resource_type}/{version.id}"
        if version is not None:
            response["etag"] = version.etag
            response["lastModified"] = format_instant(version.last_updated)
        if entry.outcome is not None:
            response["outcome"] = entry.outcome
        if entry.body is not None:
            item["resource"] = entry.body
        elif representation and version is not None and not version.deleted and version.content:
            item["resource"] = orjson.Fragment(version.content)
        item["response"] = response
        out.append(item)
    body: dict[str, Any] = {"resourceType": "Bundle", "type": f"{kind}-response"}
    if out:
        body["entry"] = out
    return body
