"""The billing period follows Stripe's subscription period (kept by the webhook
processing), not the calendar month: the quota through the real gateway, its reset
time and RateLimit headers, and the Billing page's usage and projection. Free
organizations count by calendar month (UTC)."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client

from clinik.billing import meters
from clinik.billing.actions import do_assign_plan
from clinik.billing.models import Account, Plan
from clinik.billing.periods import add_months, calendar_month, period_of
from clinik.gateway import limits
from clinik.gateway.ratelimit import known_keys, limiter
from clinik.usage import store
from tests.conftest import _api_for
from tests.stripe_fake import deliver, paid_plans, stripe_fake

__all__ = ["paid_plans", "stripe_fake"]


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Any:
    limiter.reset()
    known_keys.clear()
    yield
    known_keys.clear()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_months_are_added_as_stripe_renews_them() -> None:
    anchor = _at("2027-01-31T09:30:00")
    assert [add_months(anchor, n).date().isoformat() for n in range(5)] == [
        "2027-01-31",
        "2027-02-28",
        "2027-03-31",
        "2027-04-30",
        "2027-05-31",
    ]
    assert add_months(_at("2027-12-15T00:00:00"), 1) == _at("2028-01-15T00:00:00")
    assert add_months(_at("2028-01-31T00:00:00"), 1) == _at("2028-02-29T00:00:00")


def test_the_period_is_the_subscriptions_then_rolls_on_until_stripe_says_more(
    owner, paid_plans
) -> None:
    start, end = _at("2027-03-15T14:20:00"), _at("2027-04-15T14:20:00")
    account = Account.objects.create(
        org=owner.org,
        plan=Plan.objects.get(slug="developer"),
        stripe_subscription_id="sub_1",
        subscription_status="active",
        current_period_start=start,
        current_period_end=end,
    )
    assert period_of(account, _at("2027-04-01T00:00:00")) == (start, end)
    # The renewal's webhook is late: the next period starts where this one ended.
    later = period_of(account, _at("2027-04-15T14:20:01"))
    assert later == (end, _at("2027-05-15T14:20:00"))
    assert period_of(account, _at("2027-06-20T00:00:00")) == (
        _at("2027-06-15T14:20:00"),
        _at("2027-07-15T14:20:00"),
    )
    # Without a subscription (Free, cancelled): the calendar month, UTC.
    account.stripe_subscription_id = ""
    assert period_of(account, _at("2027-04-01T00:00:00")) == calendar_month(
        _at("2027-04-01T00:00:00")
    )
    assert calendar_month(_at("2027-12-31T23:59:59")) == (
        _at("2027-12-01T00:00:00"),
        _at("2028-01-01T00:00:00"),
    )
    assert period_of(None, _at("2027-02-10T00:00:00")) == (
        _at("2027-02-01T00:00:00"),
        _at("2027-03-01T00:00:00"),
    )


def test_the_webhook_keeps_the_period_and_the_quota_follows_it(
    owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    response = owner.client().post(f"/o/{owner.org.pk}/billing/checkout/", {"plan": "developer"})
    session_id = response["Location"].rsplit("/", 1)[1]
    sub_id = stripe_fake.complete_checkout(session_id)
    with django_capture_on_commit_callbacks(execute=True):
        event = stripe_fake.event("checkout.session.completed", stripe_fake.sessions[session_id])
        assert deliver(Client(), event).status_code == 200
    item = stripe_fake.subscriptions[sub_id]["items"]["data"][0]
    account = Account.objects.get(org=owner.org)
    assert account.current_period_end is not None
    assert int(account.current_period_end.timestamp()) == item["current_period_end"]
    assert limits.limits_for(owner.org).period_end == item["current_period_end"]
    # Stripe renews: the period moves; the cached limits follow at once.
    renewed_start, renewed_end = item["current_period_end"], item["current_period_end"] + 31 * 86400
    for entry in stripe_fake.subscriptions[sub_id]["items"]["data"]:
        entry["current_period_start"], entry["current_period_end"] = renewed_start, renewed_end
    with django_capture_on_commit_callbacks(execute=True):
        event = stripe_fake.event(
            "customer.subscription.updated", stripe_fake.subscriptions[sub_id]
        )
        assert deliver(Client(), event).status_code == 200
    assert limits.limits_for(owner.org).period_start == renewed_start
    assert limits.limits_for(owner.org).period_end == renewed_end


def test_the_quota_resets_when_the_stripe_period_ends_through_the_gateway(
    owner, paid_plans
) -> None:
    tiny = Plan.objects.get(slug="free")
    Plan.objects.filter(pk=tiny.pk).update(included_requests=2)
    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(seconds=3)
    start = end - timedelta(days=30)
    Account.objects.create(
        org=owner.org,
        plan=Plan.objects.get(slug="free"),
        stripe_subscription_id="sub_x",
        subscription_status="active",
        current_period_start=start,
        current_period_end=end,
    )
    limits.forget(owner.org.pk)
    api = _api_for(owner)
    assert api.get("Patient").status_code == 200
    second = api.get("Patient")
    assert '"quota";r=0' in second["RateLimit"]
    quota_window = int(second["RateLimit-Policy"].split('"quota";q=2;w=')[1].split(",")[0])
    assert 0 < quota_window <= 3  # seconds until the period ends, not the month
    refused = api.get("Patient")
    assert refused.status_code == 429
    text = refused.json()["issue"][0]["diagnostics"]
    assert f"It resets at {end:%Y-%m-%dT%H:%M:%SZ}" in text
    assert "Free plan" in text and f"/o/{owner.org.pk}/billing/" in text
    assert 1 <= int(refused["Retry-After"]) <= 3
    time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()) + 0.3)
    # The period ended (the renewal's webhook has not come): the next one counts.
    fresh = api.get("Patient")
    assert fresh.status_code == 200
    assert '"quota";r=1' in fresh["RateLimit"]
    following = add_months(start, 2)
    assert limits.limits_for(owner.org).period_end == int(following.timestamp())
    assert api.get("Patient").status_code == 200
    refused = api.get("Patient")
    assert refused.status_code == 429
    assert (
        f"It resets at {following:%Y-%m-%dT%H:%M:%SZ}" in refused.json()["issue"][0]["diagnostics"]
    )


def _requests(org_id: Any, at: datetime, n: int, tag: str) -> None:
    store.write_records(
        [
            (
                at.timestamp() + i,
                str(org_id),
                None,
                "GET",
                "/fhir/R4/Patient",
                "Patient",
                200,
                900,
                100,
                f"req-{tag}-{i}",
                None,
                None,
            )
            for i in range(n)
        ]
    )


def test_the_billing_page_counts_the_stripe_period(owner, stripe_fake) -> None:
    developer = Plan.objects.get(slug="developer")
    Plan.objects.filter(pk=developer.pk).update(included_requests=100, overage_per_1000_cents=500)
    start, end = _at("2027-03-15T14:00:00"), _at("2027-04-15T14:00:00")
    Account.objects.create(
        org=owner.org,
        plan=developer,
        stripe_subscription_id="sub_1",
        subscription_status="active",
        current_period_start=start,
        current_period_end=end,
    )
    _requests(owner.org.pk, _at("2027-03-15T10:00:00"), 70, "before")  # the last period
    _requests(owner.org.pk, _at("2027-03-16T10:00:00"), 150, "in")
    with time_machine.travel(_at("2027-03-30T14:00:00"), tick=False):  # half the period
        body = owner.client().get(f"/o/{owner.org.pk}/billing/").content.decode()
    assert "Usage this billing period" in body
    assert "15 Mar 2027, 14:00 \u2013 15 Apr 2027, 14:00 (UTC)" in body
    assert "<strong>150</strong> requests of 100 included" in body
    assert "Overage so far: $0.25" in body
    # 150 in half the period: about 310 by its end (31 days), 210 beyond the plan.
    assert "about 310 requests" in body
    # Past the period's end (the renewal's webhook late): a new period, nothing used.
    with time_machine.travel(_at("2027-04-16T00:00:00"), tick=False):
        body = owner.client().get(f"/o/{owner.org.pk}/billing/").content.decode()
    assert "15 Apr 2027, 14:00 \u2013 15 May 2027, 14:00 (UTC)" in body
    assert "<strong>0</strong> requests of 100 included" in body


def test_the_billing_page_attributes_the_boundary_hours_as_the_meter_does(
    owner, stripe_fake
) -> None:
    """A period from 09:23:41 to 09:23:41 a month later: the 09:00 hour of its start is
    wholly this period's (requests at 09:10 count), the 09:00 hour of its end wholly
    the next one's (requests at 09:05 on the last day do not), as the meter claims
    attribute them (clinik.billing.periods.buckets): the page and the invoice agree."""
    developer = Plan.objects.get(slug="developer")
    Plan.objects.filter(pk=developer.pk).update(included_requests=100, overage_per_1000_cents=500)
    start, end = _at("2027-03-15T09:23:41"), _at("2027-04-15T09:23:41")
    Account.objects.create(
        org=owner.org,
        plan=developer,
        stripe_subscription_id="sub_1",
        subscription_status="active",
        current_period_start=start,
        current_period_end=end,
    )
    _requests(owner.org.pk, _at("2027-03-15T08:59:00"), 7, "before")  # the last period
    _requests(owner.org.pk, _at("2027-03-15T09:10:00"), 30, "first-hour")
    _requests(owner.org.pk, _at("2027-03-30T12:00:00"), 50, "in")
    _requests(owner.org.pk, _at("2027-04-15T09:05:00"), 40, "end-hour")
    with time_machine.travel(_at("2027-04-15T09:20:00"), tick=False):  # still this period
        body = owner.client().get(f"/o/{owner.org.pk}/billing/").content.decode()
    assert "15 Mar 2027, 09:23 \u2013 15 Apr 2027, 09:23 (UTC)" in body
    assert "<strong>80</strong> requests of 100 included" in body
    assert meters.buckets((start, end)) == (_at("2027-03-15T09:00"), _at("2027-04-15T09:00"))
    with time_machine.travel(_at("2027-04-15T10:00:00"), tick=False):  # the next period
        body = owner.client().get(f"/o/{owner.org.pk}/billing/").content.decode()
    assert "15 Apr 2027, 09:23 \u2013 15 May 2027, 09:23 (UTC)" in body
    assert "<strong>40</strong> requests of 100 included" in body


def test_a_free_organization_counts_the_calendar_month(owner, paid_plans) -> None:
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="free"), actor=None)
    _requests(owner.org.pk, _at("2027-02-27T10:00:00"), 5, "feb")
    _requests(owner.org.pk, _at("2027-03-02T10:00:00"), 7, "mar")
    with time_machine.travel(_at("2027-03-10T00:00:00"), tick=False):
        body = owner.client().get(f"/o/{owner.org.pk}/billing/").content.decode()
        assert limits.load(owner.org.pk)[0].period_end == int(_at("2027-04-01").timestamp())
    assert "1 Mar 2027, 00:00 \u2013 1 Apr 2027, 00:00 (UTC), the calendar month" in body
    assert "<strong>7</strong> requests" in body
