"""clinik_require_key(usable): raises SQLSTATE CK401 unless `usable` holds.

A request whose API key this process looked up before is not looked up again
(clinik.gateway.middleware); its first tenant statement checks the key instead
(clinik.keys.recheck), and this error rolls back the transaction it ran in.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION clinik_require_key(usable boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF usable IS NOT TRUE THEN
    RAISE EXCEPTION 'the API key is no longer usable' USING ERRCODE = 'CK401';
  END IF;
END $$;
"""

BACKWARD = "DROP FUNCTION IF EXISTS clinik_require_key(boolean);"


class Migration(migrations.Migration):
    dependencies = [("keys", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
