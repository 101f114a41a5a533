"""The Billing page (owners and billing members), Checkout and Portal redirects, and
the Stripe webhook endpoint."""

from datetime import UTC
from functools import partial
from typing import Any
from uuid import UUID

import stripe
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from clinik.accounts.access import dashboard_context, get_membership
from clinik.accounts.models import Membership, Organization, OrganizationReadOnly
from clinik.billing import stripe_api, webhooks
from clinik.billing.actions import do_open_portal, do_start_checkout
from clinik.billing.forms import PlanChoiceForm
from clinik.billing.models import Account, Invoice, Plan
from clinik.billing.periods import buckets, period_of
from clinik.billing.plans import effective_plan
from clinik.lib.http import AuthedHttpRequest
from clinik.lib.money import money
from clinik.privacy import analytics
from clinik.usage import charts, queries

BILLING_OFF = "Billing is off on this installation: there is nothing to buy or manage."


def get_billing_membership(request: AuthedHttpRequest, org_id: UUID) -> Membership:
    """Owners and billing members only (404 outside the organization, 403 inside)."""
    membership = get_membership(request, org_id)
    if not membership.can_bill:
        raise PermissionDenied
    return membership


def _usage(org_id: UUID, plan: Plan | None, account: Account | None) -> dict[str, Any]:
    """Usage in the billing period (clinik.billing.periods) against the included
    amount, a daily chart, and the cost projected to the period's end."""
    now = timezone.now()
    start, end = period_of(account, now)
    # Counted from the hourly rollups over the hours the meter claims attribute to the
    # period (a Stripe period starts at any second: the hour its start falls in is
    # wholly this period's, the one its end falls in the next's); the chart has one
    # bar per UTC day of the period.
    first_hour, end_hour = buckets((start, end))
    hours = queries.Range("period", "This period", first_hour, end_hour, "hour")
    used_summary = queries.summary(org_id, hours)
    used = used_summary.total - used_summary.throttled
    first_day = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = queries.Range("period", "This period", first_day, end, "day")
    daily = queries.summary(org_id, days)
    included = plan.included_requests if plan else None
    elapsed = max((now - start).total_seconds(), 3600.0)
    projected_requests = int(used * (end - start).total_seconds() / elapsed)
    projected = None
    if plan is not None:
        projected = plan.monthly_price_cents + plan.overage_cents(projected_requests)
    return {
        "used": used,
        "included": included,
        "percent": min(100, round(used * 100 / included)) if included else None,
        "chart": charts.requests_chart(daily.buckets, days),
        "starts": start,
        "resets": end,
        "overage": plan.overage_cents(used) if plan is not None else 0,
        "overage_display": money(plan.overage_cents(used), plan.currency) if plan else "",
        "projected_requests": projected_requests,
        "projected": money(projected, plan.currency) if plan and projected is not None else None,
    }


def _page(
    request: AuthedHttpRequest, membership: Membership, *, status: int = 200, **extra: Any
) -> HttpResponse:
    org = membership.org
    account = Account.objects.select_related("plan").filter(org=org).first()
    plan, _ = effective_plan(org.pk)
    ctx = dashboard_context(
        request,
        membership,
        "billing",
        billing_enabled=settings.BILLING_ENABLED,
        account=account,
        plan=plan,
        fallback=account is not None and account.in_fallback(),
        plans=Plan.objects.filter(is_public=True),
        invoices=Invoice.objects.filter(org_id=org.pk)[:24],
        usage=_usage(org.pk, plan, account),
        form=extra.pop("form", None) or PlanChoiceForm(),
        **extra,
    )
    response = render(request, "billing/page.html", ctx, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@require_safe
def billing(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_billing_membership(request, org_id)
    analytics.capture(request.user, "plan_viewed")
    return _page(request, membership)


@require_POST
def billing_checkout(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_billing_membership(request, org_id)
    if membership.org.status != Organization.Status.ACTIVE:
        raise OrganizationReadOnly  # before "billing is off": the answer a closing org gets
    if not settings.BILLING_ENABLED:
        return _page(request, membership, error=BILLING_OFF, status=400)
    form = PlanChoiceForm(request.POST)
    if not form.is_valid():
        return _page(request, membership, form=form, status=400)
    account = Account.objects.filter(org=membership.org).first()
    if account is not None and account.stripe_subscription_id:
        # An existing subscription changes plan in the portal (proration is Stripe's).
        url = do_open_portal(org=membership.org, actor=request.user, request=request)
    else:
        url = do_start_checkout(
            org=membership.org,
            plan=form.cleaned_data["plan"],
            actor=request.user,
            request=request,
        )
    return _redirect(request, url)


@require_POST
def billing_portal(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_billing_membership(request, org_id)
    if not settings.BILLING_ENABLED:
        return _page(request, membership, error=BILLING_OFF, status=400)
    url = do_open_portal(org=membership.org, actor=request.user, request=request)
    return _redirect(request, url)


def _redirect(request: AuthedHttpRequest, url: str) -> HttpResponse:
    if request.htmx:  # leave the page for Stripe's
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return HttpResponseRedirect(url, status=303)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verify, store once (one INSERT in autocommit), queue, answer: a Celery task does
    the work; a duplicate delivery is acknowledged and does nothing."""
    if not settings.BILLING_ENABLED:
        return HttpResponse("billing is off", status=404, content_type="text/plain")
    try:
        event = stripe_api.verify(request.body, request.headers.get("Stripe-Signature", ""))
        stored = webhooks.store(event)
    except (stripe.SignatureVerificationError, ValueError):
        return HttpResponse("invalid signature", status=400, content_type="text/plain")
    if stored is not None:
        from clinik.billing.tasks import enqueue_stripe_event

        # After the row is committed (at once here: the endpoint runs in autocommit).
        transaction.on_commit(partial(enqueue_stripe_event, stored))
    return HttpResponse("ok", content_type="text/plain")
