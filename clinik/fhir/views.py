"""FHIR R4 REST interactions. The gateway has already authenticated the key and set
request.org; every view works inside that organization only."""

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlencode
from uuid import uuid4

import jsonpatch
import orjson
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from clinik.audit import interactions
from clinik.audit.interactions import WHEN_LIVE, record_fhir_interaction
from clinik.fhir import bundles, capability, conditional, idempotency
from clinik.fhir.http import (
    FhirError,
    negotiate,
    not_modified,
    parse_count,
    parse_fhir_datetime,
    parse_if_match,
    parse_offset,
    prefer_return,
    read_json_body,
    version_headers,
)
from clinik.fhir.outcomes import FHIR_JSON, NOTHING_TO_DELETE, failure_response, outcome_body
from clinik.fhir.search import compartments
from clinik.fhir.search.bundle import request_params, searchset, strict_handling
from clinik.fhir.search.query import Compartment, parse_search
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.fhir.store import Version, VersionConflict, get_store
from clinik.fhir.tenancy import format_instant, tenant_transaction
from clinik.fhir.validation import validate_resource
from clinik.gateway.checks import Refused, unauthorized
from clinik.keys import recheck
from clinik.lib.db import cancelled_by_timeout
from clinik.lib.http import ApiHttpRequest

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]


