"""The TypeScript SDK's and React components' tests (vitest, under sdk/), run against a
live ClinikAPI started here: the real server on the test database, one organization
with a key, a second organization (the outsider), and a second server whose per-key
rate limit is tiny (the SDK must wait a 429 out). `make sdk` installed the packages."""

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from clinik.accounts.models import Organization
from clinik.keys.models import ApiKey
from tests.test_browser import OUTPUT, browser_page  # noqa: F401 (a fixture)
from tests.test_gateway_live import _database_url, _free_port

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "sdk"


def _start(env_extra: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import socket

    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "4",
        **env_extra,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "clinik.wsgi",
                "--config",
                "clinik/gunicorn_conf.py",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}/fhir/R4"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}") from None
            time.sleep(0.1)


@pytest.fixture(scope="module")
def live(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    with django_db_blocker.unblock():
        orgs = [Organization.objects.create(name=f"SDK org {n}") for n in range(3)]
        keys = [
            ApiKey.issue(
                org=org, name="sdk", scopes="read-write", expires_at=None, created_by=None
            )[1]
            for org in orgs
        ]
    logs = tmp_path_factory.mktemp("sdk-servers")
    servers = []
    try:
        servers.append(_start({}, logs / "server.log"))
        servers.append(
            _start(
                {"RATE_LIMIT_KEY_REQUESTS": "2", "RATE_LIMIT_WINDOW_SECONDS": "1"},
                logs / "limited.log",
            )
        )
        yield {
            "CLINIK_BASE_URL": servers[0][1],
            "CLINIK_API_KEY": keys[0],
            "CLINIK_OTHER_API_KEY": keys[1],
            "CLINIK_LIMITED_BASE_URL": servers[1][1],
            "CLINIK_LIMITED_API_KEY": keys[2],
        }
    finally:
        for process, _url in servers:
            process.terminate()
            process.wait(timeout=10)
        with django_db_blocker.unblock():
            for org in orgs:
                org.delete()


def _npm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: install Node.js 18+ with npm (see the README's prerequisites)")
    if not (SDK / "node_modules").is_dir():
        pytest.fail("sdk/node_modules is missing: run `make sdk` (make test does it)")
    return subprocess.run(
        [npm, *args],
        cwd=SDK,
        env={**os.environ, **(env or {}), "CI": "true", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_sdk_and_components_pass_against_the_live_server(live: dict[str, str]) -> None:
    result = _npm("test", env=live)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "SKIPPED" not in output, output[-4000:]
    for key in live.values():
        if key.startswith("ck_"):
            assert key not in output


def _post(base: str, key: str, resource: dict[str, Any]) -> dict[str, Any]:
    import json
    import urllib.request

    request = urllib.request.Request(
        f"{base}/{resource['resourceType']}",
        data=json.dumps(resource).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        created: dict[str, Any] = json.load(answer)
    return created


@pytest.fixture
def demo(live: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The components demo page (sdk/demo) behind its key-adding proxy, on a free port."""
    import socket
    import urllib.request

    port = _free_port()
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
    live: dict[str, str],
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


def test_the_readme_sdk_quickstart_runs_as_written(live: dict[str, str]) -> None:
    readme = (ROOT / "README.md").read_text()
    code = readme.split("<!-- sdk-quickstart -->\n```js\n", 1)[1].split("```", 1)[0]
    script = SDK / "quickstart.test-run.mjs"
    script.write_text(code)
    try:
        result = subprocess.run(
            [shutil.which("node") or "node", script.name],
            cwd=SDK,
            env={
                **os.environ,
                "CLINIK_API_KEY": live["CLINIK_API_KEY"],
                "CLINIK_BASE_URL": live["CLINIK_BASE_URL"],
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        script.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "404" in result.stdout and "not-found" in result.stdout
    assert "exported" in result.stdout
