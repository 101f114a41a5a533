"""The PostgreSQL FHIR store: current versions, history, and row-level security.

Every table carries org_id and has FORCE row-level security: rows are visible only
when `clinik.org_id` (set per transaction by clinik.fhir.tenancy) names their
organization. Text columns use COLLATE "C" so btree comparisons stay leakproof and
usable under RLS."""

from django.db import migrations

TENANT = "org_id = NULLIF(current_setting('clinik.org_id', true), '')::uuid"

SQL = f"""
CREATE TABLE fhir_resource (
    org_id uuid NOT NULL,
    resource_type text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version_id integer NOT NULL,
    last_updated timestamptz NOT NULL,
    deleted_at timestamptz,
    content text,
    PRIMARY KEY (org_id, resource_type, id)
);
CREATE INDEX fhir_resource_updated ON fhir_resource (org_id, resource_type, last_updated);
CREATE INDEX fhir_resource_deleted ON fhir_resource (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE fhir_history (
    org_id uuid NOT NULL,
    resource_type text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version_id integer NOT NULL,
    last_updated timestamptz NOT NULL,
    method text COLLATE "C" NOT NULL,
    content text,
    PRIMARY KEY (org_id, resource_type, id, version_id)
);
CREATE INDEX fhir_history_org_time ON fhir_history (org_id, last_updated);
CREATE INDEX fhir_history_type_time ON fhir_history (org_id, resource_type, last_updated);

-- Deleted resources waiting to be erased for good: ids only, no content, so the
-- erase job can find them across tenants without row-level security.
CREATE TABLE fhir_erasure (
    org_id uuid NOT NULL,
    resource_type text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version_id integer NOT NULL,
    deleted_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, resource_type, id)
);
CREATE INDEX fhir_erasure_due ON fhir_erasure (deleted_at);

ALTER TABLE fhir_resource ENABLE ROW LEVEL SECURITY;
ALTER TABLE fhir_resource FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON fhir_resource USING ({TENANT}) WITH CHECK ({TENANT});
ALTER TABLE fhir_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE fhir_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON fhir_history USING ({TENANT}) WITH CHECK ({TENANT});
"""

REVERSE = "DROP TABLE fhir_erasure; DROP TABLE fhir_history; DROP TABLE fhir_resource;"


class Migration(migrations.Migration):
    initial = True

    operations = [migrations.RunSQL(SQL, REVERSE)]
