"""Behind a transaction-mode pooler (Supabase's port 6543, PgBouncer) the server
session is shared by whoever comes next: nothing of one request may reach the next
one through it. A real PgBouncer with one server connection shows it."""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection

from tests.pgbouncer import PgBouncer, route_through, start_for_tests


@pytest.fixture
def one_server_connection() -> Iterator[PgBouncer]:
    """Every application connection through a PgBouncer with a single server
    connection, so each request reuses the previous request's server session."""
    bouncer = start_for_tests(pool_size=1)
    saved = route_through(bouncer)
    try:
        yield bouncer
    finally:
        route_through(None, saved)
        bouncer.stop()


def _server_state() -> tuple[int, str | None]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('clinik.org_id', true)")
        pid, tenant = cursor.fetchone()
    connection.close()  # give the server connection back, as a request's end does
    return pid, tenant or None


@pytest.mark.django_db(transaction=True)
def test_a_tenant_setting_never_reaches_the_next_request(
    one_server_connection: PgBouncer, api: Any, outsider_api: Any
) -> None:
    pid, tenant = _server_state()
    assert tenant is None
    created = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Pooled"}]})
    assert created.status_code == 201
    assert api.get(f"Patient/{created.json()['id']}").status_code == 200
    # The same server session, after a request that ran under the owner's tenant:
    assert _server_state() == (pid, None)
    # The next request, another tenant's, on that same session sees nothing of it.
    found = outsider_api.get("Patient?family=Pooled")
    assert found.status_code == 200 and found.json().get("total", 0) == 0
    assert outsider_api.get(f"Patient/{created.json()['id']}").status_code == 404
    assert _server_state() == (pid, None)


@pytest.mark.django_db(transaction=True)
def test_a_session_level_setting_would_leak_which_is_why_none_is_used(
    one_server_connection: PgBouncer, owner: Any
) -> None:
    # The control: what `set_config(..., false)` (or SET) would do behind this pooler.
    pid, _ = _server_state()
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('clinik.org_id', %s, false)", [str(owner.org.pk)])
    connection.close()
    try:
        assert _server_state() == (pid, str(owner.org.pk))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET clinik.org_id")
        connection.close()


def _alternate_prepared_queries(bouncer: PgBouncer, **options: Any) -> None:
    params = {**connection.get_connection_params(), **options}
    params.pop("cursor_factory", None)
    first, second = psycopg.connect(**params), psycopg.connect(**params)
    try:
        for n in range(12):  # psycopg prepares a query after its 5th execution
            for session in (first, second):
                with psycopg.Cursor(session) as cursor:  # server-side binding
                    cursor.execute("SELECT %s::int + 1", [n])
                    assert cursor.fetchone() == (n + 1,)
    finally:
        first.close()
        second.close()


@pytest.mark.django_db(transaction=True)
def test_database_pooler_transaction_turns_off_prepared_statements(
    one_server_connection: PgBouncer,
) -> None:
    # What DATABASE_POOLER=transaction configures works behind the pooler...
    _alternate_prepared_queries(one_server_connection, prepare_threshold=None, autocommit=True)
    # ...and psycopg's default would not: its prepared statements stay on a server
    # session that the next client gets (PgBouncer 1.18 cannot track them).
    with pytest.raises(psycopg.errors.Error):
        _alternate_prepared_queries(one_server_connection, prepare_threshold=5, autocommit=True)


def test_settings_for_a_transaction_pooler() -> None:
    import subprocess
    import sys

    probe = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'clinik.settings';"
        "django.setup(); from django.conf import settings as s; d = s.DATABASES['default'];"
        "print(s.DATABASE_POOLER, d['OPTIONS'].get('prepare_threshold', 'default'),"
        " d.get('DISABLE_SERVER_SIDE_CURSORS', False))"
    )

    def run(**env: str) -> str:
        import os

        environ = {k: v for k, v in os.environ.items() if k != "DATABASE_POOLER"}
        done = subprocess.run(
            [sys.executable, "-c", probe], env={**environ, **env}, capture_output=True, text=True
        )
        return (done.stdout or done.stderr).strip().splitlines()[-1]

    pooled = "postgres://clinik@127.0.0.1:6543/clinik"
    assert run(DATABASE_URL=pooled) == "transaction None True"
    assert run(DATABASE_POOLER="transaction") == "transaction None True"
    assert run() == "default False"
    assert "cannot work behind a transaction pooler" in run(
        DATABASE_URL=pooled, API_KEY_PREPARED_LOOKUP="true"
    )
