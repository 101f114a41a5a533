"""Signing secrets sealed at rest (clinik.subscriptions.sealing).

The trigger no longer makes a secret in SQL (it would exist in plain text in the
database): it writes "" and the first delivery or "show secret" makes one, sealed. The
secrets already stored are sealed here with the first key of SUBSCRIPTIONS_SECRET_KEYS
(or the development key), so set that variable before migrating in production.

Reversible while the keys are at hand: backwards unseals every secret (and makes one for
rows that had none yet, as the old trigger did), then restores the old trigger. After
backwards, secrets are in plain text again."""

from importlib import import_module
from typing import Any

from django.db import migrations, models

_before = import_module("clinik.subscriptions.migrations.0003_system_status").SQL
_MADE_IN_SQL = "'whsec_' || replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')"
assert _MADE_IN_SQL in _before
SQL = _before.replace(_MADE_IN_SQL, "''")
REVERSE = _before


def seal_stored(apps: Any, schema_editor: Any) -> None:
    from clinik.subscriptions import sealing

    Subscription = apps.get_model("subscriptions", "Subscription")
    rows = Subscription.objects.filter(secret__startswith=sealing.PREFIX)
    for pk, secret in rows.values_list("pk", "secret").iterator():
        Subscription.objects.filter(pk=pk, secret=secret).update(secret=sealing.seal(secret))


def unseal_stored(apps: Any, schema_editor: Any) -> None:
    from clinik.subscriptions import sealing

    Subscription = apps.get_model("subscriptions", "Subscription")
    for pk, secret in Subscription.objects.values_list("pk", "secret").iterator():
        if secret.startswith(sealing.PREFIX):
            continue
        plain = sealing.unseal(secret) if secret else sealing.new_secret()
        Subscription.objects.filter(pk=pk, secret=secret).update(secret=plain)


class Migration(migrations.Migration):
    dependencies = [("subscriptions", "0004_outbox_commit_order")]

    operations = [
        migrations.AlterField(
            model_name="subscription",
            name="secret",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.RunSQL(SQL, REVERSE),
        migrations.RunPython(seal_stored, unseal_stored),
    ]
