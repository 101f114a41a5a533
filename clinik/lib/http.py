"""Typed requests, so views say what the middleware gives them."""

import ipaddress
from typing import TYPE_CHECKING

from django.conf import settings
from django.http import HttpRequest

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    from clinik.accounts.models import Organization, User
    from clinik.keys.models import ApiKey


class AuthedHttpRequest(HttpRequest):
    """A dashboard request from a signed-in user (after @login_required)."""

    user: "User"
    htmx: "HtmxDetails"


class ApiHttpRequest(HttpRequest):
    """An API request after the gateway (clinik.gateway.middleware).

    `request_id` and the route are set on every request under /fhir/; `api_key` and
    `org` only once the key has authenticated, which is before every view except the
    public `metadata`."""

    request_id: str
    fhir_route: str
    """`/fhir/R4/Patient/{id}`: the shape with the real type, never an id."""
    fhir_resource_type: str
    """`Patient`, or "" for paths without a type (base, metadata, system history)."""
    api_key: "ApiKey"
    org: "Organization"
    key_digest: str | None
    """SHA-256 of the presented key (None for public paths)."""
    key_recheck: bool
    """The key was not looked up for this request: the view's first tenant statement
    checks it (`clinik.keys.recheck`), and 401 answers when it no longer holds."""


def client_ip(request: HttpRequest) -> str:
    """The caller's address, for rate limits and throttling.

    Behind TRUSTED_PROXY_COUNT proxies (load balancers), each of which appends the
    address it received the request from to X-Forwarded-For, the caller is the
    right-most address our proxies did not add: the N-th from the right. Entries left
    of it are whatever the client sent, so they are never used. A header with fewer
    entries than that, or one that is not an address, did not come through our
    proxies: REMOTE_ADDR is used, as it is when the count is 0 (the default)."""
    remote = str(request.META.get("REMOTE_ADDR", ""))
    trusted = settings.TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return remote
    forwarded = str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",")
    if len(forwarded) < trusted:
        return remote
    return _address(forwarded[-trusted]) or remote


def _address(value: str) -> str | None:
    """An IP address as a proxy may write it (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:80`,
    `::1`), normalized; None if it is not one."""
    value = value.strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
