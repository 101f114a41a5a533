"""The one sanctioned way to change audit rows: erasing the personal data kept beside
them (IP address and user agent) when an account is closed or a user is erased.
The rest of each row (who, what, when, outcome, ids) stays: the trail's ids remain
valid and it holds no PHI. The seal's hashes leave ip and user agent out, so the
chain still verifies afterwards.

Audit rows are append-only in the database (no UPDATE privilege for the
application role, and a trigger that refuses any other change), so both functions
go through `audit_erase_details`, a SECURITY DEFINER function (migration
audit/0002). They work in batches ordered by id, each batch its own transaction,
so they can be killed at any point and run again to the same end state."""

from uuid import UUID

from django.db import connection, transaction

BATCH = 5000


def _blank(org_id: UUID | None, user_id: str | None) -> int:
    erased = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT audit_erase_details(%s, %s, %s)",
                [str(org_id) if org_id else None, user_id, BATCH],
            )
            changed = int(cursor.fetchone()[0])
        erased += changed
        if changed < BATCH:
            return erased


def erase_actor_details(org_id: UUID) -> int:
    """Blank `ip` and `user_agent` of every audit row of the organization. Returns
    the number of rows changed."""
    return _blank(org_id, None)


def erase_user_details(user_id: int) -> int:
    """Blank `ip` and `user_agent` of every audit row whose actor is this user,
    whatever the organization (sign-ins are recorded without one)."""
    return _blank(None, str(user_id))
