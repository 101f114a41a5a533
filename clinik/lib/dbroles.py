"""Privileges of the application role, applied after every migrate.

Migrations run as the owner role; the application connects as an ordinary role
that owns nothing and receives only the privileges granted here. Tables listed in
APPEND_ONLY get no UPDATE or DELETE (the audit trail)."""

from typing import Any

from django.conf import settings
from django.db import connections
from psycopg import sql

APPEND_ONLY: set[str] = {"audit_auditevent", "audit_auditseal", "audit_auditanchor"}


def grant_app_privileges(using: str = "default", **_kwargs: Any) -> None:
    app_role = settings.DATABASE_APP_ROLE
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        if cursor.fetchone()[0] == app_role:
            return  # not the owner: nothing to grant (and nothing it could grant)
        role = sql.Identifier(app_role)
        cursor.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
        cursor.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE"
                " ON ALL TABLES IN SCHEMA public TO {}"
            ).format(role)
        )
        cursor.execute(
            sql.SQL("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {}").format(
                role
            )
        )
        # Tests keep TRUNCATE: Django's TransactionTestCase empties every table with it
        # after each test. UPDATE and DELETE are refused there as in production.
        refused = "UPDATE, DELETE" if settings.TESTING else "UPDATE, DELETE, TRUNCATE"
        for table in sorted(APPEND_ONLY):
            cursor.execute(
                sql.SQL("REVOKE " + refused + " ON {} FROM {}").format(sql.Identifier(table), role)
            )
