"""The Webhooks page and its actions: owners and admins only, outsiders get 404,
wrong methods 405; the secret is shown once; ping and replay reach the receiver."""

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from clinik.audit.models import AuditEvent
from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.webhooks import verify
from clinik.subscriptions.models import Delivery, Subscription
from clinik.subscriptions.sealing import signing_secret
from clinik.subscriptions.tasks import dispatch_subscriptions
from tests.test_subscriptions_dispatch import observation, subscribe
from tests.webhook_receiver import Receiver, serving


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


@pytest.fixture
def sub(api: Any, receiver: Receiver) -> Subscription:
    created = subscribe(api, receiver.url, "Observation?code=http://loinc.org|8867-4")
    return Subscription.objects.get(org=api.org, resource_id=created["id"])


def url(org: Any, tail: str = "") -> str:
    return f"/o/{org.pk}/webhooks/{tail}"


def test_the_page_lists_subscriptions_without_criteria_values(owner, sub, api):
    response = owner.client().get(url(owner.org))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Observation" in page and "http://127.0.0.1:" in page
    assert "8867-4" not in page and "/hook" not in page and sub.resource_id not in page
    assert signing_secret(sub) not in page


def test_outsiders_get_404_everywhere(outsider, sub, api):
    client = outsider.client()
    with tenant_transaction(api.org.pk):
        delivery = Delivery.objects.create(
            org=api.org, subscription=sub, status="failed", next_attempt_at="2026-01-01T00:00Z"
        )
    assert client.get(url(sub.org)).status_code == 404
    assert client.get(url(sub.org, "deliveries/"), HTTP_HX_REQUEST="true").status_code == 404
    for tail in ["ping/", "secret/", "rotate/"]:
        assert client.post(url(sub.org, f"{sub.pk}/{tail}")).status_code == 404
        # their own organization's page does not reach another's subscription either
        assert client.post(url(outsider.org, f"{sub.pk}/{tail}")).status_code == 404
    assert client.post(url(sub.org, f"deliveries/{delivery.pk}/replay/")).status_code == 404
    assert client.post(url(outsider.org, f"deliveries/{delivery.pk}/replay/")).status_code == 404


def test_wrong_methods_get_405(owner, sub):
    client = owner.client()
    assert client.post(url(owner.org)).status_code == 405
    assert client.post(url(owner.org, "deliveries/")).status_code == 405
    for tail in ["ping/", "secret/", "rotate/", "deliveries/1/replay/"]:
        assert (
            client.get(
                url(owner.org, f"{sub.pk}/{tail}" if "deliv" not in tail else tail)
            ).status_code
            == 405
        )


def test_developers_are_refused(teammate, sub):
    assert teammate.client().get(url(teammate.org)).status_code == 403


def test_the_secret_is_shown_once_and_signs_deliveries(
    owner, sub, api, receiver, django_capture_on_commit_callbacks
):
    client = owner.client()
    first = client.post(url(owner.org, f"{sub.pk}/secret/"))
    assert first.status_code == 200 and signing_secret(sub) in first.content.decode()
    assert "no-store" in first["Cache-Control"] or "no-cache" in first["Cache-Control"]
    again = client.post(url(owner.org, f"{sub.pk}/secret/"), follow=True)
    assert signing_secret(sub) not in again.content.decode()
    assert AuditEvent.objects.filter(action="webhook.reveal").count() == 1

    rotated = client.post(url(owner.org, f"{sub.pk}/rotate/"))
    sub.refresh_from_db()
    assert signing_secret(sub) in rotated.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        api.post("Observation", observation("8867-4"))
        dispatch_subscriptions()
    [got] = receiver.requests
    assert verify(signing_secret(sub), got.body, got.headers["ClinikAPI-Signature"])


