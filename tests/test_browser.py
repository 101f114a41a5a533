"""A real browser signs up and lands on the overview (Playwright + Debian's chromium)."""

import shutil
from pathlib import Path

import pytest
from django.db import connections

from clinik.lib.env import env_bool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"
MISSING = (
    "chromium is not installed, so the browser tests cannot run: `sudo apt-get install"
    " chromium` (or CLINIK_SKIP_BROWSER=1 to skip them knowingly)"
)

# A green `make test` means the browser tests ran. Without chromium the run stops at
# once with the fix; only an explicit CLINIK_SKIP_BROWSER=1 skips them, and says so.
if env_bool("CLINIK_SKIP_BROWSER", False):
    pytest.skip("CLINIK_SKIP_BROWSER=1: the browser tests are skipped", allow_module_level=True)
if CHROMIUM is None:
    pytest.exit(MISSING, returncode=1)


@pytest.fixture
def browser_page(monkeypatch):
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; Django's ORM calls from
    # the test body (not from the page) are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        yield page, errors
        browser.close()
        # ORM calls made while Playwright's loop runs get their own connection
        # (asgiref locals are per context); close it so the test database can be dropped.
        connections.close_all()


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_sign_up_lands_on_the_overview(live_server, browser_page) -> None:
    from clinik.accounts.models import Membership

    page, console_errors = browser_page
    page.goto(live_server.url + "/")
    page.get_by_role("link", name="Create a free account").click()
    page.get_by_label("Your name").fill("Bea Browser")
    page.get_by_label("Email").fill("bea@browser.test")
    page.get_by_label("Organization name").fill("Browser Clinic")
    page.get_by_label("Password").fill("a sturdy passphrase 42")
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url("**/o/*/")
    assert page.get_by_role("heading", name="Browser Clinic").is_visible()
    assert page.get_by_text("Getting started").is_visible()
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "signup-overview.png"), full_page=True)
    assert Membership.objects.get(user__email="bea@browser.test").role == "owner"
    # htmx loaded from our own static files, and the CSP blocked nothing.
    assert page.evaluate("typeof window.htmx") == "object"
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
