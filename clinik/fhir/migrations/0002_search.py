"""Search index tables: one table per kind of search value, written in the same
transaction as the resource and removed with it.

Every table leads with org_id and has FORCE row-level security with the store's
policy. Every index leads with (org_id, resource_type, param, value...): under RLS
PostgreSQL only pushes leakproof operators into an index scan, so the values are
COLLATE "C" text, float8 and timestamptz (numeric comparisons are not leakproof).
The second index per table, (org_id, resource_type, id, param), serves removal of a
resource's rows, _sort and _include."""

from typing import Any

from django.db import migrations

TENANT = "org_id = NULLIF(current_setting('clinik.org_id', true), '')::uuid"

TABLES = {
    "fhir_idx_string": (
        'param text COLLATE "C" NOT NULL, value text COLLATE "C" NOT NULL,'
        ' exact text COLLATE "C" NOT NULL',
        ["param, value, id"],
    ),
    "fhir_idx_token": (
        'param text COLLATE "C" NOT NULL, system text COLLATE "C" NOT NULL,'
        ' code text COLLATE "C" NOT NULL',
        ["param, code, system, id"],
    ),
    "fhir_idx_date": (
        'param text COLLATE "C" NOT NULL, low timestamptz NOT NULL, high timestamptz NOT NULL',
        ["param, low, high, id", "param, high, low, id"],
    ),
    "fhir_idx_number": (
        'param text COLLATE "C" NOT NULL, low float8 NOT NULL, high float8 NOT NULL',
        ["param, low, high, id"],
    ),
    "fhir_idx_quantity": (
        'param text COLLATE "C" NOT NULL, low float8 NOT NULL, high float8 NOT NULL,'
        ' system text COLLATE "C" NOT NULL, code text COLLATE "C" NOT NULL,'
        ' unit text COLLATE "C" NOT NULL',
        ["param, low, high, id"],
    ),
    "fhir_idx_reference": (
        'param text COLLATE "C" NOT NULL, target_type text COLLATE "C" NOT NULL,'
        ' target_id text COLLATE "C" NOT NULL',
        ["param, target_id, target_type, id"],
    ),
    "fhir_idx_uri": (
        'param text COLLATE "C" NOT NULL, value text COLLATE "C" NOT NULL',
        ["param, value, id"],
    ),
    "fhir_idx_composite": (
        'param text COLLATE "C" NOT NULL,'
        ' system1 text COLLATE "C", code1 text COLLATE "C",'
        ' system2 text COLLATE "C", code2 text COLLATE "C", text2 text COLLATE "C",'
        " low2 float8, high2 float8, dlow2 timestamptz, dhigh2 timestamptz,"
        " low3 float8, high3 float8",
        ["param, code1, system1, id"],
    ),
}


def _table_sql(name: str, columns: str, indexes: list[str]) -> str:
    statements = [
        f'CREATE TABLE {name} (org_id uuid NOT NULL, resource_type text COLLATE "C" NOT NULL,'
        f' {columns}, id text COLLATE "C" NOT NULL);',
        f"CREATE INDEX {name}_by_id ON {name} (org_id, resource_type, id, param);",
        f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY;",
        f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY;",
        f"CREATE POLICY tenant_isolation ON {name} USING ({TENANT}) WITH CHECK ({TENANT});",
    ]
    for number, keys in enumerate(indexes, start=1):
        statements.append(
            f"CREATE INDEX {name}_search{number} ON {name} (org_id, resource_type, {keys});"
        )
    return "\n".join(statements)


SQL = "\n".join(_table_sql(name, columns, indexes) for name, (columns, indexes) in TABLES.items())
REVERSE = "\n".join(f"DROP TABLE {name};" for name in TABLES)


def index_existing(apps: Any, schema_editor: Any) -> None:
    """Index resources stored before search existed, one tenant at a time (row-level
    security hides every row until the tenant is set)."""
    from clinik.fhir.search.index import reindex_tenant

    organization = apps.get_model("accounts", "Organization")
    for org_id in organization.objects.values_list("id", flat=True):
        reindex_tenant(org_id)


class Migration(migrations.Migration):
    dependencies = [("fhir", "0001_store"), ("accounts", "0001_initial")]

    operations = [
        migrations.RunSQL(SQL, REVERSE),
        migrations.RunPython(index_existing, migrations.RunPython.noop),
    ]
