"""Dashboard sign-in through Supabase Auth, against a local GoTrue server that signs
real JWTs (tests/supabase_fake.py). Every way in ends in an ordinary Django session."""

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core import mail
from django.test import Client

from clinik.accounts.models import Membership, User

if TYPE_CHECKING:
    from tests.supabase_fake import FakeGoTrue

pytest_plugins = ["tests.supabase_fake"]
pytestmark = pytest.mark.django_db

PASSWORD = "a sturdy passphrase 42"


def _follow(client: Client, link: str) -> Any:
    parts = urlsplit(link)
    return client.get(f"{parts.path}?{parts.query}")


def _signed_in_as(client: Client) -> User | None:
    from django.contrib.auth import get_user

    user = get_user(client)
    return user if user.is_authenticated else None


def _sign_in(client: Client, email: str, password: str = PASSWORD) -> Any:
    return client.post("/accounts/signin/", {"email": email, "password": password})


def test_password_sign_in_starts_a_django_session(fake_supabase: "FakeGoTrue", owner) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    client = Client()
    client.get("/accounts/signin/")
    before = client.cookies.get(settings.SESSION_COOKIE_NAME)
    response = _sign_in(client, "owner@acme.test")
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/"
    assert _signed_in_as(client) == owner.user
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert before is None or before.value != after  # the session id rotates
    tokens = client.session["supabase_tokens"]
    # The refresh token lives in the server-side session only: not in a cookie.
    assert all(tokens["refresh"] not in c.value for c in client.cookies.values())
    page = client.get(f"/o/{owner.org.pk}/")
    assert page.status_code == 200
    assert tokens["refresh"].encode() not in page.content
    assert tokens["access"].encode() not in page.content


def test_wrong_password_and_unknown_email_get_the_same_answer(
    fake_supabase: "FakeGoTrue", owner
) -> None:
    fake_supabase.add_user("owner@acme.test", PASSWORD)
    wrong = _sign_in(Client(), "owner@acme.test", "not the password 1")
    unknown = _sign_in(Client(), "nobody@acme.test", "not the password 1")
    assert wrong.status_code == unknown.status_code == 400
    assert b"Email or password is incorrect." in wrong.content
    assert _page(wrong, b"owner@acme.test") == _page(unknown, b"nobody@acme.test")


def _page(response: Any, email: bytes) -> bytes:
    import re

    body = response.content.replace(email, b"EMAIL")
    body = re.sub(rb'nonce="[^"]+"', b"", body)  # per response (CSP)
    return re.sub(rb"[A-Za-z0-9]{64}", b"CSRF", body)


def test_sign_in_is_throttled_like_django_sign_in(fake_supabase: "FakeGoTrue", settings) -> None:
    settings.SIGNIN_MAX_FAILURES = 3
    fake_supabase.add_user("victim@acme.test", PASSWORD)
    client = Client()
    for _ in range(3):
        assert _sign_in(client, "victim@acme.test", "guess guess guess").status_code == 400
    calls = len(fake_supabase.calls)
    assert _sign_in(client, "victim@acme.test", PASSWORD).status_code == 429
    assert _sign_in(client, "ghost@acme.test", "x").status_code == 400  # per email
    assert len(fake_supabase.calls) == calls + 1  # the locked attempt never reached Supabase


def test_sign_up_confirms_the_email_then_creates_user_and_org(
    fake_supabase: "FakeGoTrue", django_capture_on_commit_callbacks
) -> None:
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {
            "name": "Sam Sup",
            "email": "sam@new.test",
            "org_name": "Sam Clinic",
            "password": PASSWORD,
        },
    )
    assert b"Check your email" in response.content
    assert not User.objects.filter(email="sam@new.test").exists()
    response = _follow(client, fake_supabase.last_link("sam@new.test", "signup"))
    assert response.status_code == 302
    user = User.objects.get(email="sam@new.test")
    assert user.external_auth_id == fake_supabase.by_email("sam@new.test").id  # type: ignore[union-attr]
    assert not user.has_usable_password()
    membership = Membership.objects.get(user=user)
    assert membership.org.name == "Sam Clinic" and membership.role == "owner"
    assert _signed_in_as(client) == user
    assert client.get(client.get("/dashboard/")["Location"]).status_code == 200


def test_a_link_opened_without_its_pkce_verifier_is_refused(fake_supabase: "FakeGoTrue") -> None:
    Client().post("/accounts/auth/magic-link/", {"email": "pat@new.test"})
    other_browser = Client()
    response = _follow(other_browser, fake_supabase.last_link("pat@new.test", "magiclink"))
    assert response.status_code == 302 and response["Location"] == "/accounts/signin/"
    assert _signed_in_as(other_browser) is None


def test_magic_link_signs_in_and_answers_the_same_for_any_address(
    fake_supabase: "FakeGoTrue", owner
) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    client = Client()
    known = client.post("/accounts/auth/magic-link/", {"email": "owner@acme.test"})
    unknown = Client().post("/accounts/auth/magic-link/", {"email": "who@nowhere.test"})
    assert known.status_code == unknown.status_code == 200
    assert _page(known, b"@") == _page(unknown, b"@")
    response = _follow(client, fake_supabase.last_link("owner@acme.test", "magiclink"))
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert _signed_in_as(client) == owner.user


