"""A dependency out of reach (PostgreSQL), told apart from other errors, and logged once
per outage rather than once per request.

`unreachable(error)` says "postgres" when `error` (or what it wraps) is the database
connection failing: a refused or lost connection, a server shutting down. The API then
answers 503 with Retry-After (clinik.gateway, clinik.fhir.views). `down` logs the first
failure of an outage in this process; the next new connection to PostgreSQL logs the
recovery and ends the outage (Django's `connection_created` signal)."""

import logging
import threading
from typing import Any

import psycopg
from django.db import InterfaceError
from django.db.backends.signals import connection_created

logger = logging.getLogger(__name__)

# SQLSTATE classes of a server going away: 08 connection exception, 57P01-57P03
# admin shutdown, crash shutdown, cannot connect now.
_GONE = ("08", "57P01", "57P02", "57P03")

_lock = threading.Lock()
_down: set[str] = set()


def unreachable(error: BaseException) -> str | None:
    """ "postgres" when `error` is the database connection failing; else None."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, psycopg.OperationalError | psycopg.InterfaceError):
            sqlstate = getattr(seen, "sqlstate", None)
            if sqlstate is None or sqlstate.startswith(_GONE):
                return "postgres"
            return None
        if isinstance(seen, InterfaceError):  # Django's: the connection is already closed
            return "postgres"
        seen = seen.__cause__ or seen.__context__
    return None


def down(dependency: str) -> None:
    """Note a failed request: logged when it is the first of an outage."""
    with _lock:
        if dependency in _down:
            return
        _down.add(dependency)
    logger.error("%s unreachable: API requests answer 503 until it is back", dependency)


def is_down(dependency: str) -> bool:
    return dependency in _down


def _back(dependency: str) -> None:
    with _lock:
        if dependency not in _down:
            return
        _down.discard(dependency)
    logger.warning("%s reachable again", dependency)


def _connected(sender: Any, **kwargs: Any) -> None:
    _back("postgres")


connection_created.connect(_connected, dispatch_uid="clinik.lib.outage")
