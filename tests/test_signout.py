import pytest
from django.contrib.sessions.models import Session
from django.test import Client

pytestmark = pytest.mark.django_db


def test_signout_ends_the_session_on_the_server(client: Client, owner) -> None:
    client.post("/accounts/signin/", {"email": "owner@acme.test", "password": owner.password})
    session_key = client.session.session_key
    assert Session.objects.filter(session_key=session_key).exists()
    response = client.post("/accounts/signout/")
    assert response.status_code == 302
    assert not Session.objects.filter(session_key=session_key).exists()
    # Replaying the old cookie gets nowhere.
    replay = Client()
    replay.cookies["clinik_session"] = session_key or ""
    assert replay.get("/dashboard/").status_code == 302


def test_signout_requires_post(owner) -> None:
    assert owner.client().get("/accounts/signout/").status_code == 405


def test_session_expires_after_idle_time(owner, settings) -> None:
    import time_machine

    with time_machine.travel("2026-03-01 09:00", tick=False) as traveller:
        client = Client()
        client.post("/accounts/signin/", {"email": "owner@acme.test", "password": owner.password})
        traveller.shift(55 * 60)
        assert client.get("/dashboard/").status_code == 302  # still signed in: to the org
        assert client.get("/dashboard/")["Location"].startswith("/o/")
        traveller.shift(settings.SESSION_IDLE_MINUTES * 60 + 60)
        response = client.get("/dashboard/")
        assert response["Location"].startswith("/accounts/signin/")


def test_session_cookie_flags(client: Client, owner) -> None:
    response = client.post(
        "/accounts/signin/", {"email": "owner@acme.test", "password": owner.password}
    )
    cookie = response.cookies["clinik_session"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    assert int(cookie["max-age"]) == 60 * 60
