"""A real browser signs in through Supabase Auth (OAuth with PKCE, against the local
GoTrue server) and lands on the overview (Playwright + Debian's chromium)."""

from typing import Any

import pytest

from tests.test_browser import OUTPUT, browser_page  # noqa: F401

pytest_plugins = ["tests.supabase_fake"]


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_oauth_sign_in_lands_on_the_overview(
    live_server: Any,
    browser_page: Any,  # noqa: F811 (the fixture of tests/test_browser.py)
    fake_supabase: Any,
    owner: Any,
    settings: Any,
) -> None:
    settings.SITE_URL = live_server.url
    remote = fake_supabase.add_user(owner.user.email, None)
    remote.providers = ["github"]
    fake_supabase.oauth_identity = {"email": owner.user.email, "name": owner.user.name}
    owner.user.external_auth_id = remote.id
    owner.user.save(update_fields=["external_auth_id"])

    page, console_errors = browser_page
    page.goto(live_server.url + "/accounts/signin/")
    page.get_by_role("link", name="Continue with Github").click()
    page.wait_for_url(f"**/o/{owner.org.pk}/")
    assert page.get_by_role("heading", name="Acme Health").is_visible()
    assert "POST /token" in fake_supabase.calls  # the code was exchanged server-side
    # The Supabase tokens never reach the page's JavaScript: not in a cookie it can read.
    assert page.evaluate("document.cookie") == ""
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "supabase-oauth-overview.png"), full_page=True)
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
