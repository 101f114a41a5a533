"""Failing statements keep PHI out of every log (issue 13, defects 1 and 2): values
travel as bind parameters, so the statement PostgreSQL logs carries placeholders; the
application roles log no statement, parameter or DETAIL at all; and every API
transaction runs under a statement and lock timeout, which a search answers with
`too-costly` and a write with 503 + Retry-After, leaving nothing running.

Real PostgreSQL throughout: the server's own log is read through a superuser session
(tests/pglog.py), and a table lock held by another session makes a statement wait for
as long as the test wants."""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction

from clinik.fhir.tenancy import tenant_transaction
from clinik.lib import services
from clinik.lib.db import defer
from tests.conftest import Api, Persona
from tests.pglog import ADMIN_URL, ServerLog, admin, database_name, role_setting_in_test_database

pytestmark = pytest.mark.django_db(transaction=True)

MARKER = f"PHI-{uuid4().hex[:10]}"


@pytest.fixture
def quiet_roles() -> None:
    """The roles as `make db` leaves them (bootstrap sets their log settings)."""
    s = connection.settings_dict
    url = f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    owner = services.DEFAULT_OWNER_URL.replace("/clinik", f"/{s['NAME']}")
    services.bootstrap(url, owner, ADMIN_URL)
    connection.close()


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    with admin() as session:
        log = ServerLog(session)
        log.mark()
        yield log


@contextmanager
def locking() -> Iterator[psycopg.Connection]:
    """fhir_resource locked by another session: statements touching it wait."""
    with admin(database_name()) as session:
        session.execute("BEGIN")
        session.execute("LOCK TABLE fhir_resource IN ACCESS EXCLUSIVE MODE")
        yield session
        session.execute("ROLLBACK")


@pytest.fixture
def locked() -> Iterator[psycopg.Connection]:
    with locking() as session:
        yield session


def _provoke_failures(api: Api, outsider: Persona, settings: Any) -> int:
    """A unique violation and a check violation (deferred writes, in a pipeline), a
    write refused by row-level security, and a search cancelled by the statement
    timeout, each with the marker in its values. Returns the server pid that ran them."""
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE scratch (n text PRIMARY KEY CHECK (length(n) < 40))")
    with pytest.raises(IntegrityError), transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [MARKER])
        defer("INSERT INTO scratch VALUES (%s)", [MARKER])  # unique violation
    with pytest.raises(IntegrityError), transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [MARKER * 5])  # check violation
    with pytest.raises(DatabaseError), tenant_transaction(api.org.pk), connection.cursor() as c:
        c.execute(  # another organization's row: refused by row-level security
            "INSERT INTO fhir_resource (org_id, resource_type, id, version_id, last_updated,"
            " content) VALUES (%s, 'Patient', %s, 1, now(), %s)",
            [outsider.org.pk, MARKER[:60], json.dumps({"name": [{"family": MARKER}]})],
        )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE scratch")
    settings.API_STATEMENT_TIMEOUT_MS = 300
    settings.API_LOCK_TIMEOUT_MS = 60_000
    with locking():
        response = api.get(f"Patient?family={MARKER}&identifier=urn:x|{MARKER}")
    assert response.status_code == 400 and response.json()["issue"][0]["code"] == "too-costly"
    assert connection.connection.info.backend_pid == pid
    return pid


ERRORS = (
    "duplicate key value violates unique constraint",
    "violates check constraint",
    "violates row-level security policy",
    "canceling statement due to statement timeout",
)


def _errors_of(pid: int, lines: list[str]) -> list[str]:
    return [line for line in lines if f"[{pid}]" in line and "ERROR:" in line]


def _logged_all(pid: int) -> Any:
    def found(lines: list[str]) -> bool:
        errors = _errors_of(pid, lines)
        return all(any(e in line for line in errors) for e in ERRORS)

    return found


