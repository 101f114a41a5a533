"""The plan's limits through the real gateway: the monthly quota of a plan without
overage answers 429 with an OperationOutcome and RateLimit headers; a plan change
applies on the next request; the gateway still makes one Redis call per request."""

from typing import Any

import pytest
import redis

from clinik.accounts.models import Membership
from clinik.billing.actions import do_assign_plan
from clinik.billing.models import Plan
from clinik.gateway import limits
from clinik.gateway.ratelimit import known_keys, limiter
from tests.conftest import _api_for
from tests.stripe_fake import paid_plans

__all__ = ["paid_plans"]


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Any:
    limiter.reset()
    known_keys.clear()
    yield
    known_keys.clear()


@pytest.fixture
def tiny_free(paid_plans: None) -> Plan:
    Plan.objects.filter(slug="free").update(included_requests=3)
    return Plan.objects.get(slug="free")


def test_the_monthly_quota_answers_429_with_when_it_resets_and_where_to_upgrade(
    owner, tiny_free
) -> None:
    do_assign_plan(org=owner.org, plan=tiny_free, actor=None)
    api = _api_for(owner)
    remaining = []
    for _ in range(3):
        response = api.get("Patient")
        assert response.status_code == 200
        remaining.append(response["RateLimit"].split('"quota";r=')[1].split(";")[0])
    assert remaining == ["2", "1", "0"]
    refused = api.post("Patient", {"resourceType": "Patient"})  # never half-written
    assert refused.status_code == 429
    assert refused["Content-Type"].startswith("application/fhir+json")
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = outcome["issue"][0]["diagnostics"]
    assert "monthly quota of 3 API requests" in text
    assert "resets at" in text
    assert f"/o/{owner.org.pk}/billing/" in text
    assert '"quota";q=3' in refused["RateLimit-Policy"]
    assert '"quota";r=0' in refused["RateLimit"]
    assert int(refused["Retry-After"]) > 0
    assert api.get("Patient?name=x").status_code == 429  # reads too, until the month ends
    Plan.objects.filter(slug="free").update(included_requests=100)  # staff raise it
    limits.forget(owner.org.pk)
    found = api.get("Patient?_summary=count")
    assert found.status_code == 200
    assert found.json()["total"] == 0  # the refused POST wrote nothing


def test_a_plan_change_applies_on_the_next_request(owner, tiny_free) -> None:
    do_assign_plan(org=owner.org, plan=tiny_free, actor=None)
    api = _api_for(owner)
    for _ in range(3):
        api.get("Patient")
    assert api.get("Patient").status_code == 429
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="developer"), actor=None)
    response = api.get("Patient")
    assert response.status_code == 200
    assert '"key";q=1500' in response["RateLimit-Policy"]
    assert "quota" not in response["RateLimit-Policy"]


def test_the_gateway_makes_one_redis_call_per_request(owner, tiny_free, monkeypatch) -> None:
    Plan.objects.filter(slug="free").update(included_requests=1000)
    do_assign_plan(org=owner.org, plan=tiny_free, actor=None)
    api = _api_for(owner)
    assert api.get("Patient").status_code == 200  # the key and the plan are looked up
    # Counted where bytes leave for Redis, whichever client layer sent them.
    calls: list[str] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: Any, command: Any, *args: Any, **options: Any) -> Any:
        packed = command if isinstance(command, bytes) else b"".join(bytes(c) for c in command)
        calls.append(packed.split(b"\r\n")[2].decode())
        return original(self, command, *args, **options)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    for _ in range(5):
        assert api.get("Patient").status_code == 200
    assert calls == ["EVALSHA"] * 5


def test_create_org_takes_a_plan(paid_plans, capsys) -> None:
    import json

    from django.core.management import call_command
    from django.core.management.base import CommandError

    call_command("create_org", "--name", "Scaled", "--email", "s@x.test", "--plan", "scale")
    org_id = json.loads(capsys.readouterr().out)["org_id"]
    assert Membership.objects.get(org_id=org_id).org.billing.plan.slug == "scale"
    with pytest.raises(CommandError, match="no plan 'gold'"):
        call_command("create_org", "--name", "X", "--email", "x@x.test", "--plan", "gold")


def test_staff_editing_a_plan_applies_on_the_next_request(owner, tiny_free) -> None:
    do_assign_plan(org=owner.org, plan=tiny_free, actor=None)
    api = _api_for(owner)
    assert '"key";q=600' in api.get("Patient")["RateLimit-Policy"]
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        tiny_free.key_requests_per_minute = 900
        tiny_free.save()  # as the admin's change form does
    assert '"key";q=900' in api.get("Patient")["RateLimit-Policy"]
