"""A real PgBouncer (Debian's `pgbouncer`) in transaction mode between the tests
and PostgreSQL, on a free port, with a pool smaller than the concurrent clients.

`DATABASE_POOLER=transaction pytest -p tests.pgbouncer --pgbouncer tests/...` runs
those modules with every application connection through it; `make test` does so for
the FHIR isolation, gateway and bundle concurrency modules. The test database is
created and migrated directly (migrations need a session), as in production.
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MISSING = "pgbouncer is not installed: apt-get install pgbouncer"
POOL_SIZE = 4  # server connections per database and user; tests run up to 20 clients


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """One pgbouncer process with its own config directory; `stop()` ends it."""

    def __init__(
        self, upstream_host: str, upstream_port: int, users: dict[str, str], pool_size: int
    ) -> None:
        binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
        if binary is None:
            raise RuntimeError(MISSING)
        self.dir = Path(tempfile.mkdtemp(prefix="clinik-pgbouncer-"))
        self.port = _free_port()
        auth = "".join(f'"{user}" "{password}"\n' for user, password in users.items())
        (self.dir / "users.txt").write_text(auth)
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={upstream_host} port={upstream_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\nmax_db_connections = {pool_size}\n"
            "min_pool_size = 0\nreserve_pool_size = 0\nmax_client_conn = 500\n"
            "server_reset_query =\nserver_check_delay = 0\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"stats_users = {','.join(users)}\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        command = [binary, "-q", str(self.dir / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root: it switches user
            account = pwd.getpwnam("postgres" if _user_exists("postgres") else "nobody")
            command[1:1] = ["-u", account.pw_name]
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.process.stderr.read()!r}")  # type: ignore[union-attr]
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("pgbouncer did not start listening")

    def transactions(self, user: str) -> int:
        """Transactions this pgbouncer has carried (its SHOW STATS console)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, dbname="pgbouncer", user=user, autocommit=True
        ) as console:
            cursor = console.execute("SHOW STATS")
            names = [column.name for column in cursor.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return sum(int(r["total_xact_count"]) for r in rows if r["database"] != "pgbouncer")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def start_for_tests(pool_size: int = POOL_SIZE) -> PgBouncer:
    """A pgbouncer in front of the PostgreSQL the tests use, for its two roles."""
    from django.conf import settings
    from django.db import connections

    db = connections["default"].settings_dict
    users = {
        str(db["USER"]): str(db.get("PASSWORD") or ""),
        str(settings.DATABASE_OWNER_CREDENTIALS["USER"]): str(
            settings.DATABASE_OWNER_CREDENTIALS.get("PASSWORD") or ""
        ),
    }
    return PgBouncer(str(db["HOST"] or "127.0.0.1"), int(db["PORT"] or 5432), users, pool_size)


def route_through(bouncer: PgBouncer | None, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Point the application's connections at `bouncer` (None: back to `saved`)."""
    from urllib.parse import urlsplit, urlunsplit

    from django.conf import settings
    from django.db import connections

    db = connections["default"].settings_dict
    connections.close_all()
    if bouncer is None:
        assert saved is not None
        db.update(saved["db"])
        settings.DATABASE_URL = saved["url"]
        return saved
    old = {"db": {"HOST": db["HOST"], "PORT": db["PORT"]}, "url": settings.DATABASE_URL}
    db.update(HOST="127.0.0.1", PORT=bouncer.port)
    parts = urlsplit(settings.DATABASE_URL)
    netloc = f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{bouncer.port}"
    settings.DATABASE_URL = urlunsplit(parts._replace(netloc=netloc))  # gunicorn tests
    return old


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--pgbouncer",
        action="store_true",
        default=False,
        help="run every application connection through a PgBouncer in transaction mode",
    )


@pytest.fixture(scope="session", autouse=True)
def _through_pgbouncer(request: Any) -> Iterator[PgBouncer | None]:
    if not request.config.getoption("--pgbouncer"):
        yield None
        return
    from django.conf import settings

    if settings.DATABASE_POOLER != "transaction":
        raise RuntimeError("--pgbouncer needs DATABASE_POOLER=transaction in the environment")
    request.getfixturevalue("django_db_setup")  # created and migrated directly
    bouncer = start_for_tests()
    os.environ["DATABASE_POOLER"] = "transaction"  # for servers the tests start
    saved = route_through(bouncer)
    try:
        yield bouncer
        from django.db import connections

        carried = bouncer.transactions(str(connections["default"].settings_dict["USER"]))
        if carried == 0:
            raise RuntimeError("--pgbouncer: no transaction went through PgBouncer")
    finally:
        route_through(None, saved)
        bouncer.stop()
        with request.getfixturevalue("django_db_blocker").unblock():
            _wait_for_server_connections_to_end()


def _wait_for_server_connections_to_end() -> None:
    """The test database is dropped next: pgbouncer's server connections must be gone."""
    from django.db import connection

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] == 0:
                break
        time.sleep(0.05)
    connection.close()
