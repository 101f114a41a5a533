"""A plan change, through Stripe's webhooks or staff in the admin, is in the audit
trail and sends the `plan_changed` analytics event after commit (direction and the
seeded plan's slug only: no org id, no name, no email); billing events that change the
organization are audited."""

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings

from clinik.audit.models import AuditEvent
from clinik.billing.actions import do_assign_plan
from clinik.billing.models import Account, Plan
from clinik.gateway.ratelimit import known_keys, limiter
from clinik.privacy import analytics
from clinik.privacy.models import AnalyticsId
from tests.conftest import _api_for
from tests.factories import UserFactory
from tests.posthog_server import PostHogServer
from tests.stripe_fake import FakeStripe, deliver, paid_plans, stripe_fake

__all__ = ["paid_plans", "stripe_fake"]


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Any:
    limiter.reset()
    known_keys.clear()
    yield
    known_keys.clear()


@pytest.fixture
def posthog() -> Iterator[PostHogServer]:
    server = PostHogServer().start()
    with override_settings(POSTHOG_API_KEY="phc_test_project", POSTHOG_HOST=server.url):
        yield server
    server.stop()


def _plan_events(server: PostHogServer) -> list[dict[str, Any]]:
    analytics.flush()
    return [e for e in server.events() if e["event"] == "plan_changed"]


def _subscribe(owner: Any, fake: FakeStripe, capture: Any, plan: str = "developer") -> str:
    response = owner.client().post(f"/o/{owner.org.pk}/billing/checkout/", {"plan": plan})
    session_id = response["Location"].rsplit("/", 1)[1]
    sub_id = fake.complete_checkout(session_id)
    with capture(execute=True):
        event = fake.event("checkout.session.completed", fake.sessions[session_id])
        assert deliver(Client(), event).status_code == 200
    return sub_id


def _no_identity(server: PostHogServer, owner: Any) -> None:
    raw = server.raw()
    for marker in (str(owner.org.pk), owner.org.name, owner.user.email, "billing@acme.test"):
        assert marker not in raw, marker
    assert not re.search(r"cus_\d+|sub_\d+", raw)


def test_a_webhook_plan_change_sends_plan_changed_after_commit(
    posthog, owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    sub_id = _subscribe(owner, stripe_fake, django_capture_on_commit_callbacks)
    events = _plan_events(posthog)
    assert [e["properties"]["direction"] for e in events] == ["upgrade"]
    assert events[0]["properties"]["plan"] == "developer"
    # attributed to the member who went through Checkout (their analytics id)
    assert events[0]["distinct_id"] == str(AnalyticsId.objects.get(user=owner.user).distinct_id)
    assert AuditEvent.objects.filter(
        org_id=owner.org.pk, action="billing.plan_change", target_id="free->developer"
    ).exists()
    # the subscription ends at Stripe: back to Free, a "cancel"
    stripe_fake.set_subscription(sub_id, status="canceled")
    with django_capture_on_commit_callbacks(execute=True):
        event = stripe_fake.event(
            "customer.subscription.deleted", stripe_fake.subscriptions[sub_id]
        )
        assert deliver(Client(), event).status_code == 200
    assert Account.objects.get(org=owner.org).plan.slug == "free"
    directions = [e["properties"]["direction"] for e in _plan_events(posthog)]
    assert directions == ["upgrade", "cancel"]  # (everything the server received)
    assert AuditEvent.objects.filter(
        org_id=owner.org.pk, action="billing.status_change", target_id="canceled"
    ).exists()
    _no_identity(posthog, owner)


def test_nothing_is_sent_when_the_transaction_rolls_back(posthog, owner, paid_plans) -> None:
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="scale"), actor=None)
        raise RuntimeError
    analytics.flush()
    assert _plan_events(posthog) == []
    assert not AuditEvent.objects.filter(action="billing.plan_change").exists()


