"""A real browser creates a key, copies it, and revokes it with one confirmed click
(htmx, no page reload); the API refuses the key at once."""

import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.conftest import Persona
from tests.test_browser import OUTPUT, browser_page  # noqa: F401 (the fixture)


def _status(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_create_copy_and_revoke_a_key_in_the_browser(
    live_server: Any,
    browser_page: Any,  # noqa: F811
    owner: Persona,
) -> None:
    page, console_errors = browser_page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(live_server.url + "/accounts/signin/")
    page.get_by_label("Email").fill(owner.user.email)
    page.get_by_label("Password").fill(owner.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/o/*/")
    page.locator(".steps").get_by_role("link", name="API keys").click()  # phone: no sidebar
    page.get_by_label("Name").fill("Browser key")
    page.get_by_label("Expires").select_option("never")
    page.get_by_role("button", name="Create key").click()
    plaintext = page.locator("#new-key").inner_text().strip()
    assert plaintext.startswith("ck_live_")
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("button", name="Copied").wait_for()  # the clipboard write is async
    OUTPUT.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT / "keys-created.png"), full_page=True)

    api = live_server.url + "/fhir/R4/Patient"  # a search: 200 with any key of the org
    assert _status(api, plaintext) == 200

    page.goto(live_server.url + f"/o/{owner.org.pk}/keys/")
    assert plaintext not in page.content()
    page.evaluate("window.__samePage = true")  # survives only if nothing reloads
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    row = page.locator("tr", has_text="Browser key")
    row.get_by_role("button", name="Revoke").click()
    row.get_by_text("Revoked").wait_for()
    assert dialogs and "Browser key" in dialogs[0]
    assert page.evaluate("window.__samePage") is True
    page.screenshot(path=str(OUTPUT / "keys-revoked.png"), full_page=True)
    assert _status(api, plaintext) == 401
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
