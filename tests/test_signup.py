import pytest
from django.test import Client

from clinik.accounts.models import Membership, Organization, User
from clinik.audit.models import AuditEvent

pytestmark = pytest.mark.django_db

GOOD = {
    "name": "Nora New",
    "email": "Nora@Example.test",
    "org_name": "Nora Health",
    "password": "a sturdy passphrase 42",
}


def test_signup_page_renders(client: Client) -> None:
    response = client.get("/accounts/signup/")
    assert response.status_code == 200
    assert b"Create your account" in response.content


def test_signup_creates_user_org_owner_membership_and_signs_in(client: Client) -> None:
    response = client.post("/accounts/signup/", GOOD)
    user = User.objects.get(email="nora@example.test")
    org = Organization.objects.get(name="Nora Health")
    assert response.status_code == 302
    assert response["Location"] == f"/o/{org.pk}/"
    assert Membership.objects.get(user=user, org=org).role == "owner"
    assert user.name == "Nora New"
    assert user.check_password(GOOD["password"])
    overview = client.get(response["Location"])
    assert overview.status_code == 200
    assert b"Nora Health" in overview.content
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"account.signup", "org.create"} <= actions


def test_signup_rejects_existing_email_case_insensitively(client: Client, owner) -> None:
    response = client.post("/accounts/signup/", {**GOOD, "email": "OWNER@acme.test"})
    assert response.status_code == 200
    assert b"already exists" in response.content
    assert User.objects.filter(email="owner@acme.test").count() == 1


def test_signup_rejects_weak_password(client: Client) -> None:
    response = client.post("/accounts/signup/", {**GOOD, "password": "12345"})
    assert response.status_code == 200
    assert b"too short" in response.content
    assert not User.objects.filter(email="nora@example.test").exists()


def test_signup_reports_missing_fields_without_error(client: Client) -> None:
    response = client.post("/accounts/signup/", {})
    assert response.status_code == 200
    assert response.content.count(b"This field is required") == 4


def test_signup_wrong_method(client: Client) -> None:
    assert client.put("/accounts/signup/").status_code == 405


def test_signup_follows_only_local_next(client: Client) -> None:
    response = client.post("/accounts/signup/?next=https://evil.test/", GOOD)
    assert response.status_code == 302
    assert response["Location"].startswith("/o/")


def test_signed_in_user_is_sent_to_dashboard(owner) -> None:
    response = owner.client().get("/accounts/signup/")
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
