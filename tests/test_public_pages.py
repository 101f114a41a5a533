import pytest
from django.test import Client

from clinik.privacy.models import PolicyVersion

pytestmark = pytest.mark.django_db


def test_landing(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert b"Create a free account" in response.content


def test_landing_sends_signed_in_users_to_the_dashboard(owner) -> None:
    assert owner.client().get("/")["Location"] == "/dashboard/"


def test_privacy_policy_shows_date_version_and_text(client: Client) -> None:
    response = client.get("/privacy")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Last updated: April 21, 2026 · Version 1" in body
    assert "API keys are SHA-256 hashed before storage." in body
    assert "Retained for 7 years for tax and legal compliance." in body
    assert "privacy@clinikapi.com" in body


def test_privacy_announces_an_upcoming_version(client: Client) -> None:
    PolicyVersion.objects.create(
        version=2,
        last_updated="2099-01-01",
        effective_on="2099-02-01",
        template_name="policies/privacy-v1.html",
    )
    body = client.get("/privacy").content.decode()
    assert "Version 1" in body
    assert "A new version (version 2) takes effect on February 1, 2099." in body


def test_security_page_names_the_contact(client: Client) -> None:
    response = client.get("/security")
    assert response.status_code == 200
    assert b"security@clinikapi.com" in response.content


@pytest.mark.parametrize("path", ["/", "/privacy", "/security"])
def test_public_pages_reject_writes_and_answer_head(client: Client, path: str) -> None:
    assert client.post(path).status_code == 405
    assert client.head(path).status_code in (200, 302)
