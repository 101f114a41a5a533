"""A tenant created after the last ANALYZE is estimated at one row by the planner
(migrations 0005, 0006 and 0007): reads by id must still use the primary key, value
searches the search index (never the rows-by-id index, whatever the statistics), and
the FHIR tables are analyzed again after a fixed number of changed rows."""

import re
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from clinik.fhir.search.query import parse_search
from clinik.fhir.store import get_store
from clinik.fhir.tenancy import tenant_transaction

pytestmark = pytest.mark.django_db(transaction=True)

STORE = get_store()


def _patients(tenant: UUID, count: int) -> list[str]:
    ids = [str(uuid4()) for _ in range(count)]
    with tenant_transaction(tenant):
        STORE.create_many(
            tenant,
            [
                ({"resourceType": "Patient", "name": [{"family": f"Family{n % 50:02d}"}]}, i)
                for n, i in enumerate(ids)
            ],
        )
    return ids


def _analyze() -> None:
    """ANALYZE as the owner role (the application role may not)."""
    s = connection.settings_dict
    owner = settings.DATABASE_OWNER_CREDENTIALS["USER"]
    url = f"postgresql://{owner}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    with psycopg.connect(url, autocommit=True) as session:
        for table in ("fhir_resource", "fhir_idx_string"):
            session.execute(f"ANALYZE {table}")


def _plan(tenant: UUID, sql: str, args: list) -> str:
    with tenant_transaction(tenant), connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (COSTS OFF) {sql}", args)
        return "\n".join(row[0] for row in cursor.fetchall())


@pytest.fixture
def tenants() -> Iterator[tuple[UUID, UUID, list[str]]]:
    old, new = uuid4(), uuid4()
    _patients(old, 4000)
    _analyze()  # the statistics know the old tenant only
    ids = _patients(new, 400)
    yield old, new, ids
    for tenant in (old, new):
        STORE.purge_tenant(tenant)
    _analyze()  # statistics of empty tables again, for the tests that follow


def test_a_new_tenant_reads_by_primary_key(tenants) -> None:
    """Fails with the index of migration 0001 (org_id, resource_type, last_updated): the
    planner reads the new tenant's Patients through it and filters by id."""
    _old, new, ids = tenants
    plan = _plan(
        new,
        "SELECT version_id, last_updated, content FROM fhir_resource"
        " WHERE org_id = %s AND resource_type = %s AND id = %s",
        [new, "Patient", ids[0]],
    )
    assert "fhir_resource_pkey" in plan, plan


def test_the_fhir_tables_are_analyzed_after_a_fixed_number_of_changes() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reloptions FROM pg_class"
            " WHERE relname = 'fhir_resource' OR relname LIKE 'fhir_idx_%%' AND relkind = 'r'"
        )
        options = dict(cursor.fetchall())
    assert len(options) == 9
    for table, reloptions in options.items():
        assert "autovacuum_analyze_scale_factor=0" in reloptions, table
        assert "autovacuum_analyze_threshold=10000" in reloptions, table


def _search_plan(tenant: UUID, params: list[tuple[str, str]]) -> str:
    """The plan of the statement a search runs (EXPLAIN ANALYZE: the real row counts)."""
    query = parse_search(params, ["Patient"])
    sent: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append((sql, params))
        return execute(sql, params, many, context)

    with tenant_transaction(tenant):
        with connection.execute_wrapper(capture):
            result = STORE.search(tenant, query)
        sql, params = next((s, p) for s, p in sent if "WITH m AS" in s)
        start = sql.index("WITH m AS")
        # the values travel as bind parameters: drop those of anything before the WITH
        params = list(params or [])[sql[:start].count("%s") :]
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql[start:]}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert result.total == 120
    return plan


@pytest.fixture
def fresh_tenant() -> Iterator[UUID]:
    """6,000 Patients loaded into tables last analyzed empty (autovacuum off, as on a
    development machine): the statistics know nothing of them."""
    _analyze()
    tenant = uuid4()
    _patients(tenant, 6000)
    yield tenant
    STORE.purge_tenant(tenant)
    _analyze()


def test_a_value_search_on_a_freshly_loaded_table_reads_the_search_index(fresh_tenant) -> None:
    """Fails with migration 0002's (org_id, resource_type, id, param) index: the planner
    read all 6,000 family rows of the tenant through it, 5,880 removed by the filter."""
    plan = _search_plan(fresh_tenant, [("family", "Family07")])
    assert "fhir_idx_string_search1" in plan, plan
    assert "fhir_idx_string_by_id" not in plan, plan
    assert "Rows Removed by Filter" not in plan, plan


def test_a_value_search_of_a_new_tenant_reads_the_search_index(tenants) -> None:
    _old, new, _ids = tenants
    _patients(new, 5600)
    plan = _search_plan(new, [("family", "Family07")])
    assert "fhir_idx_string_search1" in plan and "_by_id" not in plan, plan


