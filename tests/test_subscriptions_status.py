"""The stored Subscription resource shows its live status: the system writes a new
version (audited as the system) when it activates it, puts it in error, or turns it
off on 410; a client's concurrent write wins; no loop through the outbox trigger."""

import json
from typing import Any

import pytest
from django.test import override_settings

from clinik.audit.models import AuditEvent
from clinik.subscriptions import dispatch
from clinik.subscriptions.models import Subscription
from clinik.subscriptions.tasks import dispatch_subscriptions
from tests.conftest import wait_for
from tests.test_subscriptions_dispatch import (
    deliveries,
    mirror,
    observation,
    receiver,  # noqa: F401 - fixture
    settled,
    subscription_body,
)


def fetch(api: Any, resource_id: str) -> dict[str, Any]:
    response = api.get(f"Subscription/{resource_id}")
    assert response.status_code == 200
    return dict(json.loads(response.content))


@pytest.mark.django_db(transaction=True)
def test_activation_writes_a_new_version_audited_as_the_system(api, receiver):  # noqa: F811
    created = json.loads(
        api.post("Subscription", subscription_body(receiver.url, "Observation")).content
    )
    assert fetch(api, created["id"])["status"] == "requested"
    assert dispatch.check_subscriptions() == 1
    stored = fetch(api, created["id"])
    assert (stored["status"], stored["meta"]["versionId"]) == ("active", "2")
    assert "error" not in stored
    row = mirror(api.org, created["id"])
    assert (row.status, row.version_id, row.checked_version) == ("active", 2, 2)
    [event] = AuditEvent.objects.filter(action="fhir.update", target_id=created["id"])
    assert (event.actor_type, event.target_type) == ("system", "Subscription")
    # No loop: the system's version does not ask for another check.
    for _ in range(3):
        dispatch_subscriptions()
    assert fetch(api, created["id"])["meta"]["versionId"] == "2"
    assert AuditEvent.objects.filter(action="fhir.update", target_id=created["id"]).count() == 1


@pytest.mark.django_db(transaction=True)
@override_settings(SUBSCRIPTIONS_RETRY_BASE_MS=1, SUBSCRIPTIONS_RETRY_MAX_MS=2)
@override_settings(SUBSCRIPTIONS_MAX_ATTEMPTS=2)
def test_repeated_failures_show_error_in_the_resource(api, receiver):  # noqa: F811
    receiver.statuses = [503]
    created = json.loads(
        api.post("Subscription", subscription_body(receiver.url, "Observation")).content
    )
    dispatch.check_subscriptions()
    api.post("Observation", observation("1"))
    assert wait_for(lambda: dispatch_subscriptions() >= 0 and settled(api.org))
    stored = fetch(api, created["id"])
    assert stored["status"] == "error"
    assert stored["error"] == "delivery failed after 2 attempts"
    assert mirror(api.org, created["id"]).status == "error"
    # The client asks again: requested, checked, active, with the error gone.
    assert (
        api.put(f"Subscription/{created['id']}", {**stored, "status": "requested"}).status_code
        == 200
    )
    assert fetch(api, created["id"])["status"] == "requested"
    dispatch.check_subscriptions()
    again = fetch(api, created["id"])
    assert again["status"] == "active" and "error" not in again


@pytest.mark.django_db(transaction=True)
def test_410_shows_off_in_the_resource(api, receiver):  # noqa: F811
    receiver.statuses = [410]
    created = json.loads(
        api.post("Subscription", subscription_body(receiver.url, "Observation")).content
    )
    dispatch.check_subscriptions()
    api.post("Observation", observation("1"))
    dispatch_subscriptions()
    stored = fetch(api, created["id"])
    assert stored["status"] == "off" and "410" in stored["error"]
    assert mirror(api.org, created["id"]).status == "off"


@pytest.mark.django_db(transaction=True)
def test_the_client_turns_it_off(api, receiver):  # noqa: F811
    created = json.loads(
        api.post("Subscription", subscription_body(receiver.url, "Observation")).content
    )
    dispatch.check_subscriptions()
    active = fetch(api, created["id"])
    assert api.put(f"Subscription/{created['id']}", {**active, "status": "off"}).status_code == 200
    dispatch_subscriptions()
    stored = fetch(api, created["id"])
    assert (stored["status"], stored["meta"]["versionId"]) == ("off", "3")
    api.post("Observation", observation("1"))
    dispatch_subscriptions()
    assert receiver.requests == [] and deliveries(api.org) == []


@pytest.mark.django_db(transaction=True)
def test_a_client_asking_for_active_or_error_is_checked_like_requested(api, receiver):  # noqa: F811
    body = {**subscription_body(receiver.url, "Observation"), "status": "error"}
    created = json.loads(api.post("Subscription", body).content)
    assert mirror(api.org, created["id"]).status == "requested"
    dispatch.check_subscriptions()
    assert fetch(api, created["id"])["status"] == "active"


@pytest.mark.django_db(transaction=True)
def test_a_concurrent_client_write_wins_over_the_system(api, receiver):  # noqa: F811
    """The checker decided on version 1; the client wrote version 2 meanwhile: the
    system's write is refused (If-Match), the client's version stands and is checked."""
    created = json.loads(
        api.post("Subscription", subscription_body(receiver.url, "Observation")).content
    )
    stale = mirror(api.org, created["id"])
    client_version = {**created, "reason": "changed by the client"}
    assert api.put(f"Subscription/{created['id']}", client_version).status_code == 200
    assert dispatch.write_status(stale, Subscription.Status.ACTIVE) is False
    stored = fetch(api, created["id"])
    assert (stored["status"], stored["reason"], stored["meta"]["versionId"]) == (
        "requested",
        "changed by the client",
        "2",
    )
    assert mirror(api.org, created["id"]).status == "requested"
    dispatch.check_subscriptions()
    assert fetch(api, created["id"])["status"] == "active"


@pytest.mark.django_db(transaction=True)
def test_a_pending_delivery_waits_while_the_client_rewrites_the_subscription(
    api,
    receiver,  # noqa: F811
):
    created = json.loads(
        api.post("Subscription", subscription_body(receiver.url, "Observation")).content
    )
    dispatch.check_subscriptions()
    api.post("Observation", observation("1"))
    for org_id in dispatch.tick():
        dispatch.run_tenant(org_id)  # a pending delivery, not sent yet
    active = fetch(api, created["id"])
    api.put(f"Subscription/{created['id']}", {**active, "reason": "renamed"})
    [pending] = deliveries(api.org)
    from clinik.subscriptions.delivery import deliver

    assert deliver(api.org.pk, pending.pk).result == "skipped"  # requested: it waits
    assert deliveries(api.org)[0].status == "pending"
    dispatch_subscriptions()  # checked again (active), then sent
    assert deliveries(api.org)[0].status == "delivered" and len(receiver.requests) == 1
