"""Search index tuning, from the plans of bench/search_bench.py at 1,000,000 rows.

1. Extended statistics. The planner multiplies per-column selectivities as if
   independent: `param = 'gender'` (rare among all token rows) times `code = 'male'`
   (rare among all codes) estimated one row where there were thousands, and it chose
   nested loops that turned a `gender:not=male` count into seconds. MCV lists and
   functional dependencies over (resource_type, param, value) show it the real
   combinations.
2. An index on the upper bound of numbers and quantities, as dates have: `gt`/`ge`
   compare the upper bound (`high > v`), which the (low, high) index cannot range over.
"""

from django.db import migrations

STATISTICS = {
    "fhir_idx_string": "resource_type, param",
    "fhir_idx_token": "resource_type, param, code",
    "fhir_idx_date": "resource_type, param",
    "fhir_idx_number": "resource_type, param",
    "fhir_idx_quantity": "resource_type, param, code",
    "fhir_idx_reference": "resource_type, param, target_type",
    "fhir_idx_uri": "resource_type, param",
    "fhir_idx_composite": "resource_type, param, code1",
}

SQL = "\n".join(
    [
        *(
            f"CREATE STATISTICS IF NOT EXISTS {table}_stats (dependencies, mcv) ON {columns}"
            f" FROM {table};"
            for table, columns in STATISTICS.items()
        ),
        "CREATE INDEX IF NOT EXISTS fhir_idx_number_search2"
        " ON fhir_idx_number (org_id, resource_type, param, high, low, id);",
        "CREATE INDEX IF NOT EXISTS fhir_idx_quantity_search2"
        " ON fhir_idx_quantity (org_id, resource_type, param, high, low, id);",
        *(f"ANALYZE {table};" for table in STATISTICS),
    ]
)
REVERSE = "\n".join(
    [
        "DROP INDEX IF EXISTS fhir_idx_quantity_search2;",
        "DROP INDEX IF EXISTS fhir_idx_number_search2;",
        *(f"DROP STATISTICS IF EXISTS {table}_stats;" for table in STATISTICS),
    ]
)


class Migration(migrations.Migration):
    dependencies = [("fhir", "0003_idempotency")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
