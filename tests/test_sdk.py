"""The TypeScript SDK's and React components' tests (vitest, under sdk/), run against a
live ClinikAPI started here: the real server on the test database, one organization
with a key, a second organization (the outsider), and a second server whose per-key
rate limit is tiny (the SDK must wait a 429 out). `make sdk` installed the packages."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clinik.accounts.models import Organization
from clinik.keys.models import ApiKey
from tests.liveserver import serve

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "sdk"


@pytest.fixture(scope="module")
def live(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    with django_db_blocker.unblock():
        orgs = [Organization.objects.create(name=f"SDK org {n}") for n in range(3)]
        issued = [
            ApiKey.issue(org=org, name="sdk", scopes="read-write", expires_at=None, created_by=None)
            for org in orgs
        ]
        keys = [plaintext for _key, plaintext in issued]
    logs = tmp_path_factory.mktemp("sdk-servers")
    limited = {"RATE_LIMIT_KEY_REQUESTS": "2", "RATE_LIMIT_WINDOW_SECONDS": "1"}
    try:
        with serve(logs) as server, serve(logs, env=limited) as limited_server:
            yield {
                "CLINIK_BASE_URL": f"{server.base}/fhir/R4",
                "CLINIK_API_KEY": keys[0],
                "CLINIK_OTHER_API_KEY": keys[1],
                "CLINIK_LIMITED_BASE_URL": f"{limited_server.base}/fhir/R4",
                "CLINIK_LIMITED_API_KEY": keys[2],
            }
    finally:
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
