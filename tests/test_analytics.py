"""Server-side product analytics against a local stand-in for PostHog's capture
endpoint: the catalogue with allowlisted properties only, no names, emails, ids or PHI
in any payload, opt-out and unset configuration send nothing, the API sends nothing."""

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings

from clinik.accounts.models import Invitation, User
from clinik.privacy import analytics
from clinik.privacy.models import AnalyticsId
from tests.conftest import Api, _api_for
from tests.posthog_server import PostHogServer

pytestmark = pytest.mark.django_db
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.fixture
def posthog() -> Iterator[PostHogServer]:
    server = PostHogServer().start()
    with override_settings(POSTHOG_API_KEY="phc_test_project", POSTHOG_HOST=server.url):
        yield server
    server.stop()


def sent(server: PostHogServer) -> list[dict[str, Any]]:
    analytics.flush()
    return server.events()


def _key_form() -> dict[str, str]:
    return {"name": "Zanzibar key", "scopes": "read", "expires": "never"}


def test_the_catalogue_goes_out_with_allowlisted_properties_and_nothing_personal(
    posthog, owner, django_capture_on_commit_callbacks
) -> None:
    browser = Client()
    signup = {
        "email": "quentin.marker@privateclinic.test",
        "name": "Quentin Markerson",
        "org_name": "Marker Oncology Partners",
        "password": "a sturdy passphrase 42",
    }
    org_url = f"/o/{owner.org.pk}"
    client = owner.client()
    with django_capture_on_commit_callbacks(execute=True):
        assert browser.post("/accounts/signup/", signup).status_code == 302
        new_user = User.objects.get(email=signup["email"])
        browser.post("/accounts/signout/")
        browser.post(
            "/accounts/signin/", {"email": signup["email"], "password": signup["password"]}
        )
        assert client.post("/orgs/new/", {"name": "Second Marker Org"}).status_code == 302
        client.post(f"{org_url}/team/invite/", {"email": signup["email"], "role": "admin"})
        client.post(f"{org_url}/keys/new/", _key_form())
        key = owner.org.api_keys.get(name="Zanzibar key")
        client.post(f"{org_url}/keys/{key.pk}/revoke/")
        client.get(f"{org_url}/billing/")
        client.post(f"{org_url}/privacy/exports/start/")
        client.get(f"{org_url}/usage/?range=7d&q=Phisearch+Zyx")
        client.get(f"{org_url}/audit/?actor=Phisearch")
        _invitation, token = Invitation.issue(owner.org, signup["email"], "developer", owner.user)
        browser.post(f"/accounts/invitations/{token}/")
    # PHI reaches the API (never analytics): a resource with a chosen id, a search
    api: Api = _api_for(owner)
    patient = {"resourceType": "Patient", "id": "phi-id-31337", "name": [{"family": "Phiname"}]}
    assert api.put("Patient/phi-id-31337", patient).status_code in (200, 201)
    assert api.get("Patient?name=Phisearch").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"{org_url}/privacy/close/", {"confirm_name": owner.org.name})

    events = sent(posthog)
    names = {e["event"] for e in events}
    assert names == set(analytics.EVENTS) - {"plan_changed"}  # billing sends that one
    for event in events:
        allowed = set(analytics.EVENTS[event["event"]]) | analytics.SDK_PROPERTIES
        assert set(event["properties"]) <= allowed, event
    by_name = {e["event"]: e["properties"] for e in events}
    assert by_name["key_created"]["scopes"] == "read"
    assert by_name["key_created"]["expires"] is False
    assert by_name["member_invited"]["role"] == "admin"
    assert by_name["member_joined"]["role"] == "developer"
    assert by_name["usage_page_viewed"]["range"] == "7d"

    ids = {str(row.distinct_id) for row in AnalyticsId.objects.all()}
    assert {e["distinct_id"] for e in events} == ids and len(ids) == 2
    raw = posthog.raw()
    planted = [
        signup["email"],
        signup["name"],
        "Quentin",
        "Marker",
        "privateclinic",
        owner.user.email,
        owner.user.name,
        owner.org.name,
        "Zanzibar",
        "Phiname",
        "Phisearch",
        "phi-id-31337",
        str(owner.org.pk),
        key.display,
        '127.0.0.1"',
    ]
    for marker in planted:
        assert marker not in raw, marker
    for user in (owner.user, new_user):
        assert f'"distinct_id": "{user.pk}"' not in raw.replace('":"', '": "')
    # every UUID in the payloads is an analytics id or an event uuid, never an org's
    for found in UUID.findall(raw):
        assert found not in {
            str(o) for o in User.objects.values_list("memberships__org", flat=True)
        }


