"""Deferred writes: statements whose result nobody reads, sent with the transaction's
next statement or its COMMIT instead of in a round trip of their own
(clinik/lib/pgbackend/base.py). Use only for writes that are not expected to fail:
an error surfaces with the statement the write travels with, and rolls back the
whole transaction."""

from contextvars import ContextVar
from typing import Any

from django.db import connection


def defer(sql: str, params: Any = None) -> None:
    """Queue `sql` in the open transaction; outside one (or on another backend) run it
    at once."""
    queue = getattr(connection, "defer", None)
    if queue is None or connection.get_autocommit():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        return
    queue(sql, params)


def send_ahead() -> None:
    """Send what the open transaction has queued now, without waiting for the answer:
    the server works on it while Python prepares what comes next. An error surfaces
    with the next statement or the COMMIT, as for a deferred write."""
    send = getattr(connection, "send_ahead", None)
    if send is not None:
        send()


# --- statement and lock timeouts of API transactions ---------------------------------

# Milliseconds (statement, lock) for the transactions of the request being served, or
# None (background jobs: exports, closures). Set by the gateway for every API request;
# each tenant transaction carries them as `set_config(..., true)` with the tenant's
# setting, so they end with the transaction and work through a transaction pooler.
statement_limits: ContextVar[tuple[int, int] | None] = ContextVar(
    "clinik_statement_limits", default=None
)

QUERY_CANCELED = "57014"  # statement_timeout (or a cancel request)
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout


def cancelled_by_timeout(error: BaseException) -> str | None:
    """ "statement" or "lock" when `error` (or what it wraps) is PostgreSQL cancelling a
    statement for a timeout; else None."""
    seen: BaseException | None = error
    while seen is not None:
        sqlstate = getattr(seen, "sqlstate", None)
        if sqlstate == QUERY_CANCELED:
            return "statement"
        if sqlstate == LOCK_NOT_AVAILABLE:
            return "lock"
        seen = seen.__cause__
    return None
