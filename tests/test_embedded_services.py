"""`make run` and `make test` on a machine without PostgreSQL or Redis (issue #14, item
6): `clinik.lib.services ensure` starts embedded ones where nothing answers, and leaves
answering services alone. The shared services of this machine are never stopped: the
embedded servers are started on unused ports, then stopped by the test."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def unused() -> Iterator[dict[str, str]]:
    """Environment for a machine where nothing answers on the configured addresses.
    The data directory is under var/ (as in development): started as root, the
    embedded PostgreSQL runs as an unprivileged user, which must reach it."""
    (ROOT / "var").mkdir(exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="embedded-test-", dir=ROOT / "var"))
    data.chmod(0o755)
    pg, rd = _free_port(), _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"CLINIK_TESTING", "CLINIK_EMBEDDED_SERVICES"}  # CI sets false
    }
    env |= {
        "CLINIK_EMBEDDED_DIR": str(data),
        "DATABASE_URL": f"postgres://clinik@127.0.0.1:{pg}/clinik",
        "DATABASE_OWNER_URL": f"postgres://clinik_owner@127.0.0.1:{pg}/clinik",
        "DATABASE_ADMIN_URL": f"postgres://postgres@127.0.0.1:{pg}/postgres",
        "REDIS_URL": f"redis://127.0.0.1:{rd}/0",
    }
    try:
        yield env
    finally:
        _run(env, "-m", "clinik.lib.services", "stop-embedded")
        shutil.rmtree(data, ignore_errors=True)


def test_embedded_postgres_and_redis_start_take_the_roles_and_migrations_and_answer(
    unused: dict[str, str],
) -> None:
    started = _run(unused, "-m", "clinik.lib.services", "ensure")
    assert started.returncode == 0, started.stderr
    assert "started an embedded PostgreSQL" in started.stdout
    assert "started an embedded Redis" in started.stdout
    data = Path(unused["CLINIK_EMBEDDED_DIR"])
    assert (data / "postgres" / "PG_VERSION").exists() and (data / "redis").is_dir()

    again = _run(unused, "-m", "clinik.lib.services", "ensure")
    assert (again.returncode, again.stdout) == (0, "")  # they answer now: nothing started

    bootstrap = _run(unused, "-m", "clinik.lib.services", "bootstrap")
    assert bootstrap.returncode == 0, bootstrap.stderr
    assert "created role clinik" in bootstrap.stdout
    migrate = _run({**unused, "CLINIK_DB_AS_OWNER": "1"}, "manage.py", "migrate", "--no-input")
    assert migrate.returncode == 0, migrate.stderr

    # The application, as its ordinary role, works against them.
    created = _run(unused, "manage.py", "create_org", "--name", "Embedded", "--email", "e@x.test")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout.strip().splitlines()[-1])["api_key"].startswith("ck_"), (
        created.stdout + created.stderr
    )
    health = _run(
        unused,
        "manage.py",
        "shell",
        "-c",
        "from django.test import Client; print(Client().get('/healthz').status_code)",
    )
    assert health.stdout.strip().splitlines()[-1:] == ["200"], health.stdout + health.stderr
    with psycopg.connect(unused["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, False)
        assert conn.execute("SELECT count(*) FROM accounts_organization").fetchone() == (1,)
    assert redis.Redis.from_url(unused["REDIS_URL"]).ping()
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the unprivileged user
        assert (data / "postgres").stat().st_uid != 0

    stopped = _run(unused, "-m", "clinik.lib.services", "stop-embedded")
    assert stopped.returncode == 0, stopped.stderr
    down = _run(unused, "-m", "clinik.lib.services", "check")
    assert down.returncode == 1
    assert "PostgreSQL is not reachable" in down.stderr and "Redis is not reachable" in down.stderr


def test_answering_services_are_used_as_they_are(tmp_path: Path) -> None:
    """This machine's own PostgreSQL and Redis answer: nothing embedded starts."""
    env = {
        **os.environ,
        "CLINIK_EMBEDDED_DIR": str(tmp_path),
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgres://clinik@127.0.0.1:5432/clinik"),
        "REDIS_URL": settings.REDIS_URL,
    }
    ensured = _run(env, "-m", "clinik.lib.services", "ensure")
    assert (ensured.returncode, ensured.stdout, ensured.stderr) == (0, "", "")
    assert list(tmp_path.iterdir()) == []


def test_clinik_embedded_services_false_keeps_the_one_line_failure(
    unused: dict[str, str],
) -> None:
    result = _run(
        {**unused, "CLINIK_EMBEDDED_SERVICES": "false"}, "-m", "clinik.lib.services", "ensure"
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("PostgreSQL is not reachable at 127.0.0.1:")
    assert lines[1].startswith("Redis is not reachable at 127.0.0.1:")
    assert list(Path(unused["CLINIK_EMBEDDED_DIR"]).iterdir()) == []
