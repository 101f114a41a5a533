import datetime

from django.db import migrations, models


def publish_first_version(apps, schema_editor):
    PolicyVersion = apps.get_model("privacy", "PolicyVersion")
    PolicyVersion.objects.get_or_create(
        version=1,
        defaults={
            "last_updated": datetime.date(2026, 4, 21),
            "effective_on": datetime.date(2026, 4, 21),
            "summary": "First published version.",
            "template_name": "policies/privacy-v1.html",
        },
    )


class Migration(migrations.Migration):
    initial = True

    operations = [
        migrations.CreateModel(
            name="PolicyVersion",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("version", models.PositiveIntegerField(unique=True)),
                ("last_updated", models.DateField()),
                ("effective_on", models.DateField()),
                ("summary", models.TextField(blank=True)),
                ("template_name", models.CharField(max_length=200)),
            ],
            options={"ordering": ["-version"]},
        ),
        migrations.RunPython(publish_first_version, migrations.RunPython.noop),
    ]
