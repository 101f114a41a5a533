"""Outbox rows numbered in commit order.

An outbox row's id is taken when its write runs, not when its transaction commits: two
concurrent transactions of one tenant can commit in the other order than their ids. So
a deferred constraint trigger numbers each row at COMMIT, after taking a per-tenant
transaction-scoped advisory lock. PostgreSQL releases that lock only after the commit
is visible to new snapshots, so the next transaction of the tenant to commit waits for
it and takes a higher number: numbers follow commit order, and by the time a row with
a higher number is visible every lower one (of a transaction that committed) is
visible too. The dispatcher reads in that order and can never see a lower number turn
up later. The cost: commits of one tenant's transactions that wrote a watched type are
serialized from that point to the end of the commit (other tenants, and writes of
types no subscription watches, are not)."""

from django.db import migrations, models

# Advisory lock namespace 23389 (0x5B5D): one committing writer per tenant.
SQL = """
CREATE SEQUENCE subscriptions_outbox_seq;

CREATE FUNCTION subscriptions_outbox_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Taken once per transaction (again: a no-op), held until the commit is visible.
    PERFORM pg_advisory_xact_lock(23389, hashtext(NEW.org_id::text));
    UPDATE subscriptions_outbox SET seq = nextval('subscriptions_outbox_seq')
        WHERE id = NEW.id;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER subscriptions_outbox_commit_order
    AFTER INSERT ON subscriptions_outbox
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION subscriptions_outbox_at_commit();
"""

REVERSE = """
DROP TRIGGER subscriptions_outbox_commit_order ON subscriptions_outbox;
DROP FUNCTION subscriptions_outbox_at_commit();
DROP SEQUENCE subscriptions_outbox_seq;
"""


class Migration(migrations.Migration):
    dependencies = [("subscriptions", "0003_system_status")]

    operations = [
        migrations.AddField(
            model_name="outboxevent",
            name="seq",
            field=models.BigIntegerField(null=True),
        ),
        migrations.AddIndex(
            model_name="outboxevent",
            index=models.Index(fields=["org_id", "seq", "id"], name="outbox_commit_order"),
        ),
        migrations.RunSQL(SQL, REVERSE),
    ]