@pytest.fixture
def fresh_observations() -> Iterator[UUID]:
    """Patients with Observations, loaded into search tables last analyzed empty."""
    s = connection.settings_dict
    owner = settings.DATABASE_OWNER_CREDENTIALS["USER"]
    url = f"postgresql://{owner}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
    tables = ("fhir_resource", "fhir_idx_token", "fhir_idx_reference", "fhir_idx_quantity")
    with psycopg.connect(url, autocommit=True) as session:
        for table in tables:
            session.execute(f"ANALYZE {table}")
    tenant = uuid4()
    resources: list[tuple[dict[str, Any], str]] = []
    for n in range(300):
        resources.append(({"resourceType": "Patient", "gender": "female"}, f"p{n}"))
        for k in range(4):
            code = "8867-4" if k == 0 else "8480-6"
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": f"Patient/p{n}"},
                "valueQuantity": {"value": 60 + k, "unit": "mmHg"},
            }
            resources.append((observation, f"o{n}-{k}"))
    with tenant_transaction(tenant):
        STORE.create_many(tenant, resources)
    yield tenant
    STORE.purge_tenant(tenant)
    with psycopg.connect(url, autocommit=True) as session:
        for table in tables:
            session.execute(f"ANALYZE {table}")


@pytest.mark.parametrize(
    ("resource_type", "params", "total"),
    [
        ("Patient", [("_has:Observation:patient:code", "8867-4")], 300),
        ("Observation", [("value-quantity", "gt0"), ("_sort", "-value-quantity")], 1200),
        ("Patient", [("gender", "female"), ("_has:Observation:patient:code:not", "1")], 300),
    ],
)
def test_searches_on_fresh_tables_compare_no_ids_in_join_filters(
    fresh_observations: UUID, resource_type: str, params: list[tuple[str, str]], total: int
) -> None:
    """Every statement the planner sees as one row per tenant: `r.id IN (subquery)`
    joins became nested loops that scanned a whole parameter per candidate and
    compared the ids in a join filter (`_has` and a sorted quantity search hit the
    10 s statement timeout at 18,000 resources). The ids are index conditions now."""
    query = parse_search(params, [resource_type])
    sent: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, args: Any, many: bool, context: Any) -> Any:
        sent.append((sql, args))
        return execute(sql, args, many, context)

    tenant = fresh_observations
    with tenant_transaction(tenant):
        with connection.execute_wrapper(capture):
            result = STORE.search(tenant, query)
        sql, args = next((s, p) for s, p in sent if "WITH m AS" in s)
        start = sql.index("WITH m AS")
        args = list(args or [])[sql[:start].count("%s") :]
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql[start:]}", args)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert result.total == total
    assert "Join Filter" not in plan, plan
    # what runs once per candidate is a lookup by id, never a scan of a parameter
    lines = plan.splitlines()
    for number, line in enumerate(lines):
        loops = re.search(r"loops=(\d+)", line)
        if "_by_id on" in line and loops and int(loops.group(1)) > 1:
            assert "Index Cond: ((id = " in lines[number + 1], plan


@pytest.mark.parametrize(
    ("params", "total"),
    [
        (
            [("_type", "Observation,Condition"), ("code", "8480-6"), ("subject:missing", "false")],
            900,
        ),
        (
            [
                ("_type", "Observation,Condition"),
                ("subject:missing", "false"),
                ("code", "8867-4"),
                ("_sort", "-_lastUpdated"),
            ],
            300,
        ),
    ],
)
def test_searches_over_several_types_on_fresh_tables_compare_no_ids_in_join_filters(
    fresh_observations: UUID, params: list[tuple[str, str]], total: int
) -> None:
    """The same over several types in one statement (`_type=A,B` with the same
    criteria on each): its `(type, id) IN (subquery)` joins over fhir_resource took
    10 s (cancelled) for two clauses over 30,000 resources; the pairs of one clause
    drive now and the other clause is a probe by type and id."""
    query = parse_search(params, None)
    sent: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, args: Any, many: bool, context: Any) -> Any:
        sent.append((sql, args))
        return execute(sql, args, many, context)

    tenant = fresh_observations
    with tenant_transaction(tenant):
        with connection.execute_wrapper(capture):
            result = STORE.search(tenant, query)
        sql, args = next((s, p) for s, p in sent if "WITH m AS" in s)
        start = sql.index("WITH m AS")
        args = list(args or [])[sql[:start].count("%s") :]
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql[start:]}", args)
            plan = "\n".join(row[0] for row in cursor.fetchall())
    assert result.total == total
    assert "Join Filter" not in plan, plan
    lines = plan.splitlines()
    for number, line in enumerate(lines):
        loops = re.search(r"loops=(\d+)", line)
        if " on fhir_" in line and loops and int(loops.group(1)) > 1:
            # once per candidate: a lookup by the candidate's id, never a range scan
            assert "id = " in lines[number + 1], plan
