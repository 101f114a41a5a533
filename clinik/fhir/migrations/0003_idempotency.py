"""Idempotency records: a request hash and pointers to resulting versions, no body."""

from django.db import migrations

SQL = """
CREATE TABLE fhir_idempotency (
    org_id uuid NOT NULL,
    key text COLLATE "C" NOT NULL,
    request_hash text NOT NULL,
    pointers text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, key)
);
CREATE INDEX fhir_idempotency_created ON fhir_idempotency (created_at);
"""


class Migration(migrations.Migration):
    dependencies = [("fhir", "0002_search")]

    operations = [migrations.RunSQL(SQL, "DROP TABLE fhir_idempotency;")]