def test_a_token_hash_link_signs_in_from_any_browser(fake_supabase: "FakeGoTrue") -> None:
    Client().post("/accounts/auth/magic-link/", {"email": "tia@new.test"})
    link = fake_supabase.last_link("tia@new.test", "magiclink")
    hashed = fake_supabase.token_hash_link(link, "magiclink")
    other_browser = Client()
    response = _follow(other_browser, hashed)
    assert response.status_code == 302 and response["Location"] == "/dashboard/"
    assert _signed_in_as(other_browser) == User.objects.get(email="tia@new.test")
    replay = _follow(Client(), hashed)
    assert replay["Location"] == "/accounts/signin/"  # used once


def test_oauth_github_pkce_signs_in(fake_supabase: "FakeGoTrue") -> None:
    client = Client()
    start = client.get("/accounts/auth/oauth/github/")
    assert start.status_code == 302
    authorize = urlsplit(start["Location"])
    assert authorize.path == "/auth/v1/authorize" and "code_challenge=" in authorize.query
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(start["Location"])
        raise AssertionError("the provider should redirect")
    except urllib.error.HTTPError as exc:
        back = exc.headers["Location"]
    response = _follow(client, back)
    assert response.status_code == 302
    user = User.objects.get(email="octo@github.test")
    assert user.name == "Octo Cat" and user.auth_methods == ["github"]
    assert _signed_in_as(client) == user
    assert client.get("/dashboard/")["Location"] == "/orgs/new/"  # no org yet


def test_a_newly_linked_provider_sends_a_security_alert(
    fake_supabase: "FakeGoTrue", owner, django_capture_on_commit_callbacks
) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id, owner.user.auth_methods = remote.id, ["email"]
    owner.user.save()
    fake_supabase.oauth_identity = {"email": "owner@acme.test", "name": "Olivia"}
    client = Client()
    start = client.get("/accounts/auth/oauth/github/")
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(start["Location"])
    except urllib.error.HTTPError as exc:
        back = exc.headers["Location"]
    with django_capture_on_commit_callbacks(execute=True):
        _follow(client, back)
    assert _signed_in_as(client) == owner.user
    owner.user.refresh_from_db()
    assert owner.user.auth_methods == ["email", "github"]
    assert [m.to for m in mail.outbox] == [["owner@acme.test"]]
    assert "new way to sign in" in mail.outbox[0].subject and "github" in mail.outbox[0].body


def test_unknown_oauth_provider_is_404(fake_supabase: "FakeGoTrue") -> None:
    assert Client().get("/accounts/auth/oauth/myspace/").status_code == 404


def test_sign_out_revokes_the_supabase_refresh_token(fake_supabase: "FakeGoTrue", owner) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    client = Client()
    _sign_in(client, "owner@acme.test")
    refresh = client.session["supabase_tokens"]["refresh"]
    assert refresh in fake_supabase.refresh
    assert client.post("/accounts/signout/").status_code == 302
    assert refresh not in fake_supabase.refresh
    assert _signed_in_as(client) is None
    assert client.get(f"/o/{owner.org.pk}/").status_code == 302  # back to sign-in


def test_sign_out_with_an_expired_access_token_refreshes_then_revokes(
    fake_supabase: "FakeGoTrue", owner
) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    client = Client()
    _sign_in(client, "owner@acme.test")
    session = client.session
    old_refresh = session["supabase_tokens"]["refresh"]
    expired = fake_supabase.sign({**fake_supabase.claims_for(remote, "password"), "exp": 1})
    session["supabase_tokens"] = {"access": expired, "refresh": old_refresh}
    session.save()
    client.post("/accounts/signout/")
    assert "POST /token" in fake_supabase.calls and "POST /logout" in fake_supabase.calls
    assert not [r for r in fake_supabase.refresh.values() if r["user"] == remote.id]


def test_existing_password_account_links_once_the_email_is_proven(
    fake_supabase: "FakeGoTrue", owner, django_capture_on_commit_callbacks
) -> None:
    client = Client()
    client.post("/accounts/auth/magic-link/", {"email": "owner@acme.test"})
    with django_capture_on_commit_callbacks(execute=True):
        _follow(client, fake_supabase.last_link("owner@acme.test", "magiclink"))
    owner.user.refresh_from_db()
    assert owner.user.external_auth_id == fake_supabase.by_email("owner@acme.test").id  # type: ignore[union-attr]
    assert User.objects.filter(email="owner@acme.test").count() == 1
    assert _signed_in_as(client) == owner.user
    assert [m.to for m in mail.outbox] == [["owner@acme.test"]]
    assert "new way to sign in" in mail.outbox[0].subject


