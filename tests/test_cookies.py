"""Policy §9: "The Dashboard uses essential cookies for session management" and "We do
not use advertising cookies or tracking pixels." Signing up, signing in and walking the
dashboard and the public pages sets two cookies only, the session and the CSRF token,
both HttpOnly and SameSite; analytics set none from the server (the consent choice is
an essential cookie written by static/js/consent.js only when the visitor chooses)."""

from django.conf import settings
from django.test import Client

from tests.conftest import Persona

ESSENTIAL = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}


def test_the_dashboard_sets_only_the_session_and_csrf_cookies(owner: Persona) -> None:
    browser = Client()
    set_cookies: dict[str, dict[str, object]] = {}

    def visit(method: str, path: str, data: dict[str, str] | None = None) -> None:
        response = getattr(browser, method)(path, data or {})
        assert response.status_code in (200, 302), (path, response.status_code)
        for name, morsel in response.cookies.items():
            set_cookies[name] = {
                "httponly": morsel["httponly"],
                "samesite": morsel["samesite"],
                "max-age": morsel["max-age"],
            }

    for path in ("/", "/privacy", "/security", "/status", "/emails", "/accounts/signin/"):
        visit("get", path)
    visit(
        "post",
        "/accounts/signup/",
        {
            "email": "cookie@acme.test",
            "name": "Cookie Tester",
            "org_name": "Cookie Clinic",
            "password": "a sturdy passphrase 42",
        },
    )
    visit("post", "/accounts/signout/")
    visit("post", "/accounts/signin/", {"email": owner.user.email, "password": owner.password})
    org = f"/o/{owner.org.pk}"
    for path in (
        "/dashboard/",
        f"{org}/keys/",
        f"{org}/usage/",
        f"{org}/audit/",
        f"{org}/privacy/",
        f"{org}/team/",
        f"{org}/webhooks/",
        "/accounts/settings/",
        "/accounts/data/",
    ):
        visit("get", path)

    assert set_cookies, "nothing was set: the walk did not sign in"
    assert set(set_cookies) <= ESSENTIAL, set_cookies
    assert settings.SESSION_COOKIE_NAME in set_cookies
    for name, flags in set_cookies.items():
        if flags["max-age"] == 0:
            continue  # a deletion (sign-out)
        assert flags["httponly"] is True, name
        assert str(flags["samesite"]).lower() in ("lax", "strict"), name
