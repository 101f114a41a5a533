"""A key checked by the request's own statements instead of a lookup.

The gateway keeps the ApiKey each key authenticated as (clinik.gateway.ratelimit.
KnownKeys). A later request with the same key skips the lookup; instead its first
tenant statement (clinik.fhir.tenancy) runs `clinik_require_key(<still_usable>)`,
which raises SQLSTATE CK401 when the key has been revoked, has expired or its
organization closed since, in the same transaction as the work, so that nothing is
done or read for it: the gateway answers 401, as a lookup would have. A request that
opened no tenant transaction, and one answered with an error (whose transaction may
have rolled back before sending the check), is checked by one query after its view
(`settle`)."""

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connection

from clinik.keys.models import ApiKey, still_usable

# clinik.keys migration 0002: raises this SQLSTATE unless its argument holds.
_REQUIRE = "SELECT clinik_require_key({})"
REFUSED_SQLSTATE = "CK401"


@dataclass(slots=True)
class KeyCheck:
    condition: tuple[str, list[Any]]
    queued: bool = False
    """Queued to travel with a transaction's statements (which may roll back unsent)."""
    confirmed: bool = False
    """Run: in a statement that was sent, or as a query of its own."""

    @classmethod
    def of(cls, key: ApiKey) -> "KeyCheck":
        return cls(still_usable(key))


pending: ContextVar[KeyCheck | None] = ContextVar("clinik_key_check", default=None)


def statement(*, sent: bool) -> tuple[str, list[Any]] | None:
    """The statement that checks the current request's key, for each of its tenant
    transactions to carry first (`sent`: in a query string sent now, rather than
    queued); None when the key was looked up."""
    check = pending.get()
    if check is None:
        return None
    check.queued = True
    check.confirmed |= sent
    sql, params = check.condition
    return _REQUIRE.format(sql), params


def settle(status: int) -> bool:
    """After the view answered `status`: whether the key still holds. Checked by one
    query when no tenant statement carried the check, or when the answer is an error
    and the check was only queued (the transaction may have rolled back before
    sending it)."""
    check = pending.get()
    if check is None or check.confirmed or (check.queued and status < 400):
        return True
    sql, params = check.condition
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {sql}", params)
        row = cursor.fetchone()
    check.confirmed = bool(row and row[0])
    return check.confirmed


def refused(error: BaseException) -> bool:
    """Whether `error` is that statement's refusal (Django wraps psycopg's error)."""
    cause = error.__cause__ if isinstance(error, DatabaseError) else error
    return getattr(cause, "sqlstate", None) == REFUSED_SQLSTATE
