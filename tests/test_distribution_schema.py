"""The schema stays ready to be distributed by tenant (docs/scaling.md, issue 15).

Read from PostgreSQL's catalog of the migrated test database: every table is either
a platform table (listed below, no org_id) or a tenant table, with a NOT NULL org_id
that every primary key, unique constraint and unique index includes, and that every
foreign key to another tenant table carries on both sides. A distributed engine
(Citus) routes a query to one node when it filters on the distribution column and
can only enforce uniqueness and foreign keys that include it. Exceptions that exist
today are listed with their reason; a new table or constraint that breaks the rules
fails here until it is fixed or listed.
"""

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

# Tables shared by every tenant: users and the tables of Django's own apps, plans,
# platform bookkeeping. Under Citus they are reference tables (copied to every
# node) or stay on the coordinator.
PLATFORM = {
    "accounts_organization": "the tenant table itself; distributed by id (= org_id)",
    "accounts_user": "a user may belong to several organizations",
    "accounts_user_groups": "Django auth, per user",
    "accounts_user_user_permissions": "Django auth, per user",
    "auth_group": "Django auth",
    "auth_group_permissions": "Django auth",
    "auth_permission": "Django auth",
    "django_admin_log": "staff actions in Django's admin",
    "django_content_type": "Django",
    "django_migrations": "Django",
    "django_session": "dashboard sessions, per user",
    "privacy_accountdeletion": "a user's own account deletion (GDPR), not a tenant's",
    "privacy_policyversion": "the published privacy policy versions",
    "usage_drainmark": "idempotency marks of the request-log drain job, per batch",
    "audit_auditanchor": "hash-chain anchors keyed by `chain` (org id as text, or 'none')",
    "audit_auditseal": "hash-chain links keyed by (chain, seq), chain = org id as text or 'none'",
    "audit_sealerstate": "the sealer job's one watermark over all events",
    "notify_emailrecord": "emails sent to a user (type, time, status), not a tenant's data",
    "notify_incident": "platform outages, published on /status",
    "notify_incident_affected_orgs": "which organizations an outage touched (a reference list)",
    "notify_incidentupdate": "the updates of a platform outage",
    "notify_knownbrowser": "keyed hashes of a user's browsers, per user",
    "notify_policyacknowledgement": "a user's acknowledgement of a policy version",
    "notify_policynotice": "the policy announcement sent to a user",
    "privacy_analyticsid": "a user's random analytics id",
    "billing_plan": "the plans (limits and prices) every organization chooses from",
    "billing_stripeevent": "Stripe's webhook events, stored once by Stripe's id",
}

# Tenant tables whose key does not include org_id yet: a surrogate id from a
# sequence or uuid4, unique by construction. Each would become (org_id, id) by a
# composite primary key, a change to the Django model and every reference to it;
# until then Citus can still distribute them by org_id only after that change, so
# they are listed as work to do in docs/scaling.md.
SURROGATE_KEYS = {
    "accounts_invitation": "id (serial); token_hash is looked up before the org is known",
    "accounts_membership": "id (serial); also UNIQUE (user_id, org_id), which is fine",
    "audit_auditevent": "id (bigserial), referenced by audit_auditseal.event_id",
    "audit_auditexport": "id (uuid)",
    "gateway_allowedorigin": "id (serial); also UNIQUE (org_id, origin), which is fine",
    "privacy_closure": "id (serial)",
    "privacy_exportjob": "id (uuid), in the status URL clients poll",
    "usage_dailyusage": "id (serial); the rollup key includes org_id",
    "usage_hourlyusage": "id (serial); the rollup key includes org_id",
    "usage_errorlog": "(time, id): partitioned by time; org_id is nullable (refused requests)",
    "usage_requestlog": "(time, id): partitioned by time; org_id is nullable (refused requests)",
    "billing_account": "id (serial); also UNIQUE (org_id), one account per organization",
    "billing_invoice": "id (serial); UNIQUE stripe_invoice_id, an id Stripe makes unique",
    "billing_meterreport": "id (serial); UNIQUE identifier, Stripe's idempotency identifier",
    "subscriptions_subscription": "id (serial); also UNIQUE (org_id, resource_id)",
    "subscriptions_outbox": "id (bigserial): the commit order the dispatcher claims in",
    "subscriptions_delivery": "id (bigserial); UNIQUE event_id (uuid4), the receivers' dedup key",
}

