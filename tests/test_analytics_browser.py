"""The consent banner in a real Chromium (Playwright + Debian's chromium), every network
request recorded: before consent, after a refusal and with Global Privacy Control or
Do Not Track, no request reaches the analytics host and no analytics cookie or
localStorage entry exists; after acceptance, events arrive at the local capture server."""

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings
from django.utils.csp import CSP

from tests.conftest import wait_for
from tests.posthog_server import PostHogServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI", "").lower() == "true":
        raise RuntimeError("CI=true but no chromium on PATH: .ci/run installs Debian's chromium")
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
GPC = "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true});"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36"
LOOK_HUMAN = (
    "Object.defineProperty(Navigator.prototype, 'webdriver', {get: () => false});"
    "Object.defineProperty(Navigator.prototype, 'userAgentData', {get: () => undefined});"
)
DNT = "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'});"


class Visit:
    """One browser context: its requests, cookies and storage."""

    def __init__(self, context: Any, server: PostHogServer) -> None:
        self.context, self.server = context, server
        self.requests: list[str] = []
        self.console: list[str] = []
        context.on("request", lambda r: self.requests.append(r.url))
        self.page = context.new_page()
        self.page.on("console", lambda m: self.console.append(m.text))

    def to_analytics(self) -> list[str]:
        return [u for u in self.requests if u.startswith(self.server.url)]

    def analytics_cookies(self) -> list[str]:
        return [c["name"] for c in self.context.cookies() if c["name"].startswith("ph_")]

    def analytics_storage(self) -> list[str]:
        keys = self.page.evaluate(
            "() => [...Object.keys(localStorage), ...Object.keys(sessionStorage)]"
        )
        return [k for k in keys if k.startswith("ph_") or "posthog" in k.lower()]

    def assert_nothing_tracked(self) -> None:
        assert self.to_analytics() == []
        assert self.server.requests == []
        assert self.analytics_cookies() == []
        assert self.analytics_storage() == []
        assert self.page.evaluate("typeof window.posthog") == "undefined"
        assert not [u for u in self.requests if "/static/vendor/posthog" in u]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"],
        )
        yield chromium
        chromium.close()
        connections.close_all()


@pytest.fixture
def posthog() -> Iterator[PostHogServer]:
    server = PostHogServer().start()
    csp = {**settings.SECURE_CSP, "connect-src": [CSP.SELF, server.url]}
    with override_settings(
        POSTHOG_API_KEY="phc_browser_test", POSTHOG_HOST=server.url, SECURE_CSP=csp
    ):
        yield server
    server.stop()


def visit(browser: Any, server: PostHogServer, init_script: str = "") -> Visit:
    # posthog-js drops events from browsers that look automated (a "HeadlessChrome"
    # user agent or brand, navigator.webdriver): this context looks like a person's.
    context = browser.new_context(user_agent=USER_AGENT)
    context.add_init_script(LOOK_HUMAN)
    if init_script:
        context.add_init_script(init_script)
    return Visit(context, server)


def test_before_consent_nothing_is_loaded_or_sent(live_server, browser, posthog) -> None:
    v = visit(browser, posthog)
    for path in ("/", "/privacy", "/security", "/status", "/accounts/signin/"):
        v.page.goto(live_server.url + path)
        v.page.wait_for_load_state("networkidle")
    assert v.page.get_by_role("dialog", name="Analytics cookies").is_visible()
    v.assert_nothing_tracked()


def test_after_refusal_nothing_is_loaded_or_sent_and_the_choice_is_kept(
    live_server, browser, posthog
) -> None:
    v = visit(browser, posthog)
    v.page.goto(live_server.url + "/privacy")
    v.page.get_by_role("button", name="Refuse").click()
    assert not v.page.get_by_role("dialog", name="Analytics cookies").is_visible()
    for path in ("/", "/security", "/privacy"):
        v.page.goto(live_server.url + path)
        v.page.wait_for_load_state("networkidle")
    assert not v.page.get_by_role("dialog", name="Analytics cookies").is_visible()
    cookies = {c["name"]: c["value"] for c in v.context.cookies()}
    assert cookies.get("clinik_analytics_consent") == "denied"
    v.assert_nothing_tracked()


@pytest.mark.parametrize("signal", [GPC, DNT], ids=["gpc", "dnt"])
def test_with_a_browser_privacy_signal_nothing_is_loaded_even_on_accept(
    live_server, browser, posthog, signal
) -> None:
    v = visit(browser, posthog, signal)
    v.page.goto(live_server.url + "/privacy")
    v.page.wait_for_load_state("networkidle")
    assert not v.page.get_by_role("dialog", name="Analytics cookies").is_visible()
    v.page.get_by_role("button", name="Cookie settings").click()
    assert v.page.get_by_text("Your browser asks sites not to track you").is_visible()
    assert not v.page.get_by_role("button", name="Accept analytics").is_visible()
    v.page.goto(live_server.url + "/")
    v.page.wait_for_load_state("networkidle")
    v.assert_nothing_tracked()


def test_after_acceptance_events_arrive_scrubbed_and_can_be_withdrawn(
    live_server, browser, posthog, owner
) -> None:
    v = visit(browser, posthog)
    v.page.goto(live_server.url + "/accounts/signin/")
    v.page.get_by_role("button", name="Accept analytics").click()
    assert wait_for(lambda: any(e["event"] == "$pageview" for e in posthog.events()))
    v.page.get_by_label("Email").fill(owner.user.email)
    v.page.get_by_label("Password").fill(owner.password)
    v.page.get_by_role("button", name="Sign in").click()
    v.page.wait_for_url("**/o/*/")
    org_path = f"/o/{owner.org.pk}/"
    assert wait_for(
        lambda: any(
            "/o/{id}/" in str(e["properties"].get("$current_url")) for e in posthog.events()
        )
    )
    raw = posthog.raw()
    for secret in (str(owner.org.pk), owner.org.name, owner.user.email, owner.password):
        assert secret not in raw, secret
    assert org_path in v.page.url
    assert v.analytics_storage() or v.analytics_cookies()  # posthog-js keeps its id

    # changed mind: the footer link, then Refuse, clears what posthog-js stored
    v.page.goto(live_server.url + "/privacy")
    v.page.get_by_role("button", name="Cookie settings").first.click()
    v.page.get_by_role("button", name="Refuse").click()
    assert v.analytics_cookies() == [] and v.analytics_storage() == []
    v.page.goto(live_server.url + "/security")
    v.page.wait_for_load_state("networkidle")
    assert v.page.evaluate("typeof window.posthog") == "undefined"
    assert not [c for c in v.console if "Content Security Policy" in c], v.console
