import re

import pytest
from django.conf import settings
from django.test import Client, override_settings

from clinik.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def _signin(client: Client, email: str, password: str):
    return client.post("/accounts/signin/", {"email": email, "password": password})


def test_signin_page_renders(client: Client) -> None:
    assert client.get("/accounts/signin/").status_code == 200


def test_signin_success_changes_session_id(client: Client, owner) -> None:
    client.get("/accounts/signin/")
    client.session["probe"] = 1
    before = client.session.session_key
    response = _signin(client, "owner@acme.test", owner.password)
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert client.session.session_key != before
    assert AuditEvent.objects.filter(action="account.signin", actor_id=str(owner.user.pk)).exists()


def test_signin_email_is_case_insensitive(client: Client, owner) -> None:
    assert _signin(client, " OWNER@Acme.test ", owner.password).status_code == 302


def test_wrong_password_gives_generic_error(client: Client, owner) -> None:
    response = _signin(client, "owner@acme.test", "wrong password!")
    assert response.status_code == 400
    assert b"Email or password is incorrect." in response.content
    event = AuditEvent.objects.get(action="account.signin_failed")
    assert event.outcome == "failure"
    assert event.actor_id == ""  # the attempted email is not recorded


def test_unknown_email_gives_the_same_error(client: Client) -> None:
    response = _signin(client, "nobody@acme.test", "wrong password!")
    assert response.status_code == 400
    assert b"Email or password is incorrect." in response.content


def _without_tokens(content: bytes, local_part: str) -> bytes:
    """The page minus what differs on every render (CSRF tokens, CSP nonces) and the email."""
    text = re.sub(rb'(csrfmiddlewaretoken" value="|X-CSRFToken": "|nonce=")[^"]+', rb"\1", content)
    return text.replace(f"{local_part}@acme.test".encode(), b"EMAIL")


def _lock_out(client: Client, email: str) -> None:
    for _ in range(settings.SIGNIN_MAX_FAILURES):
        assert _signin(client, email, "wrong password!").status_code == 400


def test_repeated_failures_are_throttled_even_with_the_right_password(
    client: Client, owner
) -> None:
    _lock_out(client, "owner@acme.test")
    response = _signin(client, "owner@acme.test", owner.password)
    assert response.status_code == 429
    assert b"Too many failed attempts" in response.content
    assert "_auth_user_id" not in client.session


def test_throttle_does_not_reveal_whether_the_email_exists(client: Client, owner) -> None:
    _lock_out(client, "owner@acme.test")
    _lock_out(client, "ghost@acme.test")
    known = _signin(client, "owner@acme.test", "x" * 12)
    unknown = _signin(client, "ghost@acme.test", "x" * 12)
    assert known.status_code == unknown.status_code == 429
    assert _without_tokens(known.content, "owner") == _without_tokens(unknown.content, "ghost")


def test_lockout_expires_after_the_configured_time(client: Client, owner) -> None:
    from django.core.cache import cache

    _lock_out(client, "owner@acme.test")
    redis_client = cache._cache.get_client()  # type: ignore[attr-defined]
    keys = redis_client.keys(cache.make_key("signin-fail:*"))
    assert len(keys) == 2  # one per email hash, one per IP; no plain email in Redis
    assert all(b"acme" not in key for key in keys)
    for key in keys:
        assert 0 < redis_client.ttl(key) <= settings.SIGNIN_LOCKOUT_SECONDS


def test_signin_wrong_method(client: Client) -> None:
    assert client.delete("/accounts/signin/").status_code == 405


def test_next_parameter_is_followed_only_when_local(client: Client, owner) -> None:
    response = client.post(
        "/accounts/signin/?next=/accounts/settings/",
        {"email": "owner@acme.test", "password": owner.password},
    )
    assert response["Location"] == "/accounts/settings/"
    client.logout()
    response = client.post(
        "/accounts/signin/?next=//evil.test/x",
        {"email": "owner@acme.test", "password": owner.password},
    )
    assert response["Location"] == "/dashboard/"


def test_behind_a_load_balancer_failures_count_per_client_address(client: Client) -> None:
    def attempt(email: str, forwarded: str) -> int:
        response = client.post(
            "/accounts/signin/",
            {"email": email, "password": "wrong password!"},
            REMOTE_ADDR="10.0.0.5",  # the load balancer
            HTTP_X_FORWARDED_FOR=forwarded,
        )
        return response.status_code

    with override_settings(TRUSTED_PROXY_COUNT=1, SIGNIN_MAX_FAILURES=1):  # an IP: 4
        for n in range(4):  # a new email each time, a new spoofed entry each time
            assert attempt(f"guess{n}@acme.test", f"192.0.2.{n}, 203.0.113.9") == 400
        assert attempt("guess9@acme.test", "192.0.2.99, 203.0.113.9") == 429
        assert attempt("guess9@acme.test", "203.0.113.10") == 400  # another client
