"""Subscriptions end to end: FHIR writes through the API, the outbox trigger, the
dispatcher and the delivery task (eager Celery here; a real worker where it matters),
and a local receiver."""

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import orjson
import pytest
import time_machine
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from clinik.fhir.store import get_store
from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.webhooks import verify
from clinik.subscriptions import dispatch
from clinik.subscriptions.actions import purge_org
from clinik.subscriptions.delivery import _claim
from clinik.subscriptions.models import Delivery, OutboxEvent, Subscription
from clinik.subscriptions.sealing import signing_secret
from clinik.subscriptions.tasks import dispatch_subscriptions
from tests.conftest import wait_for
from tests.webhook_receiver import Receiver, serving

LOINC = "http://loinc.org"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


def observation(code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        **extra,
    }


def subscribe(api: Any, endpoint: str, criteria: str, **channel: Any) -> dict[str, Any]:
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "tests",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, **channel},
    }
    response = api.post("Subscription", body)
    assert response.status_code == 201, response.content
    created = json.loads(response.content)
    dispatch.check_subscriptions()  # requested -> active (what beat's tick does first)
    return created


def mirror(org: Any, resource_id: str) -> Subscription:
    return Subscription.objects.get(org=org, resource_id=resource_id)


def deliveries(org: Any) -> list[Delivery]:
    with tenant_transaction(org.pk):
        return list(Delivery.objects.filter(org=org).order_by("pk"))


def settled(org: Any) -> bool:
    return all(d.status != "pending" for d in deliveries(org))


@pytest.mark.django_db(transaction=True)
def test_a_matching_change_is_delivered_once_signed_and_id_only(api, receiver):
    sub = subscribe(api, receiver.url, f"Observation?code={LOINC}|8867-4")
    assert mirror(api.org, sub["id"]).status == "active"

    created = json.loads(api.post("Observation", observation("8867-4")).content)
    api.post("Observation", observation("1234-5"))  # does not match
    api.post("Patient", {"resourceType": "Patient"})  # not watched
    dispatch_subscriptions()
    dispatch_subscriptions()  # nothing more on a second round

    assert len(receiver.requests) == 1
    got = receiver.requests[0]
    secret = signing_secret(mirror(api.org, sub["id"]))
    assert verify(secret, got.body, got.headers["ClinikAPI-Signature"])
    assert not verify("whsec_wrong", got.body, got.headers["ClinikAPI-Signature"])
    bundle = orjson.loads(got.body)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    assert bundle["id"] == got.headers["ClinikAPI-Event-Id"]
    [entry] = bundle["entry"]
    assert entry["fullUrl"].endswith(f"/fhir/R4/Observation/{created['id']}")
    assert entry["request"] == {"method": "POST", "url": f"Observation/{created['id']}"}
    assert "resource" not in entry
    assert b"8867-4" not in got.body and b"final" not in got.body
    [delivery] = deliveries(api.org)
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    with tenant_transaction(api.org.pk):
        assert not OutboxEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_full_payload_carries_the_version_that_changed(api, receiver):
    subscribe(api, receiver.url, "Observation?status=final", payload="application/fhir+json")
    created = json.loads(api.post("Observation", observation("8867-4")).content)
    dispatch_subscriptions()
    [got] = receiver.requests
    [entry] = orjson.loads(got.body)["entry"]
    assert entry["resource"]["id"] == created["id"]
    assert entry["resource"]["code"]["coding"][0]["code"] == "8867-4"


@pytest.mark.django_db(transaction=True)
def test_update_and_delete_notify_in_commit_order(api, receiver):
    subscribe(api, receiver.url, "Observation")
    created = json.loads(api.post("Observation", observation("1")).content)
    api.put(f"Observation/{created['id']}", {**observation("2"), "id": created["id"]})
    api.delete(f"Observation/{created['id']}")
    dispatch_subscriptions()
    for _ in range(3):
        dispatch_subscriptions()  # one head per subscription per round: order kept
    methods = [orjson.loads(r.body)["entry"][0]["request"]["method"] for r in receiver.requests]
    assert methods == ["POST", "PUT", "DELETE"]


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_write_notifies_nobody(api, receiver):
    subscribe(api, receiver.url, "Observation")
    with pytest.raises(RuntimeError), transaction.atomic():
        get_store().create(api.org.pk, observation("8867-4"))
        raise RuntimeError("rolled back")
    dispatch_subscriptions()
    assert receiver.requests == []
    assert deliveries(api.org) == []


