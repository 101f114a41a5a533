"""The dashboard's API keys page: list, create (the plaintext is in that one response
only), revoke, and the browser origins (CORS) allowed to use the keys."""

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.views.decorators.http import require_POST, require_safe

from clinik.accounts.access import (
    dashboard_context,
    get_managing_membership,
    get_membership,
)
from clinik.accounts.models import Membership
from clinik.gateway.actions import do_allow_origin, do_remove_origin
from clinik.gateway.forms import OriginForm
from clinik.gateway.limits import PlanLimitReached
from clinik.keys.actions import do_create_key, do_revoke_key
from clinik.keys.forms import KeyForm
from clinik.lib.http import AuthedHttpRequest
from clinik.privacy import analytics


def _page(
    request: AuthedHttpRequest, membership: Membership, *, status: int = 200, **extra: Any
) -> HttpResponse:
    org = membership.org
    ctx = dashboard_context(
        request,
        membership,
        "keys",
        keys=org.api_keys.select_related("created_by"),
        origins=org.allowed_origins.all(),
        form=extra.pop("form", None) or KeyForm(),
        origin_form=extra.pop("origin_form", None) or OriginForm(org=org),
        **extra,
    )
    response = render(request, "keys/list.html", ctx, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_safe
def keys(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    return _page(request, get_membership(request, org_id))


@login_required
@require_POST
def keys_create(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    form = KeyForm(request.POST)
    if not form.is_valid():
        return _page(request, membership, form=form, status=400)
    try:
        key, plaintext = do_create_key(
            org=membership.org,
            actor=request.user,
            name=form.cleaned_data["name"],
            scopes=form.cleaned_data["scopes"],
            expires_at=form.expires_at(),
            request=request,
        )
    except PlanLimitReached as full:
        form.add_error(None, str(full))
        return _page(request, membership, form=form, status=400)
    analytics.capture(
        request.user, "key_created", scopes=key.scopes, expires=key.expires_at is not None
    )
    # The only response that ever holds the plaintext: rendered here, not stored for a
    # redirect (a session or message would put it in the database), never cached.
    response = _page(request, membership, created=key, plaintext=plaintext)
    add_never_cache_headers(response)
    return response


@login_required
@require_POST
def keys_revoke(request: AuthedHttpRequest, org_id: UUID, key_id: int) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    key = get_object_or_404(membership.org.api_keys, pk=key_id)
    if do_revoke_key(key=key, actor=request.user, request=request):
        analytics.capture(request.user, "key_revoked")
    if request.htmx:
        ctx = {"key": key, "org": membership.org, "membership": membership}
        response = render(request, "keys/list.html#row", ctx)
    else:
        messages.success(request, f"The key “{key.name}” is revoked.")
        response = redirect("keys", org_id)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_POST
def keys_origin_add(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    form = OriginForm(request.POST, org=membership.org)
    if not form.is_valid():
        return _page(request, membership, origin_form=form, status=400)
    origin = form.cleaned_data["origin"]
    do_allow_origin(org=membership.org, origin=origin, actor=request.user, request=request)
    messages.success(request, f"{origin} may now call the API from a browser.")
    return redirect("keys", org_id)


@login_required
@require_POST
def keys_origin_remove(request: AuthedHttpRequest, org_id: UUID, origin_id: int) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    allowed = get_object_or_404(membership.org.allowed_origins, pk=origin_id)
    do_remove_origin(allowed=allowed, actor=request.user, request=request)
    messages.success(request, f"{allowed.origin} is no longer allowed.")
    return redirect("keys", org_id)
