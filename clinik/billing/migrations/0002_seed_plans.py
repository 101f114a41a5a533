from django.db import migrations

# Stripe price ids are set by staff in the admin (they differ between test and live
# mode); a plan without a price cannot be bought through Checkout.
PLANS = [
    {
        "slug": "free",
        "name": "Free",
        "monthly_price_cents": 0,
        "org_requests_per_minute": 1200,
        "key_requests_per_minute": 600,
        "included_requests": 10_000,
        "overage_per_1000_cents": 0,
        "max_keys": 3,
        "max_members": 3,
        "max_exports": 1,
        "sort_order": 10,
    },
    {
        "slug": "developer",
        "name": "Developer",
        "monthly_price_cents": 2900,
        "org_requests_per_minute": 3000,
        "key_requests_per_minute": 1500,
        "included_requests": 250_000,
        "overage_per_1000_cents": 40,
        "max_keys": 10,
        "max_members": 10,
        "max_exports": 2,
        "sort_order": 20,
    },
    {
        "slug": "scale",
        "name": "Scale",
        "monthly_price_cents": 19900,
        "org_requests_per_minute": 12000,
        "key_requests_per_minute": 6000,
        "included_requests": 5_000_000,
        "overage_per_1000_cents": 20,
        "max_keys": 50,
        "max_members": 50,
        "max_exports": 5,
        "sort_order": 30,
    },
    {
        "slug": "enterprise",
        "name": "Enterprise",
        "monthly_price_cents": 0,
        "org_requests_per_minute": 60000,
        "key_requests_per_minute": 30000,
        "included_requests": None,
        "overage_per_1000_cents": 0,
        "max_keys": None,
        "max_members": None,
        "max_exports": None,
        "is_public": False,
        "sort_order": 40,
    },
]


def seed(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    for plan in PLANS:
        Plan.objects.update_or_create(slug=plan["slug"], defaults=plan)


def unseed(apps, schema_editor):
    apps.get_model("billing", "Plan").objects.filter(slug__in=[p["slug"] for p in PLANS]).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
