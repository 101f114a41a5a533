"""The Stripe webhook endpoint and its processing, against a local server speaking
Stripe's API (tests/stripe_fake.py) with payloads signed as Stripe signs them."""

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.utils import timezone

from clinik.audit.models import AuditEvent
from clinik.billing.models import Account, Invoice, StripeEvent
from clinik.billing.webhooks import process
from clinik.gateway.ratelimit import known_keys, limiter
from tests.stripe_fake import (
    SECRET_KEY,
    WEBHOOK_SECRET,
    FakeStripe,
    deliver,
    paid_plans,
    sign,
    stripe_fake,
)

__all__ = ["paid_plans", "stripe_fake"]


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Any:
    limiter.reset()
    known_keys.clear()
    yield
    known_keys.clear()


def _key_limit(response: Any) -> int:
    policy = response["RateLimit-Policy"]
    part = next(p for p in policy.split(", ") if p.startswith('"key"'))
    return int(part.split(";q=")[1].split(";")[0])


def _checkout(owner: Any, fake: FakeStripe, plan: str = "developer") -> str:
    response = owner.client().post(f"/o/{owner.org.pk}/billing/checkout/", {"plan": plan})
    assert response.status_code == 303, response.content
    session_id = response["Location"].rsplit("/", 1)[1]
    assert fake.sessions[session_id]["client_reference_id"] == str(owner.org.pk)
    return session_id


def _subscribe(owner: Any, fake: FakeStripe, capture: Any, plan: str = "developer") -> str:
    session_id = _checkout(owner, fake, plan)
    sub_id = fake.complete_checkout(session_id)
    with capture(execute=True):
        event = fake.event("checkout.session.completed", fake.sessions[session_id])
        assert deliver(Client(), event).status_code == 200
    return sub_id


