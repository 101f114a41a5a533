"""Deferred writes: statements whose result nobody reads, sent with the transaction's
next statement or its COMMIT instead of in a round trip of their own
(clinik/lib/pgbackend/base.py). Use only for writes that are not expected to fail:
an error surfaces with the statement the write travels with, and rolls back the
whole transaction."""

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
