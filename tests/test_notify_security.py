"""Each security alert fires once for its trigger, and not for a known browser."""

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client
from django.utils import timezone

from clinik.notify.models import EmailRecord, KnownBrowser
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
CHROME = "Mozilla/5.0 (X11; Linux x86_64) Chrome/140.0 Safari/537.36"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0"


def templates() -> list[str]:
    return list(EmailRecord.objects.order_by("id").values_list("template", flat=True))


def signin(password: str, agent: str = CHROME, ip: str = "203.0.113.7", email="owner@acme.test"):
    client = Client(HTTP_USER_AGENT=agent, REMOTE_ADDR=ip)
    return client.post("/accounts/signin/", {"email": email, "password": password})


def test_a_new_browser_alerts_once_and_a_known_one_never(
    owner, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        assert signin(owner.password).status_code == 302
        assert signin(owner.password).status_code == 302
        assert signin(owner.password, ip="203.0.113.99").status_code == 302  # same /24
    assert templates() == ["signin-new-browser"]
    [message] = mail.outbox
    assert message.to == ["owner@acme.test"] and "new sign-in" in message.subject
    assert "203.0.113" not in message.body and "Chrome" in message.body
    stored = KnownBrowser.objects.get()
    assert "203.0.113" not in stored.fingerprint and "Chrome" not in stored.fingerprint

    with django_capture_on_commit_callbacks(execute=True):
        signin(owner.password, agent=FIREFOX)  # another browser
        signin(owner.password, ip="198.51.100.4")  # another network
    assert templates().count("signin-new-browser") == 3


def test_a_browser_not_seen_for_90_days_is_new_again(
    owner, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        signin(owner.password)
    KnownBrowser.objects.update(last_seen=timezone.now() - timedelta(days=91))
    with django_capture_on_commit_callbacks(execute=True):
        signin(owner.password)
    assert templates() == ["signin-new-browser", "signin-new-browser"]


def test_signing_up_knows_its_browser(client: Client, django_capture_on_commit_callbacks) -> None:
    data = {
        "email": "new@clinic.test",
        "name": "New Person",
        "org_name": "New Clinic",
        "password": "a sturdy passphrase 42",
    }
    browser = Client(HTTP_USER_AGENT=CHROME, REMOTE_ADDR="203.0.113.7")
    with django_capture_on_commit_callbacks(execute=True):
        assert browser.post("/accounts/signup/", data).status_code == 302
        browser.post("/accounts/signout/")
        assert signin(data["password"], email=data["email"]).status_code == 302
    assert "signin-new-browser" not in templates()


def test_a_lockout_alerts_the_account_once(owner, django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(settings.SIGNIN_MAX_FAILURES + 2):
            signin("wrong password!")
    assert templates() == ["signin-locked"]
    assert mail.outbox[0].to == ["owner@acme.test"] and "locked" in mail.outbox[0].subject


def test_a_lockout_of_an_unknown_address_sends_nothing(django_capture_on_commit_callbacks) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(settings.SIGNIN_MAX_FAILURES + 1):
            signin("wrong password!", email="nobody@nowhere.test")
    assert not mail.outbox and not EmailRecord.objects.exists()


def test_password_change_alerts_once(owner, django_capture_on_commit_callbacks) -> None:
    client = owner.client()
    data = {
        "form": "password",
        "old_password": owner.password,
        "new_password1": "another sturdy passphrase 7",
        "new_password2": "another sturdy passphrase 7",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/accounts/settings/", data).status_code == 302
    assert templates() == ["password-changed"]
    assert mail.outbox[0].to == ["owner@acme.test"]


def test_email_change_alerts_the_old_and_the_new_address(
    owner, django_capture_on_commit_callbacks
) -> None:
    client = owner.client()
    data = {"form": "profile", "name": "Olivia Owner", "email": "olivia@acme.test"}
    data["current_password"] = owner.password
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post("/accounts/settings/", data).status_code == 302
        # saving again without a change alerts nobody
        assert client.post("/accounts/settings/", data).status_code == 302
    assert templates() == ["email-changed", "email-changed"]
    assert sorted(m.to[0] for m in mail.outbox) == ["olivia@acme.test", "owner@acme.test"]


def test_member_added_removed_and_owner_granted(
    owner, teammate, django_capture_on_commit_callbacks
) -> None:
    from clinik.accounts.models import Invitation, Membership

    joiner: Any = UserFactory(email="join@acme.test", password="a sturdy passphrase 42")
    _invitation, token = Invitation.issue(owner.org, joiner.email, "developer", owner.user)
    client = Client()
    client.force_login(joiner)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/accounts/invitations/{token}/").status_code == 302
    assert templates() == ["member-added"]
    assert [m.to for m in mail.outbox] == [["owner@acme.test"]]
    assert joiner.name in mail.outbox[0].body

    mail.outbox.clear()
    base = f"/o/{owner.org.pk}/team/members/{teammate.membership.pk}"
    with django_capture_on_commit_callbacks(execute=True):
        assert owner.client().post(f"{base}/role/", {"role": "admin"}).status_code == 302
    assert not mail.outbox  # admin is not owner: no alert
    with django_capture_on_commit_callbacks(execute=True):
        assert owner.client().post(f"{base}/role/", {"role": "owner"}).status_code == 302
        assert owner.client().post(f"{base}/role/", {"role": "owner"}).status_code == 302
    assert templates().count("owner-granted") == 2  # owner and new owner, once
    assert sorted(m.to[0] for m in mail.outbox) == ["dev@acme.test", "owner@acme.test"]

    mail.outbox.clear()
    member = Membership.objects.get(user=joiner)
    with django_capture_on_commit_callbacks(execute=True):
        path = f"/o/{owner.org.pk}/team/members/{member.pk}/remove/"
        assert owner.client().post(path).status_code == 302
    assert templates().count("member-removed") == 3  # two owners and the member
    assert sorted(m.to[0] for m in mail.outbox) == [
        "dev@acme.test",
        "join@acme.test",
        "owner@acme.test",
    ]


def test_key_created_and_revoked_alert_owners_once(
    owner, django_capture_on_commit_callbacks
) -> None:
    from clinik.keys.models import ApiKey

    client = owner.client()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            f"/o/{owner.org.pk}/keys/new/", {"name": "ci", "scopes": "read", "expires": "90"}
        )
    key = ApiKey.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/o/{owner.org.pk}/keys/{key.pk}/revoke/")
        client.post(f"/o/{owner.org.pk}/keys/{key.pk}/revoke/")  # already revoked
    assert templates() == ["key-created", "key-revoked"]


def test_closure_request_alerts_members_once(
    owner, teammate, django_capture_on_commit_callbacks
) -> None:
    path = f"/o/{owner.org.pk}/privacy/close/"
    with django_capture_on_commit_callbacks(execute=True):
        owner.client().post(path, {"confirm_name": owner.org.name})
        owner.client().post(path, {"confirm_name": owner.org.name})
    assert templates() == ["closure-requested", "closure-requested"]
    assert sorted(m.to[0] for m in mail.outbox) == ["dev@acme.test", "owner@acme.test"]


def test_password_reset_by_email_alerts(owner, django_capture_on_commit_callbacks) -> None:
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    uid = urlsafe_base64_encode(force_bytes(owner.user.pk))
    token = default_token_generator.make_token(owner.user)
    client = Client()
    response = client.get(f"/accounts/password-reset/{uid}/{token}/")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            response["Location"],
            {
                "new_password1": "another sturdy passphrase 7",
                "new_password2": "another sturdy passphrase 7",
            },
        )
    assert response.status_code == 302
    assert templates() == ["password-changed"]
