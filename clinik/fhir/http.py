"""HTTP details of the FHIR REST API: content negotiation, Prefer, conditional
headers, FHIR date parameters, and the FhirError that views raise."""

import re
from calendar import monthrange
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from django.utils.http import http_date, parse_http_date_safe

from clinik.fhir.outcomes import FHIR_JSON, outcome_body, outcome_response

JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
PATCH_TYPE = "application/json-patch+json"
_FORMAT_ALIASES = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_ACCEPTABLE = JSON_TYPES | {"*/*", "application/*"}
ETAG_PATTERN = re.compile(r'^(?:W/)?"(\d{1,9})"$')
_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class FhirError(Exception):
    """An error answered with an OperationOutcome. Diagnostics never quote PHI."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        issues: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics
        self.expression, self.issues, self.headers = expression, issues, headers

    def response_body(self) -> dict[str, Any]:
        if self.issues:
            return {"resourceType": "OperationOutcome", "issue": self.issues}
        return outcome_body("error", self.code, self.diagnostics, self.expression)

    def response(self) -> HttpResponse:
        if self.issues:
            body = {"resourceType": "OperationOutcome", "issue": self.issues}
            return HttpResponse(orjson.dumps(body), status=self.status, content_type=FHIR_JSON)
        return outcome_response(
            self.status,
            self.code,
            self.diagnostics,
            expression=self.expression,
            headers=self.headers,
        )


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def negotiate(request: HttpRequest) -> None:
    """406 unless the client accepts JSON (by `_format` or Accept)."""
    requested = request.GET.get("_format")
    if requested is not None:
        if requested.strip().lower() not in _FORMAT_ALIASES:
            raise FhirError(406, "not-supported", "Only JSON is supported (_format=json)")
        return
    accept = request.headers.get("Accept")
    if not accept:
        return
    ranges = {_media_type(part) for part in accept.split(",") if part.strip()}
    if not ranges & _ACCEPTABLE:
        raise FhirError(
            406, "not-supported", "This server answers application/fhir+json or application/json"
        )


def read_json_body(request: HttpRequest, *, patch: bool = False) -> Any:
    content_type = _media_type(request.headers.get("Content-Type", ""))
    allowed = {PATCH_TYPE} if patch else JSON_TYPES
    if content_type not in allowed:
        wanted = PATCH_TYPE if patch else "application/fhir+json"
        raise FhirError(415, "not-supported", f"Send the body as {wanted}")
    body = request.body
    if not body:
        raise FhirError(400, "structure", "The request has no body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FhirError(400, "structure", "The body is not valid JSON") from None


def prefer_return(request: HttpRequest) -> str:
    """representation (default), minimal or OperationOutcome, from the Prefer header."""
    for part in request.headers.get("Prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def parse_if_match(request: HttpRequest) -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    match = ETAG_PATTERN.match(raw.strip())
    if not match:
        raise FhirError(400, "value", 'If-Match must be an ETag such as W/"3"')
    return int(match.group(1))


def not_modified(request: HttpRequest, version_id: int, last_updated: datetime) -> bool:
    """True when If-None-Match or If-Modified-Since says the client's copy is current."""
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {tag.strip() for tag in if_none_match.split(",")}
        return "*" in tags or f'W/"{version_id}"' in tags or f'"{version_id}"' in tags
    if_modified_since = request.headers.get("If-Modified-Since")
    if if_modified_since:
        since = parse_http_date_safe(if_modified_since)
        if since is not None:
            return int(last_updated.timestamp()) <= since
    return False


def version_headers(response: HttpResponse, version_id: int, last_updated: datetime) -> None:
    response["ETag"] = f'W/"{version_id}"'
    response["Last-Modified"] = http_date(last_updated.timestamp())


def parse_fhir_datetime(raw: str, *, name: str, upper: bool = False) -> datetime:
    """A FHIR date/dateTime/instant as an aware datetime: the start of its precision
    period, or the end of it when upper=True (`_at=2026-01` means all of January)."""
    match = _DATE.match(raw.strip())
    if not match:
        raise FhirError(400, "value", f"{name} must be a FHIR date or dateTime")
    parts = match.groupdict()
    try:
        year = int(parts["y"])
        month = int(parts["m"] or 1)
        day = int(parts["d"] or 1)
        hour, minute = int(parts["H"] or 0), int(parts["M"] or 0)
        second = int(parts["S"] or 0)
        fraction = parts["f"] or ""
        micro = int((fraction + "000000")[:6]) if fraction else 0
        tz = UTC
        if parts["tz"] and parts["tz"] != "Z":
            sign = 1 if parts["tz"][0] == "+" else -1
            offset = timedelta(hours=int(parts["tz"][1:3]), minutes=int(parts["tz"][4:6]))
            tz = timezone(sign * offset)
        start = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        raise FhirError(400, "value", f"{name} is not a valid date") from None
    if parts["H"] and not parts["tz"]:
        raise FhirError(400, "value", f"{name} with a time needs a timezone")
    if not upper:
        return start
    if parts["f"] or parts["S"]:
        end = start + timedelta(seconds=1 if not parts["f"] else 0, microseconds=1)
    elif parts["H"]:
        end = start + timedelta(minutes=1)
    elif parts["d"]:
        end = start + timedelta(days=1)
    elif parts["m"]:
        end = start + timedelta(days=monthrange(year, month)[1])
    else:
        end = start.replace(year=year + 1)
    return end - timedelta(microseconds=1)


def parse_count(request: HttpRequest, *, default: int = 20, maximum: int = 1000) -> int:
    raw = request.GET.get("_count")
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirError(400, "value", "_count must be a non-negative integer")
    return min(int(raw), maximum)


def parse_offset(request: HttpRequest) -> int:
    raw = request.GET.get("_offset", "0")
    if not raw.isdigit() or int(raw) > 1_000_000:
        raise FhirError(400, "value", "_offset must be a non-negative integer")
    return int(raw)