def test_unproven_email_never_links_to_an_existing_account(
    fake_supabase: "FakeGoTrue", owner
) -> None:
    # Supabase with email confirmation off hands out a password session for an
    # address nobody proved: only an email link (magic link, confirmation) links.
    fake_supabase.autoconfirm = True
    client = Client()
    client.post(
        "/accounts/signup/",
        {"name": "Mallory", "email": "owner@acme.test", "org_name": "Evil", "password": PASSWORD},
    )
    fake_supabase.by_email("owner@acme.test").confirmed = False  # type: ignore[union-attr]
    _sign_in(client, "owner@acme.test")
    owner.user.refresh_from_db()
    assert owner.user.external_auth_id is None
    assert _signed_in_as(client) is None


def test_an_email_change_at_the_provider_never_links_to_another_account(
    fake_supabase: "FakeGoTrue", owner, outsider
) -> None:
    remote = fake_supabase.add_user("out@other.test", PASSWORD)
    outsider.user.external_auth_id = remote.id
    outsider.user.save()
    remote.email = "owner@acme.test"  # changed (and confirmed) at Supabase
    client = Client()
    assert _sign_in(client, "owner@acme.test").status_code == 302
    assert _signed_in_as(client) == outsider.user  # found by sub, not by email
    outsider.user.refresh_from_db()
    owner.user.refresh_from_db()
    assert outsider.user.email == "out@other.test"  # the address is taken here
    assert owner.user.external_auth_id is None
    assert client.get(f"/o/{owner.org.pk}/").status_code == 404


def test_email_change_is_confirmed_at_the_new_address(
    fake_supabase: "FakeGoTrue", owner, django_capture_on_commit_callbacks
) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    client = Client()
    _sign_in(client, "owner@acme.test")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            "/accounts/settings/",
            {
                "form": "profile",
                "name": "Olivia",
                "email": "olivia@new.test",
                "current_password": owner.password,
            },
        )
    owner.user.refresh_from_db()
    assert owner.user.email == "owner@acme.test"  # not before the new address is proven
    assert mail.outbox[-1].to == ["owner@acme.test"]
    with django_capture_on_commit_callbacks(execute=True):
        _follow(client, fake_supabase.last_link("olivia@new.test", "email_change"))
    owner.user.refresh_from_db()
    assert owner.user.email == "olivia@new.test"
    changed = [m for m in mail.outbox if "email address was changed" in m.subject]
    assert sorted(m.to[0] for m in changed) == ["olivia@new.test", "owner@acme.test"]  # one each


def test_password_reset_through_supabase(
    fake_supabase: "FakeGoTrue", owner, django_capture_on_commit_callbacks
) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    client = Client()
    known = client.post("/accounts/password-reset/", {"email": "owner@acme.test"})
    unknown = Client().post("/accounts/password-reset/", {"email": "nobody@acme.test"})
    assert known.status_code == unknown.status_code == 302
    assert known["Location"] == unknown["Location"]
    assert not mail.outbox  # Supabase sends the link, not us
    response = _follow(client, fake_supabase.last_link("owner@acme.test", "recovery"))
    assert response["Location"] == "/accounts/auth/password/"
    assert client.get("/accounts/auth/password/").status_code == 200
    new = "another sturdy passphrase 7"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/accounts/auth/password/", {"new_password1": new, "new_password2": new}
        )
    assert response.status_code == 302
    assert remote.password == new
    assert "password was changed" in mail.outbox[-1].subject


def test_new_views_refuse_wrong_methods(fake_supabase: "FakeGoTrue", owner) -> None:
    client = owner.client()
    assert client.get("/accounts/auth/magic-link/").status_code == 405
    assert client.post("/accounts/auth/callback/").status_code == 405
    assert client.put("/accounts/auth/password/").status_code == 405
    assert client.post("/accounts/auth/oauth/github/").status_code == 405


def test_dashboard_pages_never_call_supabase_after_sign_in(
    fake_supabase: "FakeGoTrue", owner
) -> None:
    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    client = Client()
    _sign_in(client, "owner@acme.test")
    calls = len(fake_supabase.calls)
    for path in ("/dashboard/", f"/o/{owner.org.pk}/", f"/o/{owner.org.pk}/team/"):
        assert client.get(path).status_code in (200, 302)
    assert len(fake_supabase.calls) == calls


def test_a_token_signed_by_an_unknown_key_starts_no_session(
    fake_supabase: "FakeGoTrue", owner
) -> None:
    from tests.supabase_fake import new_key

    remote = fake_supabase.add_user("owner@acme.test", PASSWORD)
    owner.user.external_auth_id = remote.id
    owner.user.save()
    rogue = new_key()
    fake_supabase.keys.append(rogue)  # signs with it, but the JWKS will not show it
    fake_supabase.keys = [rogue, *[k for k in fake_supabase.keys if k is not rogue]]
    published = fake_supabase.jwks

    def jwks_without_rogue() -> dict[str, Any]:
        return {"keys": [k for k in published()["keys"] if k["kid"] != rogue.kid]}

    fake_supabase.jwks = jwks_without_rogue  # type: ignore[method-assign]
    client = Client()
    assert _sign_in(client, "owner@acme.test").status_code == 302
    assert _signed_in_as(client) is None
