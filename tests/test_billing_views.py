"""The Billing page and its actions; plan limits on keys and members as form errors."""

import pytest

from clinik.accounts.models import Membership
from clinik.audit.models import AuditEvent
from clinik.billing.actions import do_assign_plan
from clinik.billing.models import Account, Plan
from tests.factories import MembershipFactory, UserFactory
from tests.stripe_fake import paid_plans, stripe_fake

__all__ = ["paid_plans", "stripe_fake"]


def _url(org, tail: str = "") -> str:
    return f"/o/{org.pk}/billing/{tail}"


def test_without_stripe_the_page_says_billing_is_off(owner, settings) -> None:
    settings.BILLING_ENABLED = False
    response = owner.client().get(_url(owner.org))
    assert response.status_code == 200
    assert b"Billing is off on this installation" in response.content
    assert b"Upgrade" not in response.content
    refused = owner.client().post(_url(owner.org, "checkout/"), {"plan": "developer"})
    assert refused.status_code == 400
    assert b"Billing is off" in refused.content
    assert owner.client().post(_url(owner.org, "portal/")).status_code == 400


def test_the_page_shows_plan_usage_projection_and_upgrades(owner, stripe_fake) -> None:
    response = owner.client().get(_url(owner.org))
    assert response.status_code == 200
    body = response.content.decode()
    assert "Current plan: Free" in body
    assert "10000 requests per billing period included" in body
    assert "<progress" in body and 'id="chart-billing-title"' in body
    assert body.count(">Upgrade</button>") == 2  # Developer and Scale; Enterprise is staff's
    assert "Enterprise" not in body.split("<h2>Plans</h2>")[1].split("</table>")[0]
    assert "card number" not in body.lower() and 'name="card' not in body


def test_checkout_redirects_to_stripe_and_is_audited(owner, stripe_fake) -> None:
    response = owner.client().post(_url(owner.org, "checkout/"), {"plan": "scale"})
    assert response.status_code == 303
    assert response["Location"].startswith("https://checkout.stripe.test/")
    session = next(iter(stripe_fake.sessions.values()))
    assert session["mode"] == "subscription"
    assert [i["price"] for i in session["line_items"].values()] == [
        "price_scale",
        "price_scale_overage",
    ]
    assert AuditEvent.objects.filter(org_id=owner.org.pk, action="billing.checkout").exists()
    hx = owner.client().post(
        _url(owner.org, "checkout/"), {"plan": "scale"}, HTTP_HX_REQUEST="true"
    )
    assert hx.status_code == 204 and hx["HX-Redirect"].startswith("https://checkout.stripe.test/")
    assert len({r[2] for r in stripe_fake.requests if r[1] == "/v1/customers"}) == 1


@pytest.mark.parametrize("plan", ["free", "enterprise", "gold"])
def test_plans_that_cannot_be_bought_are_form_errors(owner, stripe_fake, plan: str) -> None:
    response = owner.client().post(_url(owner.org, "checkout/"), {"plan": plan})
    assert response.status_code == 400
    assert b'class="form-errors' in response.content or b"errorlist" in response.content
    assert not stripe_fake.sessions


def test_the_portal_opens_for_the_organizations_customer(owner, stripe_fake) -> None:
    response = owner.client().post(_url(owner.org, "portal/"))
    assert response.status_code == 303
    customer = Account.objects.get(org=owner.org).stripe_customer_id
    assert response["Location"] == f"https://billing.stripe.test/p/session/{customer}"


def test_owners_and_billing_members_only(owner, teammate, outsider, stripe_fake) -> None:
    assert teammate.client().get(_url(owner.org)).status_code == 403
    assert (
        teammate.client().post(_url(owner.org, "checkout/"), {"plan": "scale"}).status_code == 403
    )
    assert outsider.client().get(_url(owner.org)).status_code == 404
    assert outsider.client().post(_url(owner.org, "portal/")).status_code == 404
    Membership.objects.filter(pk=teammate.membership.pk).update(role="billing")
    assert teammate.client().get(_url(owner.org)).status_code == 200


@pytest.mark.parametrize("tail", ["checkout/", "portal/"])
def test_actions_refuse_get(owner, tail: str) -> None:
    assert owner.client().get(_url(owner.org, tail)).status_code == 405


def test_the_page_refuses_post(owner) -> None:
    assert owner.client().post(_url(owner.org)).status_code == 405


def test_the_plan_limits_keys_with_a_form_error(owner, paid_plans) -> None:
    Plan.objects.filter(slug="free").update(max_keys=1)
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="free"), actor=None)
    client = owner.client()
    form = {"name": "one", "scopes": "read-write", "expires": "never"}
    assert client.post(f"/o/{owner.org.pk}/keys/new/", form).status_code == 200
    refused = client.post(f"/o/{owner.org.pk}/keys/new/", {**form, "name": "two"})
    assert refused.status_code == 400
    assert "The Free plan allows 1 API keys" in refused.content.decode()
    assert owner.org.api_keys.count() == 1


def test_the_plan_limits_members_with_a_form_error(owner, paid_plans) -> None:
    Plan.objects.filter(slug="free").update(max_members=2)
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="free"), actor=None)
    MembershipFactory(user=UserFactory(email="second@acme.test"), org=owner.org)
    refused = owner.client().post(
        f"/o/{owner.org.pk}/team/invite/", {"email": "third@acme.test", "role": "developer"}
    )
    assert refused.status_code == 400
    assert "The Free plan allows 2 members" in refused.content.decode()
    assert not owner.org.invitations.exists()


def test_the_page_shows_everything_the_issue_lists(
    owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    from django.test import Client

    from tests.stripe_fake import deliver

    response = owner.client().post(_url(owner.org, "checkout/"), {"plan": "developer"})
    session_id = response["Location"].rsplit("/", 1)[1]
    sub_id = stripe_fake.complete_checkout(session_id)
    customer = stripe_fake.subscriptions[sub_id]["customer"]
    invoice_id = stripe_fake.add_invoice(customer, "paid", 2900)
    with django_capture_on_commit_callbacks(execute=True):
        for event in (
            stripe_fake.event("checkout.session.completed", stripe_fake.sessions[session_id]),
            stripe_fake.event("invoice.paid", stripe_fake.invoices[invoice_id]),
        ):
            assert deliver(Client(), event).status_code == 200
    stripe_fake.set_subscription(sub_id, status="past_due")
    with django_capture_on_commit_callbacks(execute=True):
        event = stripe_fake.event(
            "customer.subscription.updated", stripe_fake.subscriptions[sub_id]
        )
        assert deliver(Client(), event).status_code == 200
    body = owner.client().get(_url(owner.org)).content.decode()
    developer = Plan.objects.get(slug="developer")
    # current plan and its limits
    assert "Current plan: Developer" in body
    assert f"{developer.key_requests_per_minute} requests per minute per key" in body
    assert f"{developer.max_exports} concurrent exports" in body
    # usage this period against the included amount: progress bar, daily chart
    assert "Usage this billing period" in body and "the subscription's period at Stripe" in body
    assert "<progress" in body and 'id="chart-billing-title"' in body
    # projected cost at the period's end
    assert "Projected cost at the end of the period: $29.00" in body
    # upgrade / downgrade (with a subscription: through the portal)
    assert ">Upgrade</button>" in body and ">Downgrade</button>" in body
    # invoice history with the PDF link
    assert f'href="https://invoice.stripe.test/{invoice_id}/pdf"' in body
    assert "CLNK-0001" in body and "$29.00" in body
    # the past-due banner
    assert "The last payment failed" in body