def test_a_failed_statement_is_logged_with_placeholders_never_values(
    api: Api,
    outsider: Persona,
    quiet_roles: None,
    server_log: ServerLog,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The first wall alone: with the server logging failed statements (PostgreSQL's
    default, restored for the role in the test database), each is logged, with $n
    placeholders where the values were."""
    caplog.set_level(logging.DEBUG)
    with role_setting_in_test_database("log_min_error_statement", "error"):
        pid = _provoke_failures(api, outsider, settings)
        lines = server_log.wait_for(_logged_all(pid))
    errors = _errors_of(pid, lines)
    for expected in ERRORS:
        assert any(expected in line for line in errors), (expected, errors)
    statements = [line for line in lines if f"[{pid}]" in line and "STATEMENT:" in line]
    assert len(statements) >= len(ERRORS), lines
    assert all("$1" in line for line in statements), statements
    assert not [line for line in lines if MARKER in line]
    assert MARKER not in caplog.text and MARKER not in capfd.readouterr().err


def test_the_application_roles_log_no_statement_parameter_or_detail(
    api: Api,
    outsider: Persona,
    quiet_roles: None,
    server_log: ServerLog,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The second wall, as `make db` sets it for the roles: the error is logged, and
    nothing of the statement (not even placeholders), its parameters or its DETAIL."""
    caplog.set_level(logging.DEBUG)
    pid = _provoke_failures(api, outsider, settings)
    lines = server_log.wait_for(_logged_all(pid))
    ours = [line for line in lines if f"[{pid}]" in line]
    for expected in ERRORS:
        assert any(expected in line for line in ours), (expected, ours)
    assert not [line for line in ours if "STATEMENT:" in line or "DETAIL:" in line], ours
    assert not [line for line in lines if MARKER in line]
    assert MARKER not in caplog.text and MARKER not in capfd.readouterr().err
    with admin() as session:
        role = connection.settings_dict["USER"]
        settings_row = session.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE r.rolname = %s AND s.setdatabase = 0",
            [role],
        ).fetchone()
    assert settings_row is not None
    for name, value in services.QUIET_LOG_SETTINGS:
        assert f"{name}={value}" in settings_row[0]


def test_psycopg_never_prepares_statements_by_name() -> None:
    """Safe behind a transaction-mode pooler: no named prepared statement is left in
    the server session (psycopg's auto-prepare is off)."""
    connection.ensure_connection()
    assert connection.connection.prepare_threshold is None
    for _ in range(10):
        with transaction.atomic(), connection.cursor() as cursor:
            defer("SELECT set_config('clinik.probe', %s, true)", ["x"])
            cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE %s", [True])
            assert cursor.fetchone() == (0,)


# --- statement and lock timeouts ----------------------------------------------------


def _running(session: psycopg.Connection, pid: int) -> list[Any]:
    return session.execute(
        "SELECT state, wait_event_type, left(query, 60) FROM pg_stat_activity"
        " WHERE pid = %s AND state <> 'idle'",
        [pid],
    ).fetchall()


def test_a_search_cancelled_by_the_statement_timeout_answers_too_costly(
    api: Api, locked: psycopg.Connection, settings: Any
) -> None:
    settings.API_STATEMENT_TIMEOUT_MS = 200
    settings.API_LOCK_TIMEOUT_MS = 60_000
    response = api.get("Patient?name:contains=ann&_has:Observation:patient:code=1234-5")
    assert response.status_code == 400
    issue = response.json()["issue"][0]
    assert response.json()["resourceType"] == "OperationOutcome"
    assert issue["code"] == "too-costly" and "narrow" in issue["diagnostics"]
    pid = connection.connection.info.backend_pid
    assert _running(locked, pid) == []  # nothing left running (or waiting) in PostgreSQL
    blocked = locked.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'fhir_resource'::regclass"
    ).fetchone()
    assert blocked == (0,)
    response = api.post("Patient", {"resourceType": "Patient"})
    assert response.status_code == 503
    assert response.json()["issue"][0]["code"] == "transient"
    assert int(response["Retry-After"]) >= 1
    assert _running(locked, pid) == []


def test_a_write_cancelled_by_the_lock_timeout_answers_503_and_changes_nothing(
    api: Api, locked: psycopg.Connection, settings: Any
) -> None:
    settings.API_STATEMENT_TIMEOUT_MS = 60_000
    settings.API_LOCK_TIMEOUT_MS = 200
    response = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Waits"}]})
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"
    assert int(response["Retry-After"]) >= 1
    assert _running(locked, connection.connection.info.backend_pid) == []
    locked.execute("ROLLBACK")
    locked.execute("BEGIN")
    assert api.get("Patient?family=Waits").json()["total"] == 0


def test_timeouts_are_set_per_api_transaction_only(api: Api, settings: Any) -> None:
    """Inside an API transaction the settings hold; after it, the session is back to
    the server's defaults (nothing is left for the next user of a pooled session)."""
    settings.API_STATEMENT_TIMEOUT_MS = 4321
    settings.API_LOCK_TIMEOUT_MS = 1234
    assert api.get("Patient?family=x").status_code == 200
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
        )
        assert cursor.fetchone() == ("0", "0")
    from clinik.lib.db import statement_limits

    token = statement_limits.set((4321, 1234))
    try:
        with tenant_transaction(api.org.pk), connection.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
            )
            assert cursor.fetchone() == ("4321ms", "1234ms")
    finally:
        statement_limits.reset(token)