# The API key table is read by key hash before any tenant is known (the gateway's
# lookup), so it is a reference table (replicated to every node), not distributed.
REFERENCE = {"keys_apikey": "looked up by key_hash before the tenant is known"}

# Tenant tables whose org_id may be NULL, and why. Under Citus such rows would go
# to a platform partition (org_id of a platform organization), see docs/scaling.md.
NULLABLE_ORG = {
    "usage_errorlog": "requests refused before any organization was known",
    "usage_requestlog": "requests refused before any organization was known",
    "audit_auditevent": "account events of a user outside any organization (sign-in, GDPR)",
}


def _tables() -> dict[str, bool]:
    """Every table of the public schema (partitions left out): has an org_id column?"""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid"
            " AND a.attname = 'org_id' AND NOT a.attisdropped)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )
        return dict(cursor.fetchall())


def _unique_keys() -> list[tuple[str, str, list[str]]]:
    """(table, index name, columns) of every unique index (primary keys and unique
    constraints have one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t.relname, i.relname, array_agg(a.attname ORDER BY a.attnum)"
            " FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid"
            " JOIN pg_class i ON i.oid = x.indexrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (x.indkey)"
            " WHERE n.nspname = 'public' AND x.indisunique AND NOT t.relispartition"
            " GROUP BY t.relname, i.relname"
        )
        return [(t, i, [c for c in cols if c]) for t, i, cols in cursor.fetchall()]


def _foreign_keys() -> list[tuple[str, str, list[str], list[str]]]:
    """(table, referenced table, columns, referenced columns) of every foreign key."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t.relname, r.relname,"
            " ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = c.conrelid"
            "       AND attnum = ANY (c.conkey)),"
            " ARRAY(SELECT attname FROM pg_attribute WHERE attrelid = c.confrelid"
            "       AND attnum = ANY (c.confkey))"
            " FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid"
            " JOIN pg_class r ON r.oid = c.confrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE n.nspname = 'public' AND c.contype = 'f' AND NOT t.relispartition"
        )
        return [tuple(row) for row in cursor.fetchall()]


def test_every_table_is_a_platform_or_a_tenant_table() -> None:
    tables = _tables()
    unclassified = sorted(t for t, has_org in tables.items() if not has_org and t not in PLATFORM)
    assert unclassified == [], (
        f"tables without org_id that are not listed as platform tables: {unclassified}"
    )
    platform_with_org = sorted(t for t in PLATFORM if tables.get(t))
    assert platform_with_org == [], f"platform tables with an org_id: {platform_with_org}"
    stale = sorted(t for t in {*PLATFORM, *SURROGATE_KEYS, *REFERENCE} if t not in tables)
    assert stale == [], f"listed tables that no longer exist: {stale}"


def test_org_id_is_not_null_in_tenant_tables() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " AND a.attname = 'org_id' AND NOT a.attnotnull"
        )
        nullable = sorted(row[0] for row in cursor.fetchall())
    assert [t for t in nullable if t not in NULLABLE_ORG] == []


def test_every_unique_key_of_a_tenant_table_includes_org_id() -> None:
    tables = _tables()
    breaking = sorted(
        (table, index, tuple(columns))
        for table, index, columns in _unique_keys()
        if tables.get(table)
        and "org_id" not in columns
        and table not in SURROGATE_KEYS
        and table not in REFERENCE
    )
    assert breaking == [], f"unique keys of tenant tables without org_id: {breaking}"
    # The listed exceptions still break the rule: a fixed one must leave the list.
    fixed = sorted(
        t
        for t in SURROGATE_KEYS
        if all("org_id" in columns for table, _i, columns in _unique_keys() if table == t)
    )
    assert fixed == [], (
        f"these tables now follow the rule: remove them from SURROGATE_KEYS: {fixed}"
    )


def test_foreign_keys_between_tenant_tables_carry_org_id() -> None:
    tables = _tables()
    breaking = sorted(
        (table, target, tuple(columns))
        for table, target, columns, target_columns in _foreign_keys()
        if tables.get(table)
        and tables.get(target)
        and target not in REFERENCE
        and not ("org_id" in columns and "org_id" in target_columns)
    )
    assert breaking == [], f"foreign keys between tenant tables without org_id: {breaking}"
