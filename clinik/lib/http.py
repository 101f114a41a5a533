"""Typed requests, so views say what the middleware gives them."""

from typing import TYPE_CHECKING, Any

from django.http import HttpRequest

if TYPE_CHECKING:
    from django_htmx.middleware import HtmxDetails

    from clinik.accounts.models import User


class AuthedHttpRequest(HttpRequest):
    """A dashboard request from a signed-in user (after @login_required)."""

    user: "User"
    htmx: "HtmxDetails"


class ApiHttpRequest(HttpRequest):
    """An API request after the gateway: authenticated key and its organization."""

    request_id: str
    api_key: Any
    org: Any


def client_ip(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR", ""))
