"""Overview, settings, creation of organizations, and the dashboard redirect."""

import pytest
from django.test import Client

from clinik.accounts.models import Membership, Organization
from clinik.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_overview_shows_org_members_and_getting_started(owner, teammate) -> None:
    response = owner.client().get(f"/o/{owner.org.pk}/")
    assert response.status_code == 200
    for text in (b"Acme Health", b"Devon Dev", b"Getting started", b"curl"):
        assert text in response.content


def test_overview_for_outsider_and_anonymous(owner, outsider) -> None:
    assert outsider.client().get(f"/o/{owner.org.pk}/").status_code == 404
    anonymous = Client().get(f"/o/{owner.org.pk}/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/signin/")


def test_overview_wrong_method(owner) -> None:
    assert owner.client().post(f"/o/{owner.org.pk}/").status_code == 405


def test_closed_org_is_gone(owner) -> None:
    Organization.objects.filter(pk=owner.org.pk).update(status="closed")
    assert owner.client().get(f"/o/{owner.org.pk}/").status_code == 404


def test_settings_rename(owner) -> None:
    client = owner.client()
    assert client.get(f"/o/{owner.org.pk}/settings/").status_code == 200
    response = client.post(f"/o/{owner.org.pk}/settings/", {"name": "Acme Clinics"})
    assert response.status_code == 302
    owner.org.refresh_from_db()
    assert owner.org.name == "Acme Clinics"
    assert AuditEvent.objects.filter(action="org.update").count() == 1


def test_settings_empty_name_is_a_form_error(owner) -> None:
    response = owner.client().post(f"/o/{owner.org.pk}/settings/", {"name": ""})
    assert response.status_code == 200
    assert b"This field is required" in response.content


def test_settings_personas(owner, teammate, outsider) -> None:
    path = f"/o/{owner.org.pk}/settings/"
    assert teammate.client().get(path).status_code == 200
    assert teammate.client().post(path, {"name": "Hijack"}).status_code == 403
    assert outsider.client().get(path).status_code == 404
    assert outsider.client().post(path, {"name": "Hijack"}).status_code == 404
    assert owner.client().delete(path).status_code == 405
    owner.org.refresh_from_db()
    assert owner.org.name == "Acme Health"


def test_create_another_org(owner) -> None:
    client = owner.client()
    response = client.post("/orgs/new/", {"name": "Second Org"})
    org = Organization.objects.get(name="Second Org")
    assert response["Location"] == f"/o/{org.pk}/"
    assert Membership.objects.get(org=org, user=owner.user).role == "owner"
    assert client.put("/orgs/new/").status_code == 405


def test_dashboard_redirects_to_last_org(owner) -> None:
    client = owner.client()
    assert client.get("/dashboard/")["Location"] == f"/o/{owner.org.pk}/"
    assert client.post("/dashboard/").status_code == 405


def test_user_without_org_is_asked_to_create_one(owner) -> None:
    Membership.objects.filter(user=owner.user).delete()
    assert owner.client().get("/dashboard/")["Location"] == "/orgs/new/"


def test_unknown_section_is_404(owner) -> None:
    assert owner.client().get(f"/o/{owner.org.pk}/nothing-here/").status_code == 404


def test_a_closing_org_is_read_only_in_the_dashboard(owner, teammate) -> None:
    from clinik.keys.models import ApiKey

    Organization.objects.filter(pk=owner.org.pk).update(status="closing")
    client = owner.client()
    base = f"/o/{owner.org.pk}"
    assert client.post(f"{base}/settings/", {"name": "Renamed"}).status_code == 403
    invite = {"email": "new@acme.test", "role": "developer"}
    assert client.post(f"{base}/team/invite/", invite).status_code == 403
    role = {"role": "admin"}
    assert (
        client.post(f"{base}/team/members/{teammate.membership.pk}/role/", role).status_code == 403
    )
    key = {"name": "late", "scopes": "read", "expires": "never"}
    assert client.post(f"{base}/keys/new/", key).status_code == 403
    assert not ApiKey.objects.filter(org=owner.org).exists()
    owner.org.refresh_from_db()
    assert owner.org.name == "Acme Health"
