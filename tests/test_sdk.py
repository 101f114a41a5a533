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