@pytest.mark.django_db(transaction=True)
def test_two_tenants_with_the_same_criteria_see_only_their_own(
    api, outsider_api, receiver, second_receiver
):
    subscribe(api, receiver.url, "Observation?status=final")
    subscribe(outsider_api, second_receiver.url, "Observation?status=final")
    mine = json.loads(api.post("Observation", observation("1")).content)
    theirs = json.loads(outsider_api.post("Observation", observation("1")).content)
    dispatch_subscriptions()
    [got] = receiver.requests
    [other] = second_receiver.requests
    assert mine["id"] in orjson.loads(got.body)["entry"][0]["fullUrl"]
    assert theirs["id"] in orjson.loads(other.body)["entry"][0]["fullUrl"]


@pytest.mark.django_db(transaction=True)
@override_settings(SUBSCRIPTIONS_RETRY_BASE_MS=1, SUBSCRIPTIONS_RETRY_MAX_MS=2)
def test_a_receiver_failing_five_times_gets_it_on_the_sixth_attempt(api, receiver):
    receiver.statuses = [500, 502, 503, 504, 500, 200]
    subscribe(api, receiver.url, "Observation")
    api.post("Observation", observation("1"))
    # Beat runs the dispatcher every second; here the test runs it until it settles.
    assert wait_for(lambda: dispatch_subscriptions() >= 0 and settled(api.org))
    [delivery] = deliveries(api.org)
    assert (delivery.status, delivery.attempts) == ("delivered", 6)
    assert len(receiver.requests) == 6
    assert len({r.headers["ClinikAPI-Event-Id"] for r in receiver.requests}) == 1


@pytest.mark.django_db(transaction=True)
@override_settings(SUBSCRIPTIONS_RETRY_BASE_MS=1, SUBSCRIPTIONS_RETRY_MAX_MS=2)
@override_settings(SUBSCRIPTIONS_MAX_ATTEMPTS=3)
def test_repeated_failures_put_the_subscription_in_error(api, receiver):
    receiver.statuses = [503]
    sub = subscribe(api, receiver.url, "Observation")
    api.post("Observation", observation("1"))
    assert wait_for(lambda: dispatch_subscriptions() >= 0 and settled(api.org))
    [delivery] = deliveries(api.org)
    assert (delivery.status, delivery.attempts) == ("failed", 3)
    assert mirror(api.org, sub["id"]).status == "error"
    # The client turns it back on by writing the resource again.
    api.put(f"Subscription/{sub['id']}", {**sub, "status": "requested"})
    dispatch_subscriptions()
    assert mirror(api.org, sub["id"]).status == "active"


@pytest.mark.django_db(transaction=True)
def test_410_turns_the_subscription_off(api, receiver):
    receiver.statuses = [410]
    sub = subscribe(api, receiver.url, "Observation")
    api.post("Observation", observation("1"))
    api.post("Observation", observation("2"))
    dispatch_subscriptions()
    assert mirror(api.org, sub["id"]).status == "off"
    assert len(receiver.requests) == 1
    api.post("Observation", observation("3"))
    with tenant_transaction(api.org.pk):
        assert not OutboxEvent.objects.exists()  # nothing watched any more


def subscription_body(endpoint: str, criteria: str, **channel: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "tests",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, **channel},
    }


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("criteria", "channel", "element"),
    [
        ("Observation?no-such-param=1", {}, "criteria"),
        ("NotAType?x=1", {}, "criteria"),
        ("Observation?date=not-a-date", {}, "criteria"),
        ("Observation", {"header": ["Host: evil"]}, "channel.header"),
        ("Observation", {"header": ["X-A: 1\r\nX-B: 2"]}, "channel.header"),
        ("Observation", {"payload": "text/plain"}, "channel.payload"),
        ("Observation", {"type": "email"}, "channel.type"),
    ],
)
def test_invalid_subscriptions_are_refused_with_400(api, criteria, channel, element):
    body = subscription_body("http://127.0.0.1:9/hook", criteria, **channel)
    for response in (
        api.post("Subscription", body),
        api.put("Subscription/s1", {**body, "id": "s1"}),
    ):
        assert response.status_code == 400
        outcome = json.loads(response.content)
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == [f"Subscription.{element}"]
        assert "no-such-param" not in response.content.decode()
    assert not Subscription.objects.filter(org=api.org).exists()


@pytest.mark.django_db
@override_settings(SUBSCRIPTIONS_ALLOW_PRIVATE_ENDPOINTS=False)
@pytest.mark.parametrize(
    "endpoint",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.8/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "http://hooks.example.org/hook",
    ],
)
def test_production_refuses_private_endpoints_at_create_time(api, endpoint):
    response = api.post("Subscription", subscription_body(endpoint, "Observation"))
    assert response.status_code == 400
    outcome = json.loads(response.content)
    assert outcome["issue"][0]["expression"] == ["Subscription.channel.endpoint"]


