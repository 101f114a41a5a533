"""Reachability checks and local database bootstrap, run by `make` before Django starts.

`python -m clinik.lib.services check` prints one plain line per unreachable service
and exits 1. `python -m clinik.lib.services bootstrap` creates the application role,
the owner role and the database through the local superuser when they are missing,
and keeps values out of the server log for both roles (`quiet_server_log`).
"""

import os
import sys
from urllib.parse import unquote, urlsplit

import psycopg
import redis
from psycopg import sql

DEFAULT_DATABASE_URL = "postgres://clinik@127.0.0.1:5432/clinik"
DEFAULT_OWNER_URL = "postgres://clinik_owner@127.0.0.1:5432/clinik"
DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or ''}".rstrip(":")


def check_postgres(url: str) -> str | None:
    """Return None when PostgreSQL answers at url's host, else a one-line reason."""
    parts = urlsplit(url)
    try:
        with psycopg.connect(
            host=parts.hostname or "localhost",
            port=parts.port or 5432,
            dbname="postgres",
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or "") or None,
            connect_timeout=3,
        ):
            return None
    except psycopg.OperationalError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        if "does not exist" in message or "authentication" in message:
            return None  # the server answers; roles are bootstrap's business
        return (
            f"PostgreSQL is not reachable at {_where(url)} ({message}). Start it "
            "(e.g. `pg_ctlcluster 15 main start`) or point DATABASE_URL at a running server."
        )


def check_redis(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
        return None
    except redis.RedisError as exc:
        return (
            f"Redis is not reachable at {_where(url)} ({exc}). Start it "
            "(e.g. `redis-server --daemonize yes`) or point REDIS_URL at a running server."
        )


def _role_and_password(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    return unquote(parts.username or ""), (unquote(parts.password) if parts.password else None)


# The second wall against PHI in the server log (the first: values travel as bind
# parameters, clinik.lib.pgbackend). For the application's roles, PostgreSQL logs a
# failed statement's error alone: not its text (log_min_error_statement), not its
# parameters (log_parameter_max_length_on_error), not the DETAIL or CONTEXT lines
# (log_error_verbosity: a unique violation's DETAIL quotes the key's values, a check
# violation's the whole row). log_min_error_statement and log_error_verbosity need a
# superuser (or GRANT SET) to be set for a role: README, "Managed PostgreSQL".
QUIET_LOG_SETTINGS = (
    ("log_min_error_statement", "panic"),
    ("log_parameter_max_length_on_error", "0"),
    ("log_error_verbosity", "terse"),
)


def quiet_server_log(conn: psycopg.Connection, role: str) -> None:
    for name, value in QUIET_LOG_SETTINGS:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(role), sql.Identifier(name), sql.Literal(value)
            )
        )


def bootstrap(database_url: str, owner_url: str, admin_url: str) -> list[str]:
    """Create the roles and the database if missing. Returns what it created."""
    app_role, app_password = _role_and_password(database_url)
    owner_role, owner_password = _role_and_password(owner_url)
    dbname = urlsplit(database_url).path.lstrip("/")
    created = []
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        for role, password, extra in (
            (owner_role, owner_password, "CREATEDB"),
            (app_role, app_password, "NOCREATEDB"),
        ):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL(
                        "CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE " + extra
                    ).format(sql.Identifier(role))
                )
                created.append(f"role {role}")
            if password:
                conn.execute(
                    sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                        sql.Identifier(role), sql.Literal(password)
                    )
                )
            quiet_server_log(conn, role)
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        if not exists:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(dbname), sql.Identifier(owner_role)
                )
            )
            created.append(f"database {dbname}")
    return created


def main(argv: list[str]) -> int:
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    command = argv[1] if len(argv) > 1 else "check"
    if command == "check":
        problems = [p for p in (check_postgres(database_url), check_redis(redis_url)) if p]
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    if command == "bootstrap":
        owner_url = os.environ.get("DATABASE_OWNER_URL", DEFAULT_OWNER_URL)
        admin_url = os.environ.get("DATABASE_ADMIN_URL", DEFAULT_ADMIN_URL)
        try:
            created = bootstrap(database_url, owner_url, admin_url)
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0]
            print(
                f"Could not bootstrap the database through DATABASE_ADMIN_URL ({first}). "
                "Create the roles and database yourself or set DATABASE_ADMIN_URL.",
                file=sys.stderr,
            )
            return 1
        for item in created:
            print(f"created {item}")
        return 0
    print(f"unknown command {command!r}: use check or bootstrap", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
