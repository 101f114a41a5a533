"""The second index of every search index table leads with the resource id:
(id, org_id, resource_type, param) instead of (org_id, resource_type, id, param).

It serves removal of a resource's rows, _sort, _include and :not/:missing, which all
name the id. Led by (org_id, resource_type) it also looked fit for a value search
(`Patient?family=X`) whenever the statistics did not know the tenant: a new tenant,
or a table loaded since its last ANALYZE (autovacuum off, or not yet run). The planner
then estimates one row for either index and may read every family row of the
tenant's Patients through it, filtering on the value (6,000 Patients: 120 matches out
of 6,000 rows read; the cause of 55 instead of 224 searches per second). Led by the
id, it cannot serve a search that names no id, whatever the statistics say: the plan
no longer depends on them. Built CONCURRENTLY: writes go on during the migration.
"""

from django.db import migrations

TABLES = (
    "fhir_idx_string",
    "fhir_idx_token",
    "fhir_idx_date",
    "fhir_idx_number",
    "fhir_idx_quantity",
    "fhir_idx_reference",
    "fhir_idx_uri",
    "fhir_idx_composite",
)


def _swap(table: str, columns: str) -> list[migrations.RunSQL]:
    return [
        migrations.RunSQL(
            f"DROP INDEX CONCURRENTLY IF EXISTS {table}_by_id_new", migrations.RunSQL.noop
        ),
        migrations.RunSQL(
            f"CREATE INDEX CONCURRENTLY {table}_by_id_new ON {table} ({columns})",
            migrations.RunSQL.noop,
        ),
        migrations.RunSQL(f"DROP INDEX CONCURRENTLY {table}_by_id", migrations.RunSQL.noop),
        migrations.RunSQL(
            f"ALTER INDEX {table}_by_id_new RENAME TO {table}_by_id", migrations.RunSQL.noop
        ),
    ]


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("fhir", "0006_tenant_statistics")]

    operations = [
        operation
        for table in TABLES
        for operation in _swap(table, "id, org_id, resource_type, param")
    ]
