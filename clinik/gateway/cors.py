"""CORS for browser apps. Each organization lists the origins allowed to call the API
with its keys. A preflight carries no key, so it is allowed when some active
organization allows the origin (and without one, a browser sends no Authorization
header at all); the actual response carries Access-Control-Allow-Origin only when
the key's own organization allows it, so a browser never hands one organization's
responses to another's origin. No cookies are used, so credentials never are."""

import re
from typing import Any

from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.utils.cache import patch_vary_headers

from clinik.accounts.models import Organization
from clinik.gateway.models import AllowedOrigin

ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
EXPOSE_HEADERS = (
    "ETag, Location, Content-Location, Last-Modified, X-Request-ID, "
    "RateLimit, RateLimit-Policy, Retry-After"
)
MAX_AGE = "600"
_HEADER_NAMES = re.compile(r"[A-Za-z0-9-]+(?:\s*,\s*[A-Za-z0-9-]+)*")
_METHODS = frozenset(ALLOW_METHODS.replace(" ", "").split(","))


def is_preflight(method: str, meta: dict[str, Any]) -> bool:
    return (
        method == "OPTIONS"
        and "HTTP_ORIGIN" in meta
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in meta
    )


def allowed_by_any_org(origin: str) -> bool:
    return AllowedOrigin.objects.filter(
        origin=origin.lower(), org__status=Organization.Status.ACTIVE
    ).exists()


def preflight(meta: dict[str, Any], public: bool) -> HttpResponse:
    """204 to every preflight; with the Allow headers only for an allowed origin."""
    response = HttpResponse(status=204)
    patch_vary_headers(
        response, ["Origin", "Access-Control-Request-Method", "Access-Control-Request-Headers"]
    )
    origin = str(meta["HTTP_ORIGIN"])
    method = str(meta["HTTP_ACCESS_CONTROL_REQUEST_METHOD"]).upper()
    if method not in _METHODS or not (public or allowed_by_any_org(origin)):
        return response
    response["Access-Control-Allow-Origin"] = "*" if public else origin
    response["Access-Control-Allow-Methods"] = ALLOW_METHODS
    requested = str(meta.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")).strip()
    if requested and _HEADER_NAMES.fullmatch(requested):
        response["Access-Control-Allow-Headers"] = requested.lower()
    response["Access-Control-Max-Age"] = MAX_AGE
    return response


def decorate(
    response: HttpResponseBase, origin: str | None, org: Organization | None, public: bool
) -> None:
    """Add Access-Control-Allow-Origin to an actual response when allowed.

    Responses that belong to no organization (metadata, and refusals before a key
    is known: 400, 401, 413, 429) hold nothing specific to anyone, so any origin may
    read them, and deciding that costs no query on a path a flood can reach."""
    if origin is None:
        return
    patch_vary_headers(response, ["Origin"])
    if org is None or public:
        allowed = "*"
    elif AllowedOrigin.objects.filter(org=org).allows(origin):
        allowed = origin
    else:
        return
    response["Access-Control-Allow-Origin"] = allowed
    response["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
