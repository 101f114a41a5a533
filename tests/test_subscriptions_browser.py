"""A real browser on the Webhooks page: a test ping and a confirmed secret rotation
redraw only their part of the page (htmx, no reload)."""

from typing import Any

import pytest

from clinik.subscriptions.models import Subscription
from clinik.subscriptions.sealing import signing_secret
from tests.conftest import Persona
from tests.test_browser import OUTPUT, browser_page  # noqa: F401 (the fixture)
from tests.test_subscriptions_dispatch import receiver, subscribe  # noqa: F401 (fixture)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_ping_and_rotate_in_the_browser(
    live_server: Any,
    browser_page: Any,  # noqa: F811
    owner: Persona,
    api: Any,
    receiver: Any,  # noqa: F811
) -> None:
    created = subscribe(api, receiver.url, "Observation")
    page, console_errors = browser_page
    page.goto(live_server.url + "/accounts/signin/")
    page.get_by_label("Email").fill(owner.user.email)
    page.get_by_label("Password").fill(owner.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/o/*/")
    page.goto(live_server.url + f"/o/{owner.org.pk}/webhooks/")
    page.evaluate("window.__samePage = true")  # survives only if nothing reloads

    page.get_by_role("button", name="Send test ping").click()
    page.get_by_text("A test ping is on its way").wait_for()
    page.locator("#webhook-deliveries").get_by_text("Ping").first.wait_for()
    assert len(receiver.requests) == 1

    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("button", name="Rotate secret").click()
    page.locator("#new-secret").wait_for()
    secret = signing_secret(Subscription.objects.get(resource_id=created["id"]))
    assert page.locator("#new-secret").inner_text().strip() == secret
    assert dialogs and "Rotate the signing secret" in dialogs[0]
    assert page.evaluate("window.__samePage") is True
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "webhooks-rotated.png"), full_page=True)
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