def fhir_view(methods: tuple[str, ...]) -> Callable[[View], View]:
    """Method check, JSON negotiation, FhirError → OperationOutcome and VersionConflict
    → 412, for every view."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = FhirError(
                    405, "not-supported", f"{request.method} is not allowed here"
                ).response()
                response["Allow"] = ", ".join(methods)
                return response
            interactions.begin_view(request)
            try:
                try:
                    negotiate(request)
                    response = view(request, *args, **kwargs)
                except VersionConflict:
                    response = FhirError(
                        412, "conflict", "If-Match does not name the current version"
                    ).response()
                except FhirError as error:
                    response = error.response()
                if not recheck.settle(response.status_code):  # clinik.keys.recheck
                    raise unauthorized()
                return response
            except Refused:
                # The key was revoked, expired or closed since (the gateway answers):
                # nothing was done or read, and, as for a refused lookup, no interaction
                # of the key's is audited.
                interactions.forget_pending(request)
                raise
            except Exception as error:
                if recheck.refused(error):
                    interactions.forget_pending(request)
                    raise unauthorized() from None
                if (answer := failure_response(error)) is not None:
                    return answer
                # Logged with the traceback but without the message (it may quote
                # values); the client gets an OperationOutcome, never an HTML page.
                logger.exception("FHIR request failed (request id %s)", _request_id(request))
                return FhirError(
                    500,
                    "exception",
                    f"Internal error; quote request id {_request_id(request)} to support",
                ).response()
            finally:
                interactions.write_pending(request)

        return wrapper

    return decorate


def _request_id(request: HttpRequest) -> str:
    return str(getattr(request, "request_id", ""))


def _base(request: HttpRequest) -> str:
    return request.build_absolute_uri("/fhir/R4/")


def _resource_response(
    request: HttpRequest, version: Version, status: int = 200, *, location: bool = False
) -> HttpResponse:
    prefer = prefer_return(request) if request.method != "GET" else "representation"
    if prefer == "minimal":
        response = HttpResponse(status=status)
    elif prefer == "OperationOutcome":
        body = outcome_body("information", "informational", "The interaction succeeded")
        response = HttpResponse(orjson.dumps(body), status=status, content_type=FHIR_JSON)
    else:
        response = HttpResponse(version.content, status=status, content_type=FHIR_JSON)
    version_headers(response, version.version_id, version.last_updated)
    if location:
        response["Location"] = (
            f"{_base(request)}{version.resource_type}/{version.id}/_history/{version.version_id}"
        )
    return response


def _record(request: ApiHttpRequest, action: str, target: tuple[str, str], ok: bool) -> None:
    record_fhir_interaction(request, action, target, outcome="success" if ok else "failure")


def _gone(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(410, "deleted", f"{resource_type}/{resource_id} has been deleted")


def _missing(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known")


def _validated(
    request: HttpRequest, body: Any, resource_type: str, resource_id: str | None
) -> dict[str, Any]:
    issues = validate_resource(body, resource_type=resource_type, resource_id=resource_id)
    if issues:
        raise FhirError(
            400,
            "invalid",
            "The resource is not valid",
            issues=[i.as_outcome_issue() for i in issues],
        )
    return body


# --- base: batch/transaction bundles (POST) and system-level search (GET) -------------


@fhir_view(("GET", "HEAD", "POST"))
def base(request: ApiHttpRequest) -> HttpResponse:
    """GET: system-level search (`_type`). POST: a batch or transaction Bundle."""
    if request.method != "POST":
        return _search(request, None)
    try:
        return _bundle_post(request)
    except FhirError:
        # The refused bundle's own audit rows rolled back with it; this one stays.
        _record(request, "fhir.batch", ("Bundle", ""), ok=False)
        raise


def _bundle_post(request: ApiHttpRequest) -> HttpResponse:
    bundle = read_json_body(request)
    representation = prefer_return(request) == "representation" and "return=" in (
        request.headers.get("Prefer", "")
    )
    key = idempotency.request_key(request)
    if key is None:
        body = bundles.process(request, bundle, _base(request), representation)
        return HttpResponse(orjson.dumps(body), content_type=FHIR_JSON)
    hashed = idempotency.request_hash(request)
    with tenant_transaction(request.org.pk):
        replay = idempotency.claim(request.org.pk, key, hashed)
        if replay is not None:
            body = _replayed_bundle(request, bundle, replay)
        else:
            body = bundles.process(request, bundle, _base(request), representation)
            idempotency.remember(request.org.pk, key, hashed, _pointers(body))
    return HttpResponse(orjson.dumps(body), content_type=FHIR_JSON)


def _pointers(body: dict[str, Any]) -> list[idempotency.Pointer]:
    pointers = []
    for entry in body.get("entry", []):
        response = entry["response"]
        status = int(response["status"].split(" ", 1)[0])
        location = response.get("location", "")
        parts = location.split("/")
        if len(parts) == 4:
            pointers.append(idempotency.Pointer(parts[0], parts[1], int(parts[3]), status))
        else:
            pointers.append(idempotency.Pointer("", "", 0, status))
    return pointers


def _replayed_bundle(
    request: ApiHttpRequest, bundle: dict[str, Any], replay: list[idempotency.Pointer]
) -> dict[str, Any]:
    """The original response rebuilt from its pointers (no body was stored)."""
    entries = []
    for pointer in replay:
        response: dict[str, Any] = {"status": f"{pointer.status}"}
        item: dict[str, Any] = {}
        if pointer.resource_type:
            version = get_store().vread(
                request.org.pk, pointer.resource_type, pointer.id, pointer.version_id
            )
            response["location"] = (
                f"{pointer.resource_type}/{pointer.id}/_history/{pointer.version_id}"
            )
            item["fullUrl"] = f"{_base(request)}{pointer.resource_type}/{pointer.id}"
            if version is not None:
                response["etag"] = version.etag
                response["lastModified"] = format_instant(version.last_updated)
        item["response"] = response
        entries.append(item)
    kind = f"{bundle.get('type', 'batch')}-response"
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


@fhir_view(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
def unknown_route(request: HttpRequest) -> HttpResponse:
    raise FhirError(404, "not-supported", "This server has no such FHIR endpoint or operation")


# --- capability ----------------------------------------------------------------------


@fhir_view(("GET", "HEAD"))
def metadata(request: HttpRequest) -> HttpResponse:
    return HttpResponse(capability.statement_json(_base(request)), content_type=FHIR_JSON)


# --- type level ---------------------------------------------------------------------


@fhir_view(("GET", "HEAD", "POST", "PUT", "DELETE"))
def type_root(request: ApiHttpRequest, resource_type: str) -> HttpResponse:
    if request.method == "POST":
        return _create(request, resource_type)
    if request.method == "PUT":
        return _conditional_update(request, resource_type)
    if request.method == "DELETE":
        return _conditional_delete(request, resource_type)
    return _search(request, resource_type)


def _create(request: ApiHttpRequest, resource_type: str) -> HttpResponse:
    """Create; conditional with If-None-Exist; replayed with an Idempotency-Key."""
    store = get_store()
    key = idempotency.request_key(request)
    if_none_exist = request.headers.get("If-None-Exist")
    with tenant_transaction(request.org.pk):
        try:
            hashed = idempotency.request_hash(request) if key else ""
            replay = idempotency.claim(request.org.pk, key, hashed) if key else None
            if replay:
                pointer = replay[0]
                version = store.vread(
                    request.org.pk, pointer.resource_type, pointer.id, pointer.version_id
                )
                if version is None:
                    raise FhirError(410, "deleted", "The resource this key created is erased")
                return _resource_response(request, version, pointer.status, location=True)
            body = read_json_body(request)
            resource = _validated(request, body, resource_type, None)
            if if_none_exist:
                existing = conditional.find_one(request.org.pk, resource_type, if_none_exist)
                if existing is not None:
                    _record(request, "fhir.create", (resource_type, existing.id), ok=True)
                    return _resource_response(request, existing, 200, location=True)
        except FhirError:
            _record(request, "fhir.create", (resource_type, ""), ok=False)
            raise
        version = store.create(request.org.pk, resource)
        _record(request, "fhir.create", (resource_type, version.id), ok=True)
        if key:
            pointer = idempotency.Pointer(resource_type, version.id, version.version_id, 201)
            idempotency.remember(request.org.pk, key, hashed, [pointer])
    return _resource_response(request, version, 201, location=True)


def _conditional_update(request: ApiHttpRequest, resource_type: str) -> HttpResponse:
    """PUT [type]?criteria: no match creates, one match updates, several → 412."""
    store = get_store()
    criteria = request.META.get("QUERY_STRING", "")
    with tenant_transaction(request.org.pk):
        try:
            body = read_json_body(request)
            match = conditional.find_one(request.org.pk, resource_type, criteria)
            body_id = body.get("id") if isinstance(body, dict) else None
            if match is not None and body_id and body_id != match.id:
                raise FhirError(400, "invalid", "The resource id differs from the match")
            resource_id = match.id if match else (body_id or str(uuid4()))
            if isinstance(body, dict) and "id" not in body:
                body = {**body, "id": resource_id}
            resource = _validated(request, body, resource_type, resource_id)
            if_match = parse_if_match(request)
            if match is None and not body_id and if_match is None:
                # No match and no id: a create with an id the server chose (not an
                # update-as-create, which a store may not offer).
                version, created = (
                    store.create(request.org.pk, resource, resource_id=resource_id),
                    True,
                )
            else:
                version, created = store.update(
                    request.org.pk, resource, resource_id, if_match=if_match
                )
        except (FhirError, VersionConflict):
            _record(request, "fhir.update", (resource_type, ""), ok=False)
            raise
        _record(request, "fhir.update", (resource_type, resource_id), ok=True)
    return _resource_response(request, version, 201 if created else 200, location=created)


_MAX_CONDITIONAL_DELETES = 1000


def _conditional_delete(request: ApiHttpRequest, resource_type: str) -> HttpResponse:
    """DELETE [type]?criteria: deletes every match (conditionalDelete: multiple)."""
    store = get_store()
    with tenant_transaction(request.org.pk):
        params = conditional.parse_criteria(request.META.get("QUERY_STRING", ""))
        conditional.lock_criteria(request.org.pk, resource_type, params)
        matches = conditional.find(
            request.org.pk, resource_type, params, limit=_MAX_CONDITIONAL_DELETES + 1
        )
        if len(matches) > _MAX_CONDITIONAL_DELETES:
            raise FhirError(412, "too-costly", "The criteria match too many resources to delete")
        for match in matches:
            store.delete(request.org.pk, resource_type, match.id)
            _record(request, "fhir.delete", (resource_type, match.id), ok=True)
    return HttpResponse(status=204)


@fhir_view(("POST",))
def system_search(request: ApiHttpRequest) -> HttpResponse:
    """POST _search: the system-level search (`_type`) with form-encoded parameters."""
    return _search(request, None)


@fhir_view(("POST",))
def type_search(request: ApiHttpRequest, resource_type: str) -> HttpResponse:
    """POST [type]/_search with form-encoded parameters (values stay out of URLs)."""
    return _search(request, resource_type)


def _search(request: ApiHttpRequest, resource_type: str | None) -> HttpResponse:
    target = (resource_type or "", "")
    try:
        if resource_type is not None and resource_type not in RESOURCE_TYPES:
            raise FhirError(404, "not-supported", f"{resource_type} is not a FHIR R4 resource type")
        query = parse_search(
            request_params(request),
            [resource_type] if resource_type else None,
            strict=strict_handling(request),
        )
    except FhirError:
        _record(request, "fhir.search", target, ok=False)
        raise
    try:
        with tenant_transaction(request.org.pk):
            result = get_store().search(request.org.pk, query)
            _record(request, "fhir.search", target, ok=True)
    except DatabaseError as error:
        if cancelled_by_timeout(error) != "statement":
            raise
        _record(request, "fhir.search", target, ok=False)
        raise FhirError(
            400,
            "too-costly",
            "The search took too long and was cancelled: narrow it (more selective"
            " parameters, :exact instead of :contains, fewer chains, _has or _include,"
            " a smaller _count).",
        ) from None
    path = f"/fhir/R4/{resource_type}" if resource_type else "/fhir/R4/"
    body = searchset(request, query, result, base=_base(request), path=path)
    return HttpResponse(body, content_type=FHIR_JSON)


# --- compartments ------------------------------------------------------------------


@fhir_view(("GET", "HEAD"))
def compartment_search(
    request: ApiHttpRequest, compartment: str, resource_id: str, resource_type: str | None = None
) -> HttpResponse:
    """GET [compartment]/[id]/[type] (or `*`): a search inside one compartment. The
    focal resource is looked up first, exactly as a read: another tenant's (or an
    unknown) id is a 404, a deleted one a 410."""
    return _compartment_search(request, compartment, resource_id, resource_type)


@fhir_view(("POST",))
def compartment_search_form(
    request: ApiHttpRequest, compartment: str, resource_id: str, resource_type: str | None = None
) -> HttpResponse:
    """POST [compartment]/[id]/[type]/_search (or [compartment]/[id]/_search for every
    type): the same search with form-encoded parameters (values stay out of URLs)."""
    return _compartment_search(request, compartment, resource_id, resource_type)


def _compartment_search(
    request: ApiHttpRequest, compartment: str, resource_id: str, resource_type: str | None
) -> HttpResponse:
    target = (compartment, resource_id)
    store = get_store()
    definition = compartments.get(compartment)
    try:
        if definition is None or "compartment" not in store.features.search_features:
            raise FhirError(404, "not-found", f"{compartment} is not a compartment")
        if resource_type is not None and resource_type not in definition.types:
            raise FhirError(
                400, "not-supported", f"{resource_type} is not in the {compartment} compartment"
            )
        member = Compartment(
            compartment,
            resource_id,
            tuple(definition.members.items()),
            definition.focal_member,
        )
        query = parse_search(
            request_params(request),
            [resource_type] if resource_type else None,
            strict=strict_handling(request),
            compartment=member,
        )
    except FhirError:
        _record(request, "fhir.search", target, ok=False)
        raise
    with tenant_transaction(request.org.pk):
        focal = store.read(request.org.pk, compartment, resource_id)
        if focal is None or focal.deleted:
            _record(request, "fhir.search", target, ok=False)
            raise _missing(*target) if focal is None else _gone(*target)
        result = store.search(request.org.pk, query)
        _record(request, "fhir.search", target, ok=True)
    path = f"/fhir/R4/{compartment}/{resource_id}/{resource_type or '*'}"
    body = searchset(request, query, result, base=_base(request), path=path)
    return HttpResponse(body, content_type=FHIR_JSON)


# --- instance level -----------------------------------------------------------------


@fhir_view(("GET", "HEAD", "PUT", "PATCH", "DELETE"))
def instance(request: ApiHttpRequest, resource_type: str, resource_id: str) -> HttpResponse:
    if request.method in ("GET", "HEAD"):
        return _read(request, resource_type, resource_id)
    if request.method == "PUT":
        return _update(request, resource_type, resource_id)
    if request.method == "PATCH":
        return _patch(request, resource_type, resource_id)
    return _delete(request, resource_type, resource_id)


def _read(request: ApiHttpRequest, resource_type: str, resource_id: str) -> HttpResponse:
    version = get_store().read(
        request.org.pk,
        resource_type,
        resource_id,
        alongside=record_fhir_interaction(
            request, "fhir.read", (resource_type, resource_id), outcome=WHEN_LIVE
        ),
    )
    if version is None:
        raise _missing(resource_type, resource_id)
    if version.deleted:
        raise _gone(resource_type, resource_id)
    if not_modified(request, version.version_id, version.last_updated):
        response = HttpResponse(status=304)
        version_headers(response, version.version_id, version.last_updated)
        return response
    return _resource_response(request, version)


def _update(request: ApiHttpRequest, resource_type: str, resource_id: str) -> HttpResponse:
    store = get_store()
    target = (resource_type, resource_id)
    with tenant_transaction(request.org.pk):
        try:
            if_match = parse_if_match(request)
            resource = _validated(request, read_json_body(request), resource_type, resource_id)
            version, created = store.update(
                request.org.pk, resource, resource_id, if_match=if_match
            )
        except (FhirError, VersionConflict):
            _record(request, "fhir.update", target, ok=False)
            raise
        _record(request, "fhir.update", target, ok=True)
    return _resource_response(request, version, 201 if created else 200, location=created)


def _patch(request: ApiHttpRequest, resource_type: str, resource_id: str) -> HttpResponse:
    store = get_store()
    target = (resource_type, resource_id)
    with tenant_transaction(request.org.pk):
        try:
            if_match = parse_if_match(request)
            operations = read_json_body(request, patch=True)
            current = store.read(request.org.pk, resource_type, resource_id)
            if current is None:
                raise _missing(resource_type, resource_id)
            if current.deleted:
                raise _gone(resource_type, resource_id)
            if if_match is not None and if_match != current.version_id:
                raise VersionConflict(current.version_id)
            try:
                patched = jsonpatch.apply_patch(orjson.loads(current.content or "{}"), operations)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as e:
                raise FhirError(
                    422, "processing", f"The patch cannot be applied: {type(e).__name__}"
                ) from None
            resource = _validated(request, patched, resource_type, resource_id)
            version, _created = store.update(
                request.org.pk, resource, resource_id, if_match=current.version_id
            )
        except (FhirError, VersionConflict):
            _record(request, "fhir.patch", target, ok=False)
            raise
        _record(request, "fhir.patch", target, ok=True)
    return _resource_response(request, version)


def _delete(request: ApiHttpRequest, resource_type: str, resource_id: str) -> HttpResponse:
    """Delete; an id that was never known (or is another tenant's) is a no-op that
    succeeds, with an informational OperationOutcome, as HAPI answers."""
    with tenant_transaction(request.org.pk):
        version = get_store().delete(request.org.pk, resource_type, resource_id)
        _record(request, "fhir.delete", (resource_type, resource_id), ok=True)
    if version is None:
        body = outcome_body("information", "informational", NOTHING_TO_DELETE)
        return HttpResponse(orjson.dumps(body), status=200, content_type=FHIR_JSON)
    if prefer_return(request) == "OperationOutcome":
        body = outcome_body("information", "informational", "The resource is deleted")
        response = HttpResponse(orjson.dumps(body), status=200, content_type=FHIR_JSON)
    else:
        response = HttpResponse(status=204)
    response["ETag"] = version.etag
    return response


@fhir_view(("GET", "HEAD"))
def vread(
    request: ApiHttpRequest, resource_type: str, resource_id: str, version_id: str
) -> HttpResponse:
    if not version_id.isdigit() or len(version_id) > 9:
        raise FhirError(404, "not-found", "No such version")
    with tenant_transaction(request.org.pk):
        version = get_store().vread(request.org.pk, resource_type, resource_id, int(version_id))
        _record(request, "fhir.vread", (resource_type, resource_id), ok=version is not None)
    if version is None:
        raise FhirError(404, "not-found", f"{resource_type}/{resource_id} has no such version")
    if version.deleted:
        raise _gone(resource_type, resource_id)
    return _resource_response(request, version)


@fhir_view(("POST",))
def expunge(request: ApiHttpRequest, resource_type: str, resource_id: str) -> HttpResponse:
    with tenant_transaction(request.org.pk):
        erased = get_store().expunge(request.org.pk, resource_type, resource_id)
        _record(request, "fhir.expunge", (resource_type, resource_id), ok=erased > 0)
    if not erased:
        raise _missing(resource_type, resource_id)
    body = outcome_body(
        "information", "informational", f"Erased {erased} version(s) of the resource for good"
    )
    return HttpResponse(orjson.dumps(body), content_type=FHIR_JSON)


# --- history --------------------------------------------------------------------------


@fhir_view(("GET", "HEAD"))
def history(
    request: ApiHttpRequest, resource_type: str | None = None, resource_id: str | None = None
) -> HttpResponse:
    count, offset = parse_count(request), parse_offset(request)
    since = request.GET.get("_since")
    at = request.GET.get("_at")
    page = None
    with tenant_transaction(request.org.pk):
        page = get_store().history(
            request.org.pk,
            resource_type=resource_type,
            resource_id=resource_id,
            since=parse_fhir_datetime(since, name="_since") if since else None,
            at=parse_fhir_datetime(at, name="_at", upper=True) if at else None,
            count=count,
            offset=offset,
        )
        _record(request, "fhir.history", (resource_type or "", resource_id or ""), ok=True)
    if resource_id and not page.versions and offset == 0:
        raise _missing(resource_type or "", resource_id)
    return _bundle(request, "history", page.versions, count, offset, page.has_more)


def _bundle(
    request: HttpRequest,
    kind: str,
    versions: list[Version],
    count: int,
    offset: int,
    has_more: bool,
    *,
    search: bool = False,
) -> HttpResponse:
    base = _base(request)
    entries = []
    for v in versions:
        full_url = f"{base}{v.resource_type}/{v.id}"
        entry: dict[str, Any] = {"fullUrl": full_url}
        if not v.deleted:
            entry["resource"] = orjson.Fragment(v.content or "{}")
        if search:
            entry["search"] = {"mode": "match"}
        else:
            method = {"create": "POST", "update": "PUT", "delete": "DELETE"}[v.method]
            url = v.resource_type if method == "POST" else f"{v.resource_type}/{v.id}"
            entry["request"] = {"method": method, "url": url}
            entry["response"] = {
                "status": {"create": "201 Created", "update": "200 OK", "delete": "204 No Content"}[
                    v.method
                ],
                "etag": v.etag,
                "lastModified": format_instant(v.last_updated),
            }
        entries.append(entry)
    params = {k: v for k, v in request.GET.items() if k not in ("_offset",)}

    def link(relation: str, at: int) -> dict[str, str]:
        query = urlencode({**params, "_count": count, "_offset": at})
        return {"relation": relation, "url": request.build_absolute_uri(f"{request.path}?{query}")}

    links = [link("self", offset)]
    if has_more:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind, "link": links}
    if entries:
        bundle["entry"] = entries
    return HttpResponse(orjson.dumps(bundle), content_type=FHIR_JSON)
