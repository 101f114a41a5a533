from django.db import migrations

# A request log row is stored once per (time, request id): the unique index makes a
# batch written twice (Redis push timed out after storing, then the PostgreSQL
# fallback) a no-op the second time. Duplicates already stored are removed first.
SQL = """
DELETE FROM usage_requestlog a USING usage_requestlog b
 WHERE a.time = b.time AND a.request_id = b.request_id AND a.id > b.id;
CREATE UNIQUE INDEX usage_requestlog_once ON usage_requestlog (time, request_id);
"""


class Migration(migrations.Migration):
    dependencies = [("usage", "0002_rollup_defaults")]

    operations = [
        migrations.RunSQL(SQL, "DROP INDEX IF EXISTS usage_requestlog_once"),
    ]
