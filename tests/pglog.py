"""The PostgreSQL server's own log, read through a superuser session (pg_read_file),
and the superuser session itself, for tests that look at what the server sees."""

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection

from clinik.lib.services import DEFAULT_ADMIN_URL

ADMIN_URL = os.environ.get("DATABASE_ADMIN_URL", DEFAULT_ADMIN_URL)
FIX = "set DATABASE_ADMIN_URL to a superuser of the test server (`make db` uses the same)"


def admin(dbname: str | None = None) -> psycopg.Connection:
    conninfo = (
        ADMIN_URL if dbname is None else psycopg.conninfo.make_conninfo(ADMIN_URL, dbname=dbname)
    )
    try:
        return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        raise AssertionError(f"no superuser session ({error}): {FIX}") from None


def database_name() -> str:
    return str(connection.settings_dict["NAME"])


class ServerLog:
    """The lines the server wrote to its log since `mark()`."""

    def __init__(self, session: psycopg.Connection) -> None:
        self.session = session
        self.path = self._find()
        self.offset = 0

    def _find(self) -> str:
        current = self.session.execute("SELECT pg_current_logfile()").fetchone()
        if current and current[0]:
            path = str(current[0])
            if not path.startswith("/"):
                data = self.session.execute("SHOW data_directory").fetchone()
                path = f"{data[0]}/{path}" if data else path
            return path
        # logging_collector off: the cluster's stderr, which Debian's pg_ctlcluster
        # sends to /var/log/postgresql/postgresql-<version>-<cluster>.log.
        version = self.session.execute("SHOW server_version_num").fetchone()
        major = int(version[0]) // 10000 if version else 0
        names = [
            row[0]
            for row in self.session.execute(
                "SELECT name FROM pg_ls_dir('/var/log/postgresql', true, false) AS name"
                " WHERE name LIKE %s ORDER BY name",
                [f"postgresql-{major}-%.log"],
            )
        ]
        if not names:
            raise AssertionError(
                "the PostgreSQL server log is not found: neither pg_current_logfile() nor "
                f"/var/log/postgresql/postgresql-{major}-*.log (enable logging_collector)"
            )
        return f"/var/log/postgresql/{names[0]}"

    def _size(self) -> int:
        row = self.session.execute("SELECT size FROM pg_stat_file(%s)", [self.path]).fetchone()
        return int(row[0]) if row else 0

    def mark(self) -> None:
        self.offset = self._size()

    def since_mark(self) -> list[str]:
        size = self._size()
        if size <= self.offset:
            return []
        row = self.session.execute(
            "SELECT pg_read_binary_file(%s, %s, %s)", [self.path, self.offset, size - self.offset]
        ).fetchone()
        data = bytes(row[0]) if row else b""
        return data.decode("utf-8", "replace").splitlines()

    def wait_for(self, found: Callable[[list[str]], bool], attempts: int = 100) -> list[str]:
        """The lines since the mark, once `found` holds for them (the server writes its
        log asynchronously); the lines as they are if it never does."""
        lines = self.since_mark()
        for _ in range(attempts):
            if found(lines):
                break
            time.sleep(0.05)
            lines = self.since_mark()
        return lines


@contextmanager
def role_setting_in_test_database(name: str, value: str) -> Iterator[None]:
    """Override one of the application role's settings in the test database only
    (role-and-database settings win over role settings); new sessions see it."""
    role = str(connection.settings_dict["USER"])
    with admin() as session:
        ident = psycopg.sql.Identifier
        statement = psycopg.sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
            ident(role), ident(database_name()), ident(name), psycopg.sql.Literal(value)
        )
        session.execute(statement)
        connection.close()
        try:
            yield
        finally:
            session.execute(
                psycopg.sql.SQL("ALTER ROLE {} IN DATABASE {} RESET {}").format(
                    ident(role), ident(database_name()), ident(name)
                )
            )
            connection.close()
