"""The components demo (sdk/demo: a patient list, a chart and an edit form built with
@clinikapi/react) behind its key-adding proxy, driven in Chromium against the live
server of tests/test_sdk.py; screenshots go to test-output/."""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.liveserver import free_port
from tests.test_browser import OUTPUT, browser_page  # noqa: F401 (a fixture)
from tests.test_sdk import SDK, _post, live  # noqa: F401 (a fixture)


@pytest.fixture
def demo(live: dict[str, str], tmp_path: Path) -> Iterator[str]:  # noqa: F811
    """The components demo page (sdk/demo) behind its key-adding proxy, on a free port."""
    import socket
    import urllib.request

    port = free_port()
    env = {
        **os.environ,
        "CLINIK_BASE_URL": live["CLINIK_BASE_URL"],
        "CLINIK_API_KEY": live["CLINIK_API_KEY"],
        "PORT": str(port),
    }
    node = shutil.which("node") or "node"
    with (tmp_path / "demo.log").open("wb") as out:
        process = subprocess.Popen(
            [node, "demo/server.mjs"], cwd=SDK, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp_path / "demo.log").read_text()) from None
                time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url, timeout=10) as page:
            assert live["CLINIK_API_KEY"].encode() not in page.read()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.browser
def test_the_components_demo_in_a_browser(
    live: dict[str, str],  # noqa: F811 (the fixture imported above)
    demo: str,
    browser_page: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    base, key = live["CLINIK_BASE_URL"], live["CLINIK_API_KEY"]
    family = f"Demo{int(time.time())}"
    patient = _post(
        base,
        key,
        {
            "resourceType": "Patient",
            "name": [{"family": family, "given": ["Grace"]}],
            "birthDate": "1961-07-04",
            "gender": "female",
        },
    )
    for day, kg in (("2024-01-05", 81.2), ("2024-03-05", 79.9), ("2024-06-05", 77.4)):
        _post(
            base,
            key,
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {
                    "text": "Body weight",
                    "coding": [{"system": "http://loinc.org", "code": "29463-7"}],
                },
                "subject": {"reference": f"Patient/{patient['id']}"},
                "effectiveDateTime": day,
                "valueQuantity": {
                    "value": kg,
                    "unit": "kg",
                    "system": "http://unitsofmeasure.org",
                    "code": "kg",
                },
            },
        )
    page, console_errors = browser_page
    page.set_viewport_size({"width": 1100, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.headers.get("authorization", "")))
    page.goto(demo)
    page.get_by_label("Family name").fill(family)
    page.get_by_label("Family name").press("Enter")
    row = page.get_by_role("row").filter(has_text=f"Grace {family}")
    row.wait_for()
    page.screenshot(path=str(OUTPUT / "sdk-demo-1-list.png"), full_page=True)

    row.click()
    page.get_by_role("region", name="Patient").get_by_text(f"Grace {family}").wait_for()
    chart = page.get_by_role("img", name="Body weight")
    chart.wait_for()
    assert chart.locator("circle").count() == 3
    page.screenshot(path=str(OUTPUT / "sdk-demo-2-chart.png"), full_page=True)

    birth = page.get_by_label("Birth date")
    birth.fill("1961-13-45")
    page.get_by_role("button", name="Save changes").click()
    page.locator("[aria-invalid=true]").wait_for()
    assert birth.get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Family name").get_attribute("aria-invalid") == "false"
    message = page.locator(f"#{birth.get_attribute('aria-describedby')}")
    assert message.inner_text().strip()
    page.screenshot(path=str(OUTPUT / "sdk-demo-3-validation.png"), full_page=True)

    assert not any(requests), "the page itself never sends an Authorization header"
    unexpected = [e for e in console_errors if "400" not in e]
    assert unexpected == []