def test_checkout_makes_the_plan_active_and_the_next_request_has_its_limits(
    owner, api, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    before = api.get("Patient")
    assert before.status_code == 200
    assert _key_limit(before) == 600  # Free, the default plan with billing on
    customer_calls = [r for r in stripe_fake.requests if r[1] == "/v1/customers"]
    _subscribe(owner, stripe_fake, django_capture_on_commit_callbacks)
    account = Account.objects.get(org=owner.org)
    assert account.plan.slug == "developer"
    assert account.subscription_status == "active"
    assert account.billing_email == "billing@acme.test"
    customer = stripe_fake.customers[account.stripe_customer_id]
    assert customer["metadata"] == {"org_id": str(owner.org.pk)}  # and nothing else
    assert len([r for r in stripe_fake.requests if r[1] == "/v1/customers"]) == (
        len(customer_calls) + 1
    )
    after = api.get("Patient")  # the very next request, same process, no restart
    assert _key_limit(after) == 1500
    assert "quota" not in after["RateLimit-Policy"]  # a paid plan bills overage instead
    assert AuditEvent.objects.filter(org_id=owner.org.pk, action="billing.plan_change").exists()


def test_a_bad_or_expired_signature_is_refused_and_changes_nothing(
    owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    session_id = _checkout(owner, stripe_fake)
    stripe_fake.complete_checkout(session_id)
    event = stripe_fake.event("checkout.session.completed", stripe_fake.sessions[session_id])
    client = Client()
    with django_capture_on_commit_callbacks(execute=True):
        assert deliver(client, event, secret="whsec_someone_else").status_code == 400
        assert deliver(client, event, timestamp=int(time.time()) - 301).status_code == 400
        unsigned = client.post(
            "/billing/stripe/webhook", data=b"{}", content_type="application/json"
        )
        assert unsigned.status_code == 400
    assert not StripeEvent.objects.exists()
    assert Account.objects.get(org=owner.org).plan.slug == "free"
    assert client.get("/billing/stripe/webhook").status_code == 405


def test_without_stripe_settings_the_webhook_does_nothing(client, settings, db) -> None:
    settings.BILLING_ENABLED = False
    response = client.post("/billing/stripe/webhook", data=b"{}", content_type="application/json")
    assert response.status_code == 404
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_same_event_delivered_20_times_at_once_has_one_effect(
    owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    session_id = _checkout(owner, stripe_fake)
    sub_id = stripe_fake.complete_checkout(session_id)
    customer = stripe_fake.subscriptions[sub_id]["customer"]
    invoice_id = stripe_fake.add_invoice(customer, "paid", 2900)
    event = stripe_fake.event("invoice.paid", stripe_fake.invoices[invoice_id])
    answers: list[int] = []

    def send() -> None:
        answers.append(deliver(Client(), event).status_code)
        connection.close()

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 20
    assert StripeEvent.objects.filter(event_id=event["id"]).count() == 1
    assert Invoice.objects.filter(stripe_invoice_id=invoice_id).count() == 1
    from django.core import mail

    receipts = [m for m in mail.outbox if "Receipt" in m.subject]
    assert len(receipts) == 1
    assert AuditEvent.objects.filter(org_id=owner.org.pk, action="billing.invoice").count() == 1


def test_events_in_reverse_order_end_in_the_state_stripe_holds(
    owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    session_id = _checkout(owner, stripe_fake)
    sub_id = stripe_fake.complete_checkout(session_id)
    events = [stripe_fake.event("checkout.session.completed", stripe_fake.sessions[session_id])]
    events.append(
        stripe_fake.event("customer.subscription.created", stripe_fake.subscriptions[sub_id])
    )
    # upgraded to Scale, then the payment failed, then it was paid again
    scale = {"price": {"id": "price_scale", "object": "price"}}
    item = stripe_fake.subscriptions[sub_id]["items"]["data"][0]
    item.update(scale)
    events.append(
        stripe_fake.event(
            "customer.subscription.updated", stripe_fake.set_subscription(sub_id, status="past_due")
        )
    )
    events.append(
        stripe_fake.event(
            "customer.subscription.updated", stripe_fake.set_subscription(sub_id, status="active")
        )
    )
    with django_capture_on_commit_callbacks(execute=True):
        for event in reversed(events):
            assert deliver(Client(), event).status_code == 200
    account = Account.objects.get(org=owner.org)
    assert (account.plan.slug, account.subscription_status) == ("scale", "active")
    assert account.past_due_since is None
    assert StripeEvent.objects.filter(processed_at__isnull=False).count() == 4


def test_a_processing_failure_is_retried_and_the_event_stays_unprocessed(
    owner, stripe_fake, settings
) -> None:
    event = stripe_fake.event(
        "customer.subscription.updated", {"id": "sub_missing", "object": "subscription"}
    )
    assert deliver(Client(), event).status_code == 200  # stored; on_commit not run here
    stored = StripeEvent.objects.get(event_id=event["id"])
    import stripe

    with pytest.raises(stripe.InvalidRequestError):
        process(stored.pk)
    stored.refresh_from_db()
    assert stored.processed_at is None
    assert stored.attempts == 1  # counted although its transaction rolled back


def test_the_sweeper_stops_queueing_an_event_that_always_fails(owner, stripe_fake) -> None:
    import stripe

    from clinik.billing import webhooks
    from clinik.billing.tasks import sweep_stripe_events

    event = stripe_fake.event(
        "customer.subscription.updated", {"id": "sub_missing", "object": "subscription"}
    )
    assert deliver(Client(), event).status_code == 200
    stored = StripeEvent.objects.get(event_id=event["id"])
    later = timezone.now() + timedelta(minutes=11)
    with time_machine.travel(later, tick=False):
        for _ in range(webhooks.SWEEP_MAX_ATTEMPTS):
            assert webhooks.unprocessed() == [stored.pk]
            with pytest.raises(stripe.InvalidRequestError):
                process(stored.pk)
        assert webhooks.unprocessed() == []
        assert webhooks.stuck_count() == 1
        assert sweep_stripe_events() == 0
    stored.refresh_from_db()
    assert stored.processed_at is None and stored.attempts == webhooks.SWEEP_MAX_ATTEMPTS


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_processes_the_event_and_retries_while_stripe_fails(
    owner, stripe_fake, real_worker
) -> None:
    from tests.conftest import wait_for

    session_id = _checkout(owner, stripe_fake)
    stripe_fake.complete_checkout(session_id)
    event = stripe_fake.event("checkout.session.completed", stripe_fake.sessions[session_id])
    stripe_fake.fail_next = 4  # more than the SDK's own retries: the task must retry
    assert deliver(Client(), event).status_code == 200  # answered before any processing
    assert wait_for(
        lambda: StripeEvent.objects.filter(
            event_id=event["id"], processed_at__isnull=False
        ).exists(),
        timeout=90,
    )
    assert stripe_fake.failed == 4
    assert Account.objects.get(org=owner.org).plan.slug == "developer"


def test_an_event_never_queued_is_swept_and_processed_once(owner, stripe_fake) -> None:
    """The row is stored before anything is queued: an event whose queueing was lost
    (broker down, process killed after the INSERT) is queued again by the sweeper."""
    from clinik.billing.tasks import sweep_stripe_events

    session_id = _checkout(owner, stripe_fake)
    stripe_fake.complete_checkout(session_id)
    event = stripe_fake.event("checkout.session.completed", stripe_fake.sessions[session_id])
    assert deliver(Client(), event).status_code == 200  # on_commit not run: never queued
    assert deliver(Client(), event).status_code == 200  # a duplicate: acknowledged only
    stored = StripeEvent.objects.get(event_id=event["id"])
    assert stored.processed_at is None
    assert sweep_stripe_events() == 0  # too recent: its task may still be on its way
    with time_machine.travel(timezone.now() + timedelta(minutes=11), tick=False):
        assert sweep_stripe_events() == 1  # eager in tests: processed here
        assert sweep_stripe_events() == 0
    stored.refresh_from_db()
    assert stored.processed_at is not None and stored.attempts == 1
    assert Account.objects.get(org=owner.org).plan.slug == "developer"


@pytest.mark.parametrize(
    "payload",
    [b"[1, 2]", b'{"id": "evt_1"}', b'{"id": "evt_1", "type": "invoice.paid", "created": 1}'],
)
def test_a_signed_payload_that_is_not_an_event_is_a_400(payload, stripe_fake) -> None:
    response = Client().post(
        "/billing/stripe/webhook",
        data=payload,
        content_type="application/json",
        headers={"Stripe-Signature": sign(payload)},
    )
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_with_the_broker_down_the_event_is_kept_and_the_sweeper_queues_it(
    owner, stripe_fake, tmp_path
) -> None:
    """Under the production server, with no broker to publish to: the webhook still
    answers 200 (the row is stored first), a redelivery is acknowledged, and the
    sweeper processes the event once the broker is back."""
    import json

    from clinik.billing.tasks import sweep_stripe_events
    from tests.liveserver import free_port, serve

    session_id = _checkout(owner, stripe_fake)
    stripe_fake.complete_checkout(session_id)
    event = stripe_fake.event("checkout.session.completed", stripe_fake.sessions[session_id])
    env = {
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_fake.url,
        "STRIPE_METER_EVENTS_API_BASE": stripe_fake.meter_url,
    }
    payload = json.dumps(event).encode()
    with serve(tmp_path, env=env) as server:
        for _ in range(2):  # the delivery, and Stripe's redelivery
            request = (
                f"POST /billing/stripe/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nStripe-Signature: {sign(payload)}\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            ).encode() + payload
            status, _headers, body = server.exchange(request, timeout=60)
            assert (status, body) == (200, b"ok")
    assert "Broker unreachable" in server.output()
    stored = StripeEvent.objects.get(event_id=event["id"])
    assert stored.processed_at is None
    with time_machine.travel(timezone.now() + timedelta(minutes=11), tick=False):
        assert sweep_stripe_events() == 1  # the broker is back (eager here)
    stored.refresh_from_db()
    assert stored.processed_at is not None
    assert Account.objects.get(org=owner.org).plan.slug == "developer"


def test_the_publish_reconnects_after_a_broker_restart_and_fails_once_when_down(
    settings, caplog
) -> None:
    """The webhook's publish (clinik.billing.tasks.enqueue_stripe_event) against a real
    Redis broker behind a proxy the test cuts: queued while the broker is up; after the
    broker dropped the connection (a restart) the publish reconnects and
    the task still queued; with the broker down, one warning and nothing queued (the
    sweeper's job), no retry loop."""
    from urllib.parse import urlparse

    import redis

    from clinik.billing import tasks
    from tests.tcpproxy import TcpProxy

    target = urlparse(settings.REDIS_URL)
    db = (target.path or "/0").lstrip("/") or "0"
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    app = tasks.process_stripe_event.app
    saved = {key: app.conf[key] for key in ("task_always_eager", "broker_url", "broker_write_url")}
    app.conf.update(
        task_always_eager=False,
        broker_url=f"redis://127.0.0.1:{proxy.port}/{db}",
        broker_write_url=None,
    )
    tasks._publish.connection = None
    queue = redis.Redis.from_url(settings.REDIS_URL)
    queue.delete("celery")
    try:
        with caplog.at_level("WARNING", "clinik.billing"):
            tasks.enqueue_stripe_event(1)
            assert queue.llen("celery") == 1
            proxy.cut()  # the broker drops every connection (restarted)...
            proxy.restore()  # ...and is back
            tasks.enqueue_stripe_event(2)
            assert queue.llen("celery") == 2
            assert "Broker unreachable" not in caplog.text
            proxy.cut()  # down
            tasks.enqueue_stripe_event(3)
            assert queue.llen("celery") == 2
            assert caplog.text.count("Broker unreachable") == 1
    finally:
        conn = getattr(tasks._publish, "connection", None)
        if conn is not None:
            conn.release()
        tasks._publish.connection = None
        app.conf.update(saved)
        queue.delete("celery")
        proxy.close()
