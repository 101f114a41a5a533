"""The outbox, written by the database in the transaction of every FHIR write.

A row trigger on fhir_history (every create, update and delete inserts exactly one
history row, also inside bundles and conditional writes) does two things:
- a Subscription resource's write upserts (or its delete removes) its mirror row in
  subscriptions_subscription, with a new signing secret on creation;
- any write of a type that an active subscription of the same tenant watches adds an
  outbox row. A tenant without subscriptions pays one index probe per write.
A rolled-back write leaves nothing; a committed one is never missed.

The outbox and the deliveries name resources by id: FORCE row-level security as
for the FHIR tables (the trigger runs as the writing role, inside its tenant)."""

from django.db import migrations

TENANT = "org_id = NULLIF(current_setting('clinik.org_id', true), '')::uuid"

SQL = """
ALTER TABLE subscriptions_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE subscriptions_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON subscriptions_outbox USING (TENANT) WITH CHECK (TENANT);
ALTER TABLE subscriptions_delivery ENABLE ROW LEVEL SECURITY;
ALTER TABLE subscriptions_delivery FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON subscriptions_delivery USING (TENANT) WITH CHECK (TENANT);

CREATE FUNCTION subscriptions_on_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    doc jsonb;
    criteria text;
BEGIN
    IF NEW.resource_type = 'Subscription' THEN
        IF NEW.content IS NULL THEN
            DELETE FROM subscriptions_subscription
                WHERE org_id = NEW.org_id AND resource_id = NEW.id;
        ELSE
            doc := NEW.content::jsonb;
            criteria := coalesce(doc->>'criteria', '');
            INSERT INTO subscriptions_subscription AS s (
                org_id, resource_id, version_id, checked_version, criteria_type,
                channel_type, endpoint, payload, headers, status, error, secret,
                secret_shown, created_at, updated_at)
            VALUES (
                NEW.org_id, NEW.id, NEW.version_id, 0,
                left(split_part(criteria, '?', 1), 64),
                left(coalesce(doc#>>'{channel,type}', ''), 32),
                coalesce(doc#>>'{channel,endpoint}', ''),
                left(coalesce(doc#>>'{channel,payload}', ''), 64),
                coalesce(doc#>'{channel,header}', '[]'::jsonb),
                CASE WHEN doc->>'status' = 'off' THEN 'off' ELSE 'requested' END,
                '',
                'whsec_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                false, now(), now())
            ON CONFLICT (org_id, resource_id) DO UPDATE SET
                version_id = EXCLUDED.version_id,
                criteria_type = EXCLUDED.criteria_type,
                channel_type = EXCLUDED.channel_type,
                endpoint = EXCLUDED.endpoint,
                payload = EXCLUDED.payload,
                headers = EXCLUDED.headers,
                status = EXCLUDED.status,
                error = '',
                updated_at = now();
        END IF;
    END IF;
    IF EXISTS (
        SELECT 1 FROM subscriptions_subscription
        WHERE org_id = NEW.org_id AND criteria_type = NEW.resource_type COLLATE "default"
        AND status IN ('requested', 'active')
    ) THEN
        INSERT INTO subscriptions_outbox
            (org_id, resource_type, resource_id, version_id, deleted, created_at)
        VALUES (NEW.org_id, NEW.resource_type, NEW.id, NEW.version_id,
                NEW.content IS NULL, now());
        -- Delivered at COMMIT (once per transaction and tenant): wakes the dispatcher.
        PERFORM pg_notify('subscriptions_outbox', NEW.org_id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER subscriptions_outbox AFTER INSERT ON fhir_history
    FOR EACH ROW EXECUTE FUNCTION subscriptions_on_history();
"""

SQL = SQL.replace("(TENANT)", f"({TENANT})")

REVERSE = """
DROP TRIGGER subscriptions_outbox ON fhir_history;
DROP FUNCTION subscriptions_on_history();
DROP POLICY tenant_isolation ON subscriptions_delivery;
DROP POLICY tenant_isolation ON subscriptions_outbox;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("subscriptions", "0001_initial"),
        ("fhir", "0006_tenant_statistics"),
    ]

    operations = [migrations.RunSQL(SQL, REVERSE)]
