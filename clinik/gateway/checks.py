"""The gateway's checks, as plain functions. Each returns what it found or raises
`Refused`, which the middleware turns into an OperationOutcome with its status.

Regular expressions are compiled once, at import; no check reads the request body.
"""

import ipaddress
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse

from clinik.accounts.models import Organization
from clinik.fhir.outcomes import outcome_response
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.gateway import limits
from clinik.gateway.ratelimit import Verdict
from clinik.keys import tokens
from clinik.keys.models import ApiKey
from clinik.lib.http import client_ip
from clinik.lib.text import plain_name, unsafe

BASE = "/fhir/R4"
REALM = 'Bearer realm="ClinikAPI"'
UNAUTHORIZED = "A valid API key is required: send it as `Authorization: Bearer <key>`."


class Refused(Exception):
    """A request the gateway answers itself, with an OperationOutcome."""

    def __init__(
        self, status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics
        self.headers = headers or {}

    def response(self) -> HttpResponse:
        response = outcome_response(self.status, self.code, self.diagnostics, headers=self.headers)
        response["Content-Length"] = str(len(response.content))
        return response


# --- 1. request id ---------------------------------------------------------------

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")


def request_id(meta: dict[str, Any]) -> str:
    """The client's X-Request-ID when well formed, else a new one. A malformed value
    is dropped, never echoed (it could carry CR/LF into our response headers)."""
    given = meta.get("HTTP_X_REQUEST_ID")
    if given and _REQUEST_ID.fullmatch(given):
        return str(given)
    return uuid.uuid4().hex


# --- 1b. request head size ------------------------------------------------------------

# Header names (WSGI keys) not counted against FHIR_MAX_HEADER_BYTES: an oversized
# Authorization header is an invalid key, answered 401 like any other.
_UNCOUNTED_HEADERS = frozenset({"HTTP_AUTHORIZATION"})


def check_request_head(meta: dict[str, Any], path: str) -> None:
    """A URL longer than FHIR_MAX_URL_BYTES is 414, headers larger than
    FHIR_MAX_HEADER_BYTES are 431, each as an OperationOutcome. The HTTP server in
    front (clinik/serve.py) accepts larger heads, so these limits are the ones a
    client meets, and their answer is ours, not the server's."""
    target = meta.get("RAW_URI") or meta.get("REQUEST_URI") or path
    query = meta.get("QUERY_STRING") or ""
    limit = int(settings.FHIR_MAX_URL_BYTES)
    if len(target) + len(query) > limit:
        raise Refused(
            414,
            "too-costly",
            f"The URL is longer than {limit} bytes. Send long searches as "
            "POST [type]/_search with the parameters in an "
            "application/x-www-form-urlencoded body.",
        )
    size = 0
    for name, value in meta.items():
        if name.startswith("HTTP_") and name not in _UNCOUNTED_HEADERS:
            size += len(name) + len(value)
    limit = int(settings.FHIR_MAX_HEADER_BYTES)
    if size > limit:
        raise Refused(
            431, "too-costly", f"The request headers are larger than {limit} bytes in all."
        )


# --- 2. body size ------------------------------------------------------------------

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def body_limit(method: str, path: str) -> int:
    """Bundles (POST to the base) may be larger than single resources."""
    if method == "POST" and path in (BASE, BASE + "/"):
        return int(settings.FHIR_MAX_BUNDLE_BYTES)
    return int(settings.FHIR_MAX_BODY_BYTES)


def check_body(method: str, path: str, meta: dict[str, Any]) -> int:
    """The declared body length, checked against the limit before anything is read.

    Django wraps wsgi.input, before any middleware runs, in a LimitedStream that
    never reads past Content-Length (a body longer than it declares is read only up
    to it), and treats a body without Content-Length as empty. So a Content-Length
    over the limit is refused unread (413), and a chunked or length-less body is
    refused (411) instead of being processed as empty."""
    if meta.get("HTTP_TRANSFER_ENCODING"):
        raise Refused(
            411,
            "invalid",
            "Chunked request bodies are not accepted: send the body with a Content-Length.",
        )
    raw = meta.get("CONTENT_LENGTH")
    if raw in (None, ""):
        if method in _BODY_METHODS:
            raise Refused(411, "invalid", f"A {method} request needs a Content-Length header.")
        return 0
    if not str(raw).isdigit() or len(str(raw)) > 18:
        raise Refused(400, "invalid", "The Content-Length header is not a number.")
    length = int(raw)
    limit = body_limit(method, path)
    if length > limit:
        raise Refused(
            413, "too-costly", f"The request body is larger than the limit of {limit} bytes."
        )
    return length


# --- 3. path guard -----------------------------------------------------------------

_PATH_CHARS = re.compile(r"[A-Za-z0-9/$._*-]*")
_ENCODED_DOLLAR = re.compile(r"%24", re.IGNORECASE)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_OPERATION = re.compile(r"\$[A-Za-z][A-Za-z0-9-]{0,63}")
_MAX_PATH = 256


@dataclass(frozen=True, slots=True)
class Route:
    template: str
    """`/fhir/R4/Patient/{id}`: the shape with the real type, never an id."""
    resource_type: str
    kind: str
    """base, metadata, history, operation, type, search, instance, vread, compartment."""

    @property
    def is_public(self) -> bool:
        return self.kind == "metadata"


def _bad_path(diagnostics: str) -> Refused:
    return Refused(400, "invalid", diagnostics)


def _not_found() -> Refused:
    return Refused(404, "not-found", "There is no FHIR R4 endpoint at this path.")


def api_path(meta: dict[str, Any], path: str) -> str:
    """The path as the client sent it, checked against the one Django routes on.

    Django and the WSGI server decode PATH_INFO, so `..%2f` or `%252e` may look
    harmless there. Under gunicorn (RAW_URI) or uWSGI/mod_wsgi (REQUEST_URI) the raw
    request target is available: the only escape allowed in it is `%24` (`$`, for
    operations); anything else encoded makes the raw and routed paths differ and is
    refused. Without a raw target (the test client, runserver) the routed path is
    checked as it is, and any `%` left in it (double encoding) is refused by the
    character check. granian (clinik/serve.py, production) passes no raw target, so
    there the routed path is what is checked (tests/test_gateway_live.py sends the
    traversal payloads to it)."""
    raw = meta.get("RAW_URI") or meta.get("REQUEST_URI")
    if not raw:
        return path
    raw = str(raw).split("?", 1)[0].split("#", 1)[0]
    if not raw.startswith("/"):
        scheme, sep, rest = raw.partition("://")  # absolute-form: http://host/path
        if not sep or scheme.lower() not in ("http", "https") or "/" not in rest:
            raise _bad_path("The request target is not a path.")
        raw = rest[rest.index("/") :]
    if _ENCODED_DOLLAR.sub("$", raw) != path:
        raise _bad_path("Percent-encoded characters are not allowed in the request path.")
    return path


def guard_path(path: str) -> Route:
    """Accept only the FHIR R4 REST shapes, with known resource types and valid ids."""
    if len(path) > _MAX_PATH:
        raise _bad_path("The request path is too long.")
    if not _PATH_CHARS.fullmatch(path):
        raise _bad_path("The request path contains characters that are not allowed.")
    if path in (BASE, BASE + "/"):
        return Route(BASE + "/", "", "base")
    if not path.startswith(BASE + "/"):
        raise _not_found()
    segments = path[len(BASE) + 1 :].split("/")
    for segment in segments:
        if not segment:
            raise _bad_path("The request path has an empty segment.")
        if segment.strip(".") == "":
            raise _bad_path("Relative path segments are not allowed.")
    first, rest = segments[0], segments[1:]
    if not rest:
        if first == "metadata":
            return Route(f"{BASE}/metadata", "", "metadata")
        if first == "_history":
            return Route(f"{BASE}/_history", "", "history")
        if first == "_search":
            return Route(f"{BASE}/_search", "", "search")
        if first.startswith("$"):
            return Route(f"{BASE}/{_operation(first)}", "", "operation")
    if first not in RESOURCE_TYPES:
        raise _not_found()
    base = f"{BASE}/{first}"
    if not rest:
        return Route(base, first, "type")
    second = rest[0]
    if len(rest) == 1:
        if second == "_search":
            return Route(f"{base}/_search", first, "search")
        if second == "_history":
            return Route(f"{base}/_history", first, "history")
        if second.startswith("$"):
            return Route(f"{base}/{_operation(second)}", first, "operation")
    _check_id(second)
    if len(rest) == 1:
        return Route(f"{base}/{{id}}", first, "instance")
    third = rest[1]
    if len(rest) == 2 and third == "_history":
        return Route(f"{base}/{{id}}/_history", first, "history")
    if len(rest) == 2 and third.startswith("$"):
        return Route(f"{base}/{{id}}/{_operation(third)}", first, "operation")
    if len(rest) == 2 and (third in RESOURCE_TYPES or third == "*"):
        # Compartment search; the type is the compartment's, as the id is its focal one.
        return Route(f"{base}/{{id}}/{third}", first, "compartment")
    # A compartment search by POST (form body): a search, as POST [type]/_search.
    if len(rest) == 2 and third == "_search":
        return Route(f"{base}/{{id}}/_search", first, "search")
    if len(rest) == 3 and third in RESOURCE_TYPES and rest[2] == "_search":
        return Route(f"{base}/{{id}}/{third}/_search", first, "search")
    if len(rest) == 3 and third == "_history":
        _check_id(rest[2])
        return Route(f"{base}/{{id}}/_history/{{vid}}", first, "vread")
    raise _not_found()


def _check_id(value: str) -> None:
    if not _ID.fullmatch(value):
        raise _bad_path("A resource id must be 1-64 letters, digits, '-' or '.'.")


def _operation(segment: str) -> str:
    if not _OPERATION.fullmatch(segment):
        raise _bad_path("An operation name must be a letter followed by letters, digits or '-'.")
    return segment


# --- 4. authentication ---------------------------------------------------------------

_KEY_PARAMETERS = frozenset({"api_key", "apikey", "access_token", "key"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# Headers whose values reach the database: stored (the audit trail keeps the
# User-Agent) or looked up (Origin, among the key's allowed origins).
_STORED_HEADERS = (("HTTP_USER_AGENT", "User-Agent"), ("HTTP_ORIGIN", "Origin"))


def check_host(request: HttpRequest) -> None:
    """A Host outside ALLOWED_HOSTS is the client's mistake: 400 with an OperationOutcome
    here, before a view builds an absolute URL (Django's DisallowedHost would surface
    from inside the view as a 500)."""
    try:
        request.get_host()
    except DisallowedHost:
        raise Refused(
            400, "invalid", "The Host header names a host this API does not serve."
        ) from None


def check_text(meta: dict[str, Any]) -> None:
    """Every parameter of the query string and every header we keep: no NUL, valid
    UTF-8 (clinik.lib.text), or 400 naming it. X-Request-ID is checked by its pattern
    (`request_id`)."""
    for key, header in _STORED_HEADERS:
        value = meta.get(key)
        # WSGI headers are ISO-8859-1 strings of the bytes sent: decode them as UTF-8.
        if value and (
            problem := unsafe(str(value).encode("latin-1", "replace").decode("utf-8", "replace"))
        ):
            raise Refused(400, "invalid", f"The {header} header {problem}.")
    query_string = str(meta.get("QUERY_STRING", ""))
    if not query_string:
        return
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if problem := unsafe(name) or unsafe(value):
            raise Refused(400, "invalid", f"The parameter {plain_name(name)} {problem}.")


def check_query_string(query_string: str) -> None:
    """Keys in URLs end up in logs, browser history and proxies: refuse them."""
    if not query_string:
        return
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if name.lower() in _KEY_PARAMETERS or tokens.looks_like_key(value):
            raise Refused(
                400,
                "security",
                "Send API keys in the Authorization header, never in the URL. "
                "Consider the key exposed and replace it.",
            )


def unauthorized() -> Refused:
    """The one answer for every way a key can be wrong, for a view that finds its key
    no longer usable (revoked since this process looked it up)."""
    return _unauthorized()


def _unauthorized(error: bool = True) -> Refused:
    header = f'{REALM}, error="invalid_token"' if error else REALM
    return Refused(401, "login", UNAUTHORIZED, {"WWW-Authenticate": header})


def presented_digest(meta: dict[str, Any]) -> str | None:
    """The SHA-256 of a well-formed bearer key, without I/O; None for anything else."""
    scheme, _, token = str(meta.get("HTTP_AUTHORIZATION", "")).partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not tokens.is_well_formed(token):
        return None
    return tokens.digest(token)


def bearer_token(meta: dict[str, Any]) -> str:
    header = meta.get("HTTP_AUTHORIZATION")
    if not header:
        raise _unauthorized(error=False)
    scheme, _, token = str(header).partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized()
    return token


def authenticate(meta: dict[str, Any]) -> ApiKey:
    """The usable key of an open organization, or 401 with one body for every way a
    key can be wrong (missing, malformed, unknown, expired, revoked, closed org)."""
    key = ApiKey.objects.authenticate(bearer_token(meta))
    if key is None or key.org.status == Organization.Status.CLOSED:
        raise _unauthorized()
    return key


_EXPORT_OPERATIONS = frozenset({"$export", "$export-poll-status"})


def authorize(key: ApiKey, method: str, route: Route) -> None:
    """Writes need a read-write key of an active organization. POST _search reads, and
    so does a bulk export: any key may start (POST), poll and cancel (DELETE) one."""
    if method in SAFE_METHODS or (method == "POST" and route.kind == "search"):
        return
    if route.kind == "operation" and route.template.rsplit("/", 1)[-1] in _EXPORT_OPERATIONS:
        return
    if not key.can_write:
        raise Refused(403, "forbidden", "This API key is read-only.")
    if key.org.status != Organization.Status.ACTIVE:
        raise Refused(
            403, "forbidden", "This organization is closing: its data can be read, not changed."
        )


def check_quota(verdict: Verdict, buckets: list[Any]) -> None:
    """A plan's quota for the billing period used up: 429 saying so, when it resets
    (the period's end, clinik.billing.periods), and where to upgrade. Checked before
    the request reaches any view, so a write is never cut."""
    if verdict.allowed:
        return
    for state in verdict.states:
        if state.policy.kind == "q" and state.retry_after > 0:
            org_id = next(ident for policy, ident in buckets if policy.name == "quota")
            terms = limits.limits_for(org_id)  # (a refusal only: the period's exact end)
            resets = datetime.fromtimestamp(terms.period_end, UTC) if terms.period_end else None
            if resets is None or resets <= datetime.now(UTC):
                resets = datetime.now(UTC) + timedelta(seconds=state.retry_after)
            plan = f"{terms.plan.capitalize()} plan" if terms.plan else "organization's plan"
            raise Refused(
                429,
                "throttled",
                f"The monthly quota of {state.policy.limit} API requests of this"
                f" organization's {plan} is used up for the billing period. It resets at"
                f" {resets:%Y-%m-%dT%H:%M:%SZ}. Upgrade the plan to continue now:"
                f" {limits.upgrade_url(org_id)}",
                {"Retry-After": str(max(1, state.retry_after))},
            )


_RATE_OF = {"key": "this API key", "org": "this organization (all its keys)"}


def check_rate(verdict: Verdict, buckets: Sequence[Any] = ()) -> None:
    """Too many requests for a bucket: 429 naming the limit that was hit; for a key's
    or its organization's (the plan's), also where to upgrade."""
    if verdict.allowed:
        return
    diagnostics = "Too many requests: slow down and retry after the time in Retry-After."
    hit = [s for s in verdict.states if s.retry_after > 0 and s.policy.name in _RATE_OF]
    org_id = next((ident for policy, ident in buckets if policy.name == "org"), None)
    if hit and org_id is not None:
        policy = hit[0].policy
        diagnostics = (
            f"Too many requests: the plan allows {policy.limit} requests per"
            f" {policy.window} s for {_RATE_OF[policy.name]}. Slow down and retry after"
            f" the time in Retry-After, or upgrade the plan: {limits.upgrade_url(org_id)}"
        )
    raise Refused(429, "throttled", diagnostics, {"Retry-After": str(max(1, verdict.retry_after))})


def client_id(request: HttpRequest) -> str:
    """The rate-limit identity of the caller's address (IPv6: its /64)."""
    ip = client_ip(request)
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False).network_address)
    except ValueError:
        return ip