@pytest.fixture
def staff_client(client: Client) -> Client:
    staff = UserFactory(email="staff@clinikapi.test", is_staff=True, is_superuser=True)
    client.force_login(staff)  # type: ignore[arg-type]
    return client


def test_staff_set_an_organizations_plan_in_the_admin(
    posthog, owner, staff_client, paid_plans, django_capture_on_commit_callbacks
) -> None:
    api = _api_for(owner)
    enterprise = Plan.objects.get(slug="enterprise")
    before = api.get("Patient")["RateLimit-Policy"]  # billing off: the defaults, cached
    assert f'"key";q={enterprise.key_requests_per_minute};' not in before
    assert staff_client.get("/staff/billing/account/add/").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        added = staff_client.post(
            "/staff/billing/account/add/", {"org": str(owner.org.pk), "plan": enterprise.pk}
        )
    assert added.status_code == 302, added.content.decode()[:2000]
    account = Account.objects.get(org=owner.org)
    assert account.plan == enterprise
    staff = staff_client.session["_auth_user_id"]
    change = AuditEvent.objects.get(org_id=owner.org.pk, action="billing.plan_change")
    assert (change.actor_type, change.actor_id) == ("user", str(staff))
    assert change.target_id == "free->enterprise"
    events = _plan_events(posthog)
    assert [(e["properties"]["direction"], e["properties"]["plan"]) for e in events] == [
        ("upgrade", "enterprise")
    ]
    # the owner's id, not the staff member's: the event is about the organization
    assert events[0]["distinct_id"] == str(AnalyticsId.objects.get(user=owner.user).distinct_id)
    after = api.get("Patient")  # the next request has the new plan's limits
    assert f'"key";q={enterprise.key_requests_per_minute}' in after["RateLimit-Policy"]
    # then a change: only the plan is editable, the rest is Stripe's
    page = staff_client.get(f"/staff/billing/account/{account.pk}/change/").content.decode()
    assert 'name="plan"' in page and 'name="stripe_customer_id"' not in page
    scale = Plan.objects.get(slug="scale")
    with django_capture_on_commit_callbacks(execute=True):
        changed = staff_client.post(
            f"/staff/billing/account/{account.pk}/change/", {"plan": scale.pk}
        )
    assert changed.status_code == 302
    assert Account.objects.get(org=owner.org).plan == scale
    assert AuditEvent.objects.filter(
        org_id=owner.org.pk, action="billing.plan_change", target_id="enterprise->scale"
    ).exists()
    directions = [e["properties"]["direction"] for e in _plan_events(posthog)]
    assert directions == ["upgrade", "downgrade"]
    assert staff_client.post(f"/staff/billing/account/{account.pk}/delete/").status_code == 403
    _no_identity(posthog, owner)


def test_opening_the_portal_is_audited(owner, stripe_fake) -> None:
    Account.objects.create(
        org=owner.org, plan=Plan.objects.get(slug="developer"), stripe_subscription_id="sub_1"
    )
    response = owner.client().post(f"/o/{owner.org.pk}/billing/portal/")
    assert response.status_code == 303
    event = AuditEvent.objects.get(org_id=owner.org.pk, action="billing.portal")
    assert (event.actor_type, event.actor_id) == ("user", str(owner.user.pk))


def test_a_stripe_customer_made_elsewhere_is_linked_and_audited(
    owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    metadata = {"metadata": {"org_id": str(owner.org.pk)}}
    customer = stripe_fake.route("POST", ["customers"], metadata)[1]
    with django_capture_on_commit_callbacks(execute=True):
        event = stripe_fake.event("customer.updated", stripe_fake.customers[customer["id"]])
        assert deliver(Client(), event).status_code == 200
    assert Account.objects.get(org=owner.org).stripe_customer_id == customer["id"]
    linked = AuditEvent.objects.get(
        org_id=owner.org.pk, action="billing.details_change", target_id="linked"
    )
    assert linked.actor_type == "system"
