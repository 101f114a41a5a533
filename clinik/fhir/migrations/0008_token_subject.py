"""The subject on the token rows: fhir_idx_token.subject_type / subject_id repeat the
resource's `subject` reference (one token row per subject; NULL without one), with an
index that leads with it.

`Observation?subject=Patient/x&code=y` and the two-level chain
`Observation?subject.organization.name=X&code=y` meet subject and code in one index
range instead of probing the code of every one of the subject's Observations (the
chain: 10,000 candidate rows per search at 1,000,000 Observations, bench/README.md).
Written with the other index rows (clinik/fhir/search/index.py), so updates, deletes
and bundles keep it; existing rows are backfilled here, one tenant at a time
(row-level security shows one tenant's rows only), one transaction each. The index is
built CONCURRENTLY: writes go on meanwhile.
"""

from typing import Any

from django.db import migrations

# The first subject goes onto the existing rows; further subjects (a resource with
# several `subject` rows) get copies of the token rows.
BACKFILL = """
WITH s AS (
  SELECT resource_type, id, target_type, target_id,
         row_number() OVER (PARTITION BY resource_type, id ORDER BY target_type, target_id) AS n
  FROM fhir_idx_reference WHERE org_id = %s AND param = 'subject'
), first AS (
  UPDATE fhir_idx_token t SET subject_type = s.target_type, subject_id = s.target_id
  FROM s WHERE s.n = 1 AND t.org_id = %s AND t.resource_type = s.resource_type
    AND t.id = s.id AND t.subject_id IS NULL
)
INSERT INTO fhir_idx_token (org_id, resource_type, id, param, system, code, subject_type,
  subject_id)
SELECT t.org_id, t.resource_type, t.id, t.param, t.system, t.code, s.target_type, s.target_id
FROM s JOIN fhir_idx_token t ON t.org_id = %s AND t.resource_type = s.resource_type
  AND t.id = s.id AND t.subject_id IS NULL
WHERE s.n > 1
"""


def backfill(apps: Any, schema_editor: Any) -> None:
    from django.db import connection

    from clinik.fhir.tenancy import tenant_transaction

    organization = apps.get_model("accounts", "Organization")
    for org_id in organization.objects.values_list("id", flat=True):
        with tenant_transaction(org_id), connection.cursor() as cursor:
            cursor.execute(BACKFILL, [org_id] * 3)


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("fhir", "0007_index_rows_by_id_first"), ("accounts", "0001_initial")]

    operations = [
        migrations.RunSQL(
            'ALTER TABLE fhir_idx_token ADD COLUMN subject_type text COLLATE "C",'
            ' ADD COLUMN subject_id text COLLATE "C"',
            "ALTER TABLE fhir_idx_token DROP COLUMN subject_type, DROP COLUMN subject_id",
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.RunSQL(
            "DROP INDEX CONCURRENTLY IF EXISTS fhir_idx_token_subject", migrations.RunSQL.noop
        ),
        migrations.RunSQL(
            "CREATE INDEX CONCURRENTLY fhir_idx_token_subject ON fhir_idx_token"
            " (org_id, resource_type, subject_id, param, code, system, subject_type, id)"
            " WHERE subject_id IS NOT NULL",
            "DROP INDEX CONCURRENTLY IF EXISTS fhir_idx_token_subject",
        ),
    ]
