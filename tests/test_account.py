import pytest
from django.test import Client

from clinik.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_account_page_needs_signin(client: Client) -> None:
    response = client.get("/accounts/settings/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/signin/")


def test_change_name(owner) -> None:
    client = owner.client()
    response = client.post(
        "/accounts/settings/",
        {"form": "profile", "name": "Olivia O.", "email": "owner@acme.test"},
    )
    assert response.status_code == 302
    owner.user.refresh_from_db()
    assert owner.user.name == "Olivia O."
    assert AuditEvent.objects.filter(action="account.update").count() == 1


def test_change_email_needs_current_password(owner) -> None:
    client = owner.client()
    data = {"form": "profile", "name": "Olivia", "email": "olivia@acme.test"}
    response = client.post("/accounts/settings/", data)
    assert response.status_code == 200
    assert b"Enter your current password." in response.content
    response = client.post("/accounts/settings/", {**data, "current_password": owner.password})
    assert response.status_code == 302
    owner.user.refresh_from_db()
    assert owner.user.email == "olivia@acme.test"


def test_email_taken_by_another_account(owner, teammate) -> None:
    response = owner.client().post(
        "/accounts/settings/",
        {
            "form": "profile",
            "name": "Olivia",
            "email": "DEV@acme.test",
            "current_password": owner.password,
        },
    )
    assert b"Another account uses this email address." in response.content


def test_change_password_keeps_the_session(owner) -> None:
    client = owner.client()
    response = client.post(
        "/accounts/settings/",
        {
            "form": "password",
            "old_password": owner.password,
            "new_password1": "another long passphrase 9",
            "new_password2": "another long passphrase 9",
        },
    )
    assert response.status_code == 302
    owner.user.refresh_from_db()
    assert owner.user.check_password("another long passphrase 9")
    assert client.get("/accounts/settings/").status_code == 200


def test_wrong_old_password_is_a_form_error(owner) -> None:
    response = owner.client().post(
        "/accounts/settings/",
        {
            "form": "password",
            "old_password": "not it at all",
            "new_password1": "another long passphrase 9",
            "new_password2": "another long passphrase 9",
        },
    )
    assert response.status_code == 200
    assert b"incorrect" in response.content


def test_account_wrong_method(owner) -> None:
    assert owner.client().delete("/accounts/settings/").status_code == 405