def test_an_opted_out_user_sends_nothing(
    posthog, owner, django_capture_on_commit_callbacks
) -> None:
    owner.user.analytics_opt_out = True
    owner.user.save(update_fields=["analytics_opt_out"])
    client = owner.client()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/o/{owner.org.pk}/keys/new/", _key_form())
        client.get(f"/o/{owner.org.pk}/usage/")
        client.get(f"/o/{owner.org.pk}/billing/")
    assert sent(posthog) == []
    assert posthog.requests == []
    page = client.get(f"/o/{owner.org.pk}/").content.decode()
    assert "analytics-config" not in page and "consent.js" not in page


def test_the_opt_out_switch_on_the_account_page_governs_it(
    posthog, owner, django_capture_on_commit_callbacks
) -> None:
    client = owner.client()
    assert client.post("/accounts/data/analytics/", {"opt_out": "on"}).status_code == 302
    with django_capture_on_commit_callbacks(execute=True):
        client.get(f"/o/{owner.org.pk}/billing/")
    assert sent(posthog) == []
    client.post("/accounts/data/analytics/", {"opt_out": ""})
    with django_capture_on_commit_callbacks(execute=True):
        client.get(f"/o/{owner.org.pk}/billing/")
    assert [e["event"] for e in sent(posthog)] == ["plan_viewed"]


def test_the_fhir_api_sends_nothing(posthog, owner, api) -> None:
    api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Phiname"}]})
    api.get("Patient?name=Phiname")
    api.get("metadata")
    assert sent(posthog) == [] and posthog.requests == []


def test_resetting_the_analytics_id_gives_a_new_one(
    posthog, owner, django_capture_on_commit_callbacks
) -> None:
    client = owner.client()
    with django_capture_on_commit_callbacks(execute=True):
        client.get(f"/o/{owner.org.pk}/billing/")
        assert client.post("/accounts/data/analytics/reset/").status_code == 302
        client.get(f"/o/{owner.org.pk}/billing/")
    first, second = (e["distinct_id"] for e in sent(posthog))
    assert first != second
    assert client.get("/accounts/data/analytics/reset/").status_code == 405


def test_unconfigured_analytics_send_and_load_nothing(owner) -> None:
    with override_settings(POSTHOG_API_KEY="", POSTHOG_HOST=""):
        client = owner.client()
        client.get(f"/o/{owner.org.pk}/billing/")
        page = client.get("/privacy").content.decode()
        assert "analytics-config" not in page and "consent.js" not in page
        assert "consent-banner" not in page
        assert "connect-src 'self';" in client.get("/privacy")["Content-Security-Policy"] + ";"
    assert not AnalyticsId.objects.exists()


def test_configured_pages_carry_the_consent_script_but_not_the_library(posthog) -> None:
    page = Client().get("/privacy").content.decode()
    found = re.search(r'id="analytics-config"[^>]*>(.*?)</script>', page, re.S)
    assert found is not None
    config = json.loads(found[1])
    assert config["host"] == posthog.url and config["key"] == "phc_test_project"
    assert config["script"].startswith("/static/vendor/posthog-js-")
    assert "consent.js" in page and '<script src="/static/vendor' not in page
    assert "distinct_id" not in config  # anonymous visitor


def test_unknown_events_are_refused(owner) -> None:
    with pytest.raises(ValueError, match="catalogue"):
        analytics.capture(owner.user, "patient_viewed")
    assert analytics.clean("key_created", {"scopes": "Free text!", "name": "x", "expires": 1}) == {}
