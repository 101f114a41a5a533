"""`make`'s service checks: one clear line when PostgreSQL or Redis is missing."""

import subprocess
import sys

import psycopg
import pytest

from clinik.lib import services


def test_reachable_services_pass() -> None:
    assert services.check_postgres("postgres://postgres@127.0.0.1:5432/postgres") is None
    assert services.check_redis("redis://127.0.0.1:6379/0") is None


def test_unreachable_postgres_is_one_clear_line() -> None:
    problem = services.check_postgres("postgres://clinik@127.0.0.1:1/clinik")
    assert problem is not None
    assert problem.startswith("PostgreSQL is not reachable at 127.0.0.1:1")
    assert "\n" not in problem


def test_unreachable_redis_is_one_clear_line() -> None:
    problem = services.check_redis("redis://127.0.0.1:1/0")
    assert problem is not None
    assert problem.startswith("Redis is not reachable at 127.0.0.1:1")
    assert "\n" not in problem


def test_check_command_exits_1_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clinik.lib.services", "check"],
        env={"DATABASE_URL": "postgres://x@127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2


def test_bootstrap_is_idempotent_and_creates_ordinary_roles() -> None:
    admin = "postgres://postgres@127.0.0.1:5432/postgres"
    db_url = "postgres://clinik_probe_app@127.0.0.1:5432/clinik_probe"
    owner_url = "postgres://clinik_probe_owner@127.0.0.1:5432/clinik_probe"
    try:
        created = services.bootstrap(db_url, owner_url, admin)
        assert created == [
            "role clinik_probe_owner",
            "role clinik_probe_app",
            "database clinik_probe",
        ]
        assert services.bootstrap(db_url, owner_url, admin) == []
        with psycopg.connect(admin) as conn:
            rows = conn.execute(
                "SELECT rolname, rolsuper, rolbypassrls, rolcreatedb FROM pg_roles"
                " WHERE rolname LIKE 'clinik_probe%' ORDER BY rolname"
            ).fetchall()
        assert rows == [
            ("clinik_probe_app", False, False, False),
            ("clinik_probe_owner", False, False, True),
        ]
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS clinik_probe")
            conn.execute("DROP ROLE IF EXISTS clinik_probe_app")
            conn.execute("DROP ROLE IF EXISTS clinik_probe_owner")


@pytest.mark.parametrize("command", ["nonsense"])
def test_unknown_command(command: str) -> None:
    assert services.main(["services", command]) == 2
