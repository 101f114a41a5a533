"""The live status is written back into the Subscription resource.

The dispatcher writes a new version of the resource (status active, error or off, and
`error`) through the store, in a transaction where it has set the transaction-local
setting `clinik.subscription_system`. Only then does the trigger copy the written
status into the mirror row as it is. A client's write (which cannot set that setting:
it runs no SQL) always puts the subscription back to `requested` (or `off`), so the
server checks it again, and the system's own writes never start another check: no
loop through the outbox trigger."""

from importlib import import_module

from django.db import migrations

_before = import_module("clinik.subscriptions.migrations.0002_outbox_trigger").SQL
REVERSE = (
    "CREATE OR REPLACE " + _before[_before.index("FUNCTION") : _before.index("CREATE TRIGGER")]
)

SQL = """
CREATE OR REPLACE FUNCTION subscriptions_on_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    doc jsonb;
    criteria text;
    system_write boolean := current_setting('clinik.subscription_system', true) = 'on';
    live_status text;
BEGIN
    IF NEW.resource_type = 'Subscription' THEN
        IF NEW.content IS NULL THEN
            DELETE FROM subscriptions_subscription
                WHERE org_id = NEW.org_id AND resource_id = NEW.id;
        ELSE
            doc := NEW.content::jsonb;
            criteria := coalesce(doc->>'criteria', '');
            IF system_write AND doc->>'status' IN ('active', 'error', 'off') THEN
                live_status := doc->>'status';
            ELSIF doc->>'status' = 'off' THEN
                live_status := 'off';
            ELSE
                live_status := 'requested';
            END IF;
            INSERT INTO subscriptions_subscription AS s (
                org_id, resource_id, version_id, checked_version, criteria_type,
                channel_type, endpoint, payload, headers, status, error, secret,
                secret_shown, created_at, updated_at)
            VALUES (
                NEW.org_id, NEW.id, NEW.version_id,
                CASE WHEN system_write THEN NEW.version_id ELSE 0 END,
                left(split_part(criteria, '?', 1), 64),
                left(coalesce(doc#>>'{channel,type}', ''), 32),
                coalesce(doc#>>'{channel,endpoint}', ''),
                left(coalesce(doc#>>'{channel,payload}', ''), 64),
                coalesce(doc#>'{channel,header}', '[]'::jsonb),
                live_status,
                CASE WHEN system_write THEN coalesce(doc->>'error', '') ELSE '' END,
                'whsec_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                false, now(), now())
            ON CONFLICT (org_id, resource_id) DO UPDATE SET
                version_id = EXCLUDED.version_id,
                checked_version = EXCLUDED.checked_version,
                criteria_type = EXCLUDED.criteria_type,
                channel_type = EXCLUDED.channel_type,
                endpoint = EXCLUDED.endpoint,
                payload = EXCLUDED.payload,
                headers = EXCLUDED.headers,
                status = EXCLUDED.status,
                error = EXCLUDED.error,
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
"""


class Migration(migrations.Migration):
    dependencies = [("subscriptions", "0002_outbox_trigger")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