def test_ping_and_replay_reach_the_receiver(
    owner, sub, receiver, django_capture_on_commit_callbacks
):
    client = owner.client()
    receiver.statuses = [404, 200]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url(owner.org, f"{sub.pk}/ping/"))
    assert response.status_code == 302
    [ping] = receiver.requests
    assert ping.headers["ClinikAPI-Event-Type"] == "ping"
    assert orjson.loads(ping.body)["entry"] == []
    with tenant_transaction(owner.org.pk):
        failed = Delivery.objects.get(org=owner.org)
    assert (failed.status, failed.last_status_code) == ("failed", 404)
    page = client.get(url(owner.org)).content.decode()
    assert "Replay" in page and "404" in page

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url(owner.org, f"deliveries/{failed.pk}/replay/"))
    assert response.status_code == 302
    assert len(receiver.requests) == 2
    with tenant_transaction(owner.org.pk):
        statuses = sorted(Delivery.objects.filter(org=owner.org).values_list("status", flat=True))
    assert statuses == ["delivered", "failed"]
    assert AuditEvent.objects.filter(action__in=["webhook.ping", "webhook.replay"]).count() == 2


# --- htmx: each action answers with the part of the page it changed ---------------------


def htmx_post(client: Any, path: str) -> Any:
    return client.post(path, HTTP_HX_REQUEST="true")


def test_ping_with_htmx_returns_the_deliveries_part(
    owner, sub, receiver, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = htmx_post(owner.client(), url(owner.org, f"{sub.pk}/ping/"))
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="webhook-deliveries">')
    assert "<html" not in html and "A test ping is on its way" in html and "Ping" in html
    assert "HX-Request" in response["Vary"]
    assert len(receiver.requests) == 1


def test_secret_and_rotate_with_htmx_return_the_subscriptions_part(owner, sub):
    client = owner.client()
    shown = htmx_post(client, url(owner.org, f"{sub.pk}/secret/"))
    html = shown.content.decode()
    assert html.lstrip().startswith('<div id="webhook-subscriptions">') and "<html" not in html
    assert signing_secret(sub) in html and "Show secret (once)" not in html
    assert "no-store" in shown["Cache-Control"] or "no-cache" in shown["Cache-Control"]
    again = htmx_post(client, url(owner.org, f"{sub.pk}/secret/")).content.decode()
    assert "shown already" in again and signing_secret(sub) not in again

    rotated = htmx_post(client, url(owner.org, f"{sub.pk}/rotate/"))
    sub.refresh_from_db()
    html = rotated.content.decode()
    assert (
        html.lstrip().startswith('<div id="webhook-subscriptions">') and signing_secret(sub) in html
    )
    assert "no-store" in rotated["Cache-Control"] or "no-cache" in rotated["Cache-Control"]


def test_replay_with_htmx_returns_the_deliveries_part(
    owner, sub, receiver, django_capture_on_commit_callbacks
):
    receiver.statuses = [500, 200]
    with tenant_transaction(owner.org.pk):
        failed = Delivery.objects.create(
            org=owner.org,
            subscription=sub,
            kind="ping",
            status="failed",
            next_attempt_at="2026-01-01T00:00Z",
        )
    with django_capture_on_commit_callbacks(execute=True):
        response = htmx_post(owner.client(), url(owner.org, f"deliveries/{failed.pk}/replay/"))
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert "The delivery is sent again." in html


def test_the_page_keeps_real_forms_and_confirms_destructive_actions(owner, sub):
    page = owner.client().get(url(owner.org)).content.decode()
    for tail in ("ping/", "secret/", "rotate/"):
        action = url(owner.org, f"{sub.pk}/{tail}")
        assert f'action="{action}"' in page and f'hx-post="{action}"' in page
    rotate_form = page[page.index(f'action="{url(owner.org, f"{sub.pk}/rotate/")}"') :]
    assert "data-confirm=" in rotate_form.split("</form>")[0]


def test_the_deliveries_part_refreshes_alone(owner, sub):
    client = owner.client()
    part = client.get(url(owner.org, "deliveries/"), HTTP_HX_REQUEST="true")
    assert part.status_code == 200 and "<html" not in part.content.decode()
    assert "HX-Request" in part["Vary"]
    assert "<html" in client.get(url(owner.org, "deliveries/")).content.decode()
