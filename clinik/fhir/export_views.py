"""FHIR Bulk Data Access ($export) over HTTP, behind the gateway: the key is already
authenticated and request.org set; every job and file is looked up inside it, so
another organization's key gets 404.

- Kick-off: GET or POST (a Parameters body) on `$export`, `Patient/$export` or
  `Group/[id]/$export`, with `Prefer: respond-async`; 202 and Content-Location.
- Status: `$export-poll-status?_jobId=`: 202 + X-Progress while running, 200 with
  the manifest when done, 429 when polled too often, DELETE to cancel.
- Files: `$export-file?_jobId=&file=`, streamed, with the same key; 410 once expired.
"""

from collections.abc import Callable
from functools import wraps
from typing import Any
from uuid import UUID

import orjson
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.utils.http import http_date
from django.views.decorators.csrf import csrf_exempt

from clinik import audit
from clinik.accounts.models import OrganizationReadOnly
from clinik.fhir import conditional, export, export_actions
from clinik.fhir.http import FhirError, parse_fhir_datetime, read_json_body
from clinik.fhir.outcomes import outcome_response
from clinik.fhir.search.query import parse_search
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.fhir.store import get_store
from clinik.fhir.views import fhir_view
from clinik.lib.http import ApiHttpRequest
from clinik.privacy.models import ExportJob
from clinik.privacy.storage import get_storage

NDJSON = "application/fhir+ndjson"
SUPPORTED = frozenset({"_type", "_since", "_outputFormat", "_typeFilter"})
NOT_SUPPORTED = frozenset(
    {"_elements", "patient", "includeAssociatedData", "organizeOutputBy", "allowPartialManifests"}
)
"""The other kick-off parameters of the Bulk Data OperationDefinition: a 400, or
ignored with `Prefer: handling=lenient`, as Bulk Data 2.0 says."""
BUSY_RETRY_SECONDS = 60


def _base(request: HttpRequest) -> str:
    return request.build_absolute_uri("/fhir/R4/")


# --- kick-off ------------------------------------------------------------------------------


def _prefers_async(request: HttpRequest) -> bool:
    tokens = (part.strip().lower() for part in request.headers.get("Prefer", "").split(","))
    return "respond-async" in tokens


def _parameter_value(parameter: dict[str, Any]) -> str:
    for key, value in parameter.items():
        if key.startswith("value") and isinstance(value, str):
            return value
    raise FhirError(400, "invalid", f"Parameter {parameter.get('name')!s:.40} has no value")


def _raw_parameters(request: HttpRequest) -> dict[str, list[str]]:
    query = {k: request.GET.getlist(k) for k in request.GET if k != "_format"}
    if request.method == "GET":
        return query
    if query:
        raise FhirError(400, "invalid", "Send the parameters in the Parameters body")
    body = read_json_body(request)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FhirError(400, "invalid", "The body must be a Parameters resource")
    found: dict[str, list[str]] = {}
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise FhirError(400, "invalid", "Every parameter needs a name")
        found.setdefault(parameter["name"], []).append(_parameter_value(parameter))
    return found


def _single(raw: dict[str, list[str]], name: str) -> str | None:
    values = raw.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise FhirError(400, "invalid", f"{name} may be given once")
    return values[0]


