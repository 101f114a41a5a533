"""ANALYZE the FHIR tables after every 10,000 changed rows, whatever their size.

A tenant created after a table's last ANALYZE is missing from its org_id statistics.
While every existing tenant is among the most common values (fewer than ~100 of
them), the planner then estimates the new tenant at one row and treats any index
that starts with org_id as equally good: `Patient?family=X` for such a tenant read
the whole (org_id, resource_type, id, param) index of its Patients and filtered it
(508 ms for 19,000 Patients) instead of the range of the search index (0.2 ms). By
default autovacuum analyzes a table after changes to 10 % of its rows, which on a
large table can take days; with a fixed threshold the new tenant is in the
statistics within a minute of its first 10,000 rows, which bounds the damage to
scans of at most that many rows. (Migration 0005 took the same risk away from reads
by id altogether.)
"""

from django.db import migrations

TABLES = (
    "fhir_resource",
    "fhir_history",
    "fhir_idx_string",
    "fhir_idx_token",
    "fhir_idx_date",
    "fhir_idx_number",
    "fhir_idx_quantity",
    "fhir_idx_reference",
    "fhir_idx_uri",
    "fhir_idx_composite",
)

SQL = "\n".join(
    f"ALTER TABLE {t} SET (autovacuum_analyze_scale_factor = 0,"
    " autovacuum_analyze_threshold = 10000);"
    for t in TABLES
)
REVERSE = "\n".join(
    f"ALTER TABLE {t} RESET (autovacuum_analyze_scale_factor, autovacuum_analyze_threshold);"
    for t in TABLES
)


class Migration(migrations.Migration):
    dependencies = [("fhir", "0005_live_updated_index")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