@pytest.mark.django_db(transaction=True)
def test_production_refuses_a_name_resolving_to_a_private_address_at_delivery(api, receiver):
    """`localhost` passes the static check (a name) and is refused when resolved at
    delivery: nothing reaches the receiver, the subscription goes to error."""
    port = receiver.url.split(":")[2].split("/")[0]
    with override_settings(SUBSCRIPTIONS_ALLOW_PRIVATE_ENDPOINTS=False):
        response = api.post(
            "Subscription", subscription_body(f"https://localhost:{port}/hook", "Observation")
        )
        assert response.status_code == 201
        sub_id = json.loads(response.content)["id"]
        dispatch_subscriptions()
        assert mirror(api.org, sub_id).status == "active"
        api.post("Observation", observation("1"))
        dispatch_subscriptions()
    assert receiver.requests == []
    [delivery] = deliveries(api.org)
    assert (delivery.status, delivery.last_error) == ("failed", "refused")
    row = mirror(api.org, sub_id)
    assert row.status == "error" and "not public" in row.error


@pytest.mark.django_db(transaction=True)
def test_deleting_the_subscription_stops_it(api, receiver):
    sub = subscribe(api, receiver.url, "Observation")
    api.delete(f"Subscription/{sub['id']}")
    assert not Subscription.objects.filter(org=api.org).exists()
    api.post("Observation", observation("1"))
    dispatch_subscriptions()
    assert receiver.requests == []


@pytest.mark.django_db(transaction=True)
def test_a_committed_change_survives_a_dead_worker(api, receiver, real_worker):
    """Committed, then no worker ran (the outbox row waits); then the delivery is
    claimed by a worker that dies before sending (its lease runs out): a real worker
    still delivers it, once."""
    subscribe(api, receiver.url, "Observation")
    api.post("Observation", observation("1"))
    with tenant_transaction(api.org.pk):
        assert OutboxEvent.objects.count() == 1
    # A dispatcher turns it into a delivery and a worker claims it, then dies.
    for org_id in dispatch.tick():
        dispatch.run_tenant(org_id)
    [delivery] = deliveries(api.org)
    assert _claim(api.org.pk, delivery.pk) is not None
    assert receiver.requests == []
    later = timezone.now() + timedelta(seconds=300)
    with time_machine.travel(later, tick=True):
        dispatch_subscriptions.delay()
        assert wait_for(lambda: deliveries(api.org)[0].status == "delivered")
    assert len(receiver.requests) == 1
    assert deliveries(api.org)[0].attempts == 2


@pytest.mark.django_db(transaction=True)
def test_closure_purges_subscriptions_outbox_and_deliveries(api, outsider_api, receiver):
    receiver.statuses = [503]
    for client in (api, outsider_api):
        subscribe(client, receiver.url, "Observation")
        client.post("Observation", observation("1"))
    for org_id in dispatch.tick():
        dispatch.run_tenant(org_id)  # deliveries pending, not sent
    api.post("Observation", observation("2"))  # an outbox row
    counts = purge_org(api.org.pk)
    assert counts["subscriptions"] == 1
    assert counts["subscriptions_outbox"] == 1 and counts["subscriptions_delivery"] == 1
    assert not Subscription.objects.filter(org=api.org).exists()
    assert deliveries(api.org) == []
    assert len(deliveries(outsider_api.org)) == 1  # the other tenant keeps its own


@pytest.mark.django_db(transaction=True)
def test_writes_inside_a_transaction_bundle_notify_each(api, receiver):
    subscribe(api, receiver.url, "Observation?status=final")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:0000000{i}-0000-4000-8000-000000000000",
                "resource": observation(str(i)),
                "request": {"method": "POST", "url": "Observation"},
            }
            for i in range(3)
        ]
        + [
            {
                "resource": observation("9"),
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": "code=9"},
            }
        ],
    }
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    for _ in range(5):
        dispatch_subscriptions()
    assert len(receiver.requests) == 4
    assert len({r.headers["ClinikAPI-Event-Id"] for r in receiver.requests}) == 4


@pytest.mark.django_db(transaction=True)
def test_the_listener_wakes_the_dispatcher_at_commit(api, receiver, real_worker):
    """No beat here: only the NOTIFY of the commit, through `subscriptions_listen` (a
    real process) and a real worker, delivers the change."""
    import os
    import subprocess
    import sys

    from django.conf import settings
    from django.db import connection

    subscribe(api, receiver.url, "Observation")
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}"
        f"/{db['NAME']}",
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
    }
    listener = subprocess.Popen(
        [sys.executable, "manage.py", "subscriptions_listen"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        api.post("Observation", observation("1"))
        assert wait_for(lambda: len(receiver.requests) == 1)
    finally:
        listener.terminate()
        listener.wait(10)
    assert deliveries(api.org)[0].status == "delivered"