def _lenient(request: HttpRequest) -> bool:
    for part in request.headers.get("Prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').lower() == "lenient"
    return False


def _type_filters(values: list[str], types: list[str]) -> dict[str, list[str]]:
    """`_typeFilter=Observation%3Fcode%3D…,Condition%3F…` (or repeated): per type, the
    search queries whose matches are exported (ORed), each checked here as a search
    of that type (unknown parameters, result parameters and bad values are a 400)."""
    filters: dict[str, list[str]] = {}
    for value in values:
        for item in value.split(","):
            resource_type, mark, criteria = item.strip().partition("?")
            if not mark or resource_type not in RESOURCE_TYPES:
                raise FhirError(400, "invalid", "_typeFilter: each filter is Type?search")
            if types and resource_type not in types:
                raise FhirError(400, "invalid", f"_typeFilter: {resource_type} is not in _type")
            try:
                parse_search(conditional.parse_criteria(criteria), [resource_type], strict=True)
            except FhirError as error:
                raise FhirError(
                    400, error.code, f"_typeFilter for {resource_type}: {error.diagnostics}"
                ) from None
            if criteria not in filters.setdefault(resource_type, []):
                filters[resource_type].append(criteria)
    return filters


def _params(request: HttpRequest, kind: str, group_id: str) -> export.ExportParams:
    raw = _raw_parameters(request)
    for name in list(raw):
        if name in NOT_SUPPORTED:
            if _lenient(request):
                del raw[name]
                continue
            raise FhirError(400, "not-supported", f"{name} is not supported by this server")
        if name not in SUPPORTED:
            raise FhirError(400, "not-supported", f"Unknown parameter {name[:40]}")
    types: list[str] = []
    for value in raw.get("_type", []):
        for name in value.split(","):
            name = name.strip()
            if name not in RESOURCE_TYPES:
                raise FhirError(400, "invalid", f"_type: {name[:64]} is not a resource type")
            if name not in types:
                types.append(name)
    since_raw = _single(raw, "_since")
    output_format = _single(raw, "_outputFormat") or NDJSON
    if output_format not in export.OUTPUT_FORMATS:
        raise FhirError(
            400, "not-supported", "_outputFormat must be application/fhir+ndjson or ndjson"
        )
    return export.ExportParams(
        kind=kind,
        types=types,
        type_filters=_type_filters(raw.get("_typeFilter", []), types),
        since=parse_fhir_datetime(since_raw, name="_since") if since_raw else None,
        output_format=output_format,
        group_id=group_id,
    )


def _kickoff(request: ApiHttpRequest, kind: str, group_id: str = "") -> HttpResponse:
    if not _prefers_async(request):
        raise FhirError(400, "invalid", "Bulk export is asynchronous: send Prefer: respond-async")
    params = _params(request, kind, group_id)
    if kind == ExportJob.Kind.GROUP:
        group = get_store().read(request.org.pk, "Group", group_id)
        if group is None or group.deleted:
            raise FhirError(404, "not-found", f"Group/{group_id} is not known")
    try:
        job = export_actions.start_export(
            org=request.org, actor=request.api_key, params=params, request=request
        )
    except OrganizationReadOnly:
        raise _closing() from None
    except export.ExportBusy as busy:
        raise FhirError(
            429,
            "throttled",
            busy.api_message(request.org.pk),
            headers={"Retry-After": str(BUSY_RETRY_SECONDS)},
        ) from None
    return outcome_response(
        202,
        "informational",
        "The export has started: poll the URL in Content-Location.",
        severity="information",
        headers={"Content-Location": export.status_url(job, _base(request))},
    )


@fhir_view(("GET", "POST"))
def export_system(request: ApiHttpRequest) -> HttpResponse:
    return _kickoff(request, ExportJob.Kind.SYSTEM)


@fhir_view(("GET", "POST"))
def export_patient(request: ApiHttpRequest) -> HttpResponse:
    return _kickoff(request, ExportJob.Kind.PATIENT)


@fhir_view(("GET", "POST"))
def export_group(request: ApiHttpRequest, group_id: str) -> HttpResponse:
    return _kickoff(request, ExportJob.Kind.GROUP, group_id)


# --- status ----------------------------------------------------------------------------------


def _job(request: ApiHttpRequest) -> ExportJob:
    try:
        job_id = UUID(request.GET.get("_jobId", ""))
    except ValueError:
        raise FhirError(404, "not-found", "No such export") from None
    job = ExportJob.objects.filter(pk=job_id, org=request.org).first()
    if job is None or job.status == ExportJob.Status.CANCELLED:
        raise FhirError(404, "not-found", "No such export")
    return job


def _poll_interval() -> int:
    return max(1, int(settings.EXPORT_POLL_MIN_SECONDS))


def _check_poll_rate(job: ExportJob) -> None:
    seconds = settings.EXPORT_POLL_MIN_SECONDS
    if seconds and not cache.add(f"export-poll:{job.org_id}:{job.pk}", 1, seconds):
        raise FhirError(
            429,
            "throttled",
            "Polled too often: wait for the time in Retry-After.",
            headers={"Retry-After": str(_poll_interval())},
        )


def _closing() -> FhirError:
    return FhirError(403, "forbidden", "This organization is closing: no export can start or stop.")


def _expired() -> FhirError:
    return FhirError(410, "expired", "The export's files have expired: start a new export")


@fhir_view(("GET", "DELETE"))
def export_status(request: ApiHttpRequest) -> HttpResponse:
    job = _job(request)
    if request.method == "DELETE":
        try:
            export_actions.cancel_export(job=job, actor=request.api_key, request=request)
        except OrganizationReadOnly:
            raise _closing() from None
        return outcome_response(
            202,
            "informational",
            "The export is cancelled and its files are deleted.",
            severity="information",
        )
    _check_poll_rate(job)
    if job.is_active:
        response = HttpResponse(status=202)
        response["X-Progress"] = (
            "queued" if job.status == ExportJob.Status.QUEUED else f"{job.live_exported()} written"
        )
        response["Retry-After"] = str(_poll_interval())
        return response
    if job.status == ExportJob.Status.FAILED:
        raise FhirError(500, "exception", f"The export failed: {job.error or 'internal error'}")
    if not job.is_downloadable:
        raise _expired()
    assert job.expires_at is not None
    response = HttpResponse(
        orjson.dumps(export.manifest(job, _base(request))), content_type="application/json"
    )
    response["Expires"] = http_date(job.expires_at.timestamp())
    return response


# --- files --------------------------------------------------------------------------------------


def _file_view(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """GET only; no JSON negotiation (clients ask for application/fhir+ndjson)."""

    @csrf_exempt
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if request.method != "GET":
            response = FhirError(405, "not-supported", f"{request.method} is not allowed here")
            result = response.response()
            result["Allow"] = "GET"
            return result
        try:
            return view(request, *args, **kwargs)
        except FhirError as error:
            return error.response()

    return wrapper


@_file_view
def export_file(request: ApiHttpRequest) -> HttpResponseBase:
    job = _job(request)
    name = request.GET.get("file", "")
    if job.status == ExportJob.Status.EXPIRED:
        raise _expired()
    entry = next((f for f in job.files if f["name"] == name), None)
    if job.status != ExportJob.Status.COMPLETED or entry is None:
        raise FhirError(404, "not-found", "No such export file")
    if not job.is_downloadable:
        raise _expired()
    opened = get_storage().open(f"{export.job_prefix(job)}/{name}")
    if opened is None:
        raise _expired()
    chunks, size = opened
    with transaction.atomic():
        audit.record(
            "export.download",
            org=request.org,
            actor=request.api_key,
            target=job,
            request=request,
        )
    response = StreamingHttpResponse(chunks, content_type=NDJSON)
    response["Content-Length"] = str(size)
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    response["Last-Modified"] = http_date((job.finished_at or timezone.now()).timestamp())
    return response
