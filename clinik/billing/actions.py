"""Billing actions: one transaction each, audit record inside, side effects (cache
invalidation, emails) after commit."""

from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse

from clinik import audit
from clinik.accounts.models import Membership, Organization, User
from clinik.billing import stripe_api
from clinik.billing.models import Account, Plan, announce_limits_changed
from clinik.billing.plans import FREE, default_plan
from clinik.privacy import analytics


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
        _plan_changed(org, old, plan)
    return account


def direction(old: Plan, new: Plan) -> str:
    """upgrade, downgrade, or cancel (a paid subscription ended: back to Free). Plans
    rank by their order on the Billing page (tiers, Free first; Enterprise's custom
    price is 0), then by price."""
    if old.is_paid and new.slug == FREE:
        return "cancel"
    rank = (new.sort_order, new.monthly_price_cents) > (old.sort_order, old.monthly_price_cents)
    return "upgrade" if rank else "downgrade"


def _billing_user(org: Organization) -> User | None:
    """Whom a plan change is attributed to in product analytics: the member who last
    started a checkout or opened the billing portal, else the first owner. (A plan
    changes through Stripe's webhooks or staff, never in a member's own request.)"""
    from clinik.audit.models import AuditEvent

    last = (
        AuditEvent.objects.filter(
            org_id=org.pk, action__in=("billing.checkout", "billing.portal"), actor_type="user"
        )
        .order_by("-time", "-id")
        .values_list("actor_id", flat=True)
        .first()
    )
    members = Membership.objects.filter(org=org, user__is_active=True).select_related("user")
    found = members.filter(user_id=last).first() if last else None
    if found is None:
        found = members.filter(role=Membership.Role.OWNER).order_by("created_at", "id").first()
    return found.user if found is not None else None


def _plan_changed(org: Organization, old: Plan, new: Plan) -> None:
    """The `plan_changed` analytics event, after commit: the direction and the new
    plan's slug when it is one of the catalogue's (no org id, no name)."""
    if not analytics.enabled():
        return
    user = _billing_user(org)
    if user is not None:
        analytics.capture(user, "plan_changed", direction=direction(old, new), plan=new.slug)


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
