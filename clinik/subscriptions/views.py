"""The dashboard's Webhooks page (owners and admins): subscriptions with their status,
recent deliveries (time, status code, latency, attempt: never a payload or a resource
id), a test ping, the signing secret shown once, its rotation, and replay.

Each action answers an htmx request with the part of the page it changed (a partial
of the same template) and a plain form post with the page or a redirect."""

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.views.decorators.http import require_POST, require_safe

from clinik.accounts.access import dashboard_context, get_managing_membership
from clinik.accounts.models import Membership
from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.http import AuthedHttpRequest
from clinik.subscriptions.actions import do_ping, do_replay, do_reveal_secret, do_rotate_secret
from clinik.subscriptions.models import Delivery, Subscription
from clinik.subscriptions.sealing import SecretUnavailable

RECENT = 50
PING_SENT = "A test ping is on its way; its delivery appears below."
REPLAYED = "The delivery is sent again."


def _page(
    request: AuthedHttpRequest, membership: Membership, part: str = "", **extra: Any
) -> HttpResponse:
    """The page, or one of its partials (`subscriptions`, `deliveries`)."""
    org = membership.org
    with tenant_transaction(org.pk):
        recent = list(Delivery.objects.filter(org=org).order_by("-pk")[:RECENT])
    ctx = dashboard_context(
        request,
        membership,
        "webhooks",
        subscriptions=Subscription.objects.filter(org=org).order_by("-created_at"),
        deliveries=recent,
        **extra,
    )
    template = f"subscriptions/page.html#{part}" if part else "subscriptions/page.html"
    response = render(request, template, ctx)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _subscription(membership: Membership, subscription_id: int) -> Subscription:
    return get_object_or_404(Subscription, org=membership.org, pk=subscription_id)


def _with_secret(
    request: AuthedHttpRequest, membership: Membership, secret: str, subscription: Subscription
) -> HttpResponse:
    part = "subscriptions" if request.htmx else ""
    response = _page(request, membership, part, secret=secret, secret_for=subscription)
    add_never_cache_headers(response)
    return response


@login_required
@require_safe
def webhooks(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    return _page(request, get_managing_membership(request, org_id))


@login_required
@require_safe
def webhooks_deliveries(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    """The recent deliveries alone (htmx refresh); the page for a plain request."""
    membership = get_managing_membership(request, org_id)
    return _page(request, membership, "deliveries" if request.htmx else "")


@login_required
@require_POST
def webhooks_ping(request: AuthedHttpRequest, org_id: UUID, subscription_id: int) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    subscription = _subscription(membership, subscription_id)
    do_ping(org=membership.org, subscription=subscription, actor=request.user, request=request)
    if request.htmx:
        return _page(request, membership, "deliveries", delivery_notice=PING_SENT)
    messages.success(request, PING_SENT)
    return redirect("webhooks", org_id)


@login_required
@require_POST
def webhooks_secret(request: AuthedHttpRequest, org_id: UUID, subscription_id: int) -> HttpResponse:
    """Show the secret generated with the subscription, once; afterwards only a
    rotation shows a (new) secret."""
    membership = get_managing_membership(request, org_id)
    subscription = _subscription(membership, subscription_id)
    try:
        secret = do_reveal_secret(
            org=membership.org, subscription=subscription, actor=request.user, request=request
        )
        shown = "That secret was shown already: rotate it to get a new one."
    except SecretUnavailable:
        secret = None
        shown = "That secret cannot be read with the server's keys: rotate it to get a new one."
    if secret is None:
        if request.htmx:
            return _page(request, membership, "subscriptions", notice=shown)
        messages.error(request, shown)
        return redirect("webhooks", org_id)
    return _with_secret(request, membership, secret, subscription)


@login_required
@require_POST
def webhooks_rotate(request: AuthedHttpRequest, org_id: UUID, subscription_id: int) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    subscription = _subscription(membership, subscription_id)
    secret = do_rotate_secret(
        org=membership.org, subscription=subscription, actor=request.user, request=request
    )
    return _with_secret(request, membership, secret, subscription)


@login_required
@require_POST
def webhooks_replay(request: AuthedHttpRequest, org_id: UUID, delivery_id: int) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    with tenant_transaction(membership.org.pk):
        delivery = get_object_or_404(
            Delivery, org=membership.org, pk=delivery_id, status=Delivery.Status.FAILED
        )
    do_replay(org=membership.org, delivery=delivery, actor=request.user, request=request)
    if request.htmx:
        return _page(request, membership, "deliveries", delivery_notice=REPLAYED)
    messages.success(request, REPLAYED)
    return redirect("webhooks", org_id)
