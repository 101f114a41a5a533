"""Billing actions: one transaction each, audit record inside, side effects (cache
invalidation, emails) after commit."""

from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse

from clinik import audit
from clinik.accounts.models import Organization, User
from clinik.billing import stripe_api
from clinik.billing.models import Account, Plan, announce_limits_changed
from clinik.billing.plans import default_plan


class PlanLimitReached(Exception):
    """Creating one more key, member or export would exceed the plan."""


def locked_account(org: Organization) -> Account:
    """The organization's billing account, created on the default plan, locked."""
    account = Account.objects.select_for_update().filter(org=org).first()
    if account is None:
        Account.objects.get_or_create(org=org, defaults={"plan": default_plan()})
        account = Account.objects.select_for_update().get(org=org)
    return account


@transaction.atomic
def do_assign_plan(
    *, org: Organization, plan: Plan, actor: Any, request: HttpRequest | None = None
) -> Account:
    """Put the organization on a plan (create_org --plan, staff, Stripe's state)."""
    account = locked_account(org)
    old = account.plan
    if old.pk != plan.pk:
        account.plan = plan
        account.save(update_fields=["plan", "updated_at"])
        audit.record(
            "billing.plan_change",
            org=org,
            actor=actor,
            target=("plan", f"{old.slug}->{plan.slug}"),
            request=request,
        )
        announce_limits_changed(org.pk)
    return account


def _customer(account: Account) -> str:
    """The organization's Stripe customer, created on first need (one per org: the
    account row is locked, and the idempotency key makes a retry return the same)."""
    if account.stripe_customer_id:
        return account.stripe_customer_id
    customer = stripe_api.client().v1.customers.create(
        params={"metadata": {"org_id": str(account.org_id)}},
        options={"idempotency_key": f"clinik-customer-{account.org_id}"},
    )
    account.stripe_customer_id = customer.id
    account.save(update_fields=["stripe_customer_id", "updated_at"])
    return str(customer.id)


def _billing_url(org: Organization) -> str:
    return settings.SITE_URL + reverse("billing", args=[org.pk])


@transaction.atomic
def do_start_checkout(
    *, org: Organization, plan: Plan, actor: User, request: HttpRequest | None
) -> str:
    """A Stripe Checkout session (subscription mode) for the plan; returns its URL.
    Cards are entered on Stripe's page only. A closing organization cannot subscribe."""
    org.lock_writable()
    account = locked_account(org)
    customer = _customer(account)
    items: list[dict[str, Any]] = [{"price": plan.stripe_price_id, "quantity": 1}]
    if plan.stripe_overage_price_id:
        items.append({"price": plan.stripe_overage_price_id})
    back = _billing_url(org)
    params: Any = {
        "mode": "subscription",
        "customer": customer,
        "client_reference_id": str(org.pk),
        "line_items": items,
        "success_url": f"{back}?checkout=done",
        "cancel_url": back,
        "metadata": {"org_id": str(org.pk), "plan": plan.slug},
        "subscription_data": {"metadata": {"org_id": str(org.pk), "plan": plan.slug}},
    }
    session = stripe_api.client().v1.checkout.sessions.create(params=params)
    audit.record(
        "billing.checkout", org=org, actor=actor, target=("plan", plan.slug), request=request
    )
    return str(session.url)


@transaction.atomic
def do_open_portal(*, org: Organization, actor: User, request: HttpRequest | None = None) -> str:
    """A Stripe Customer Portal session: cards, invoices, plan changes, cancellation."""
    account = locked_account(org)
    session = stripe_api.client().v1.billing_portal.sessions.create(
        params={"customer": _customer(account), "return_url": _billing_url(org)}
    )
    audit.record(
        "billing.portal", org=org, actor=actor, target=("customer", "portal"), request=request
    )
    return str(session.url)
