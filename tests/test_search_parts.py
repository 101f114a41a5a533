"""Search parameters whose index rows are other parameters' rows (SearchParam.parts):
Observation's combo-* parameters are unions of a parameter and its component-*
counterpart, so writing their rows would repeat those rows. None are written; searches
read the parts' rows. Search results over known data: tests/search_data.py."""

from collections.abc import Mapping
from uuid import uuid4

import pytest
from django.db import connection

from clinik.fhir.search import registry
from clinik.fhir.search.extract import TABLES, IndexRows, _add, _add_composite, extract
from clinik.fhir.spec import example_resources
from clinik.fhir.store.postgres import PostgresStore
from clinik.fhir.tenancy import tenant_transaction
from tests.search_data import RESOURCES


def test_observation_combo_parameters_are_read_from_their_parts() -> None:
    with_parts = {
        (t, code): p.parts
        for t, params in registry.PARAMS.items()
        for code, p in params.items()
        if p.parts
    }
    assert with_parts == {
        ("Observation", "combo-code"): ("code", "component-code"),
        ("Observation", "combo-data-absent-reason"): (
            "component-data-absent-reason",
            "data-absent-reason",
        ),
        ("Observation", "combo-value-concept"): ("component-value-concept", "value-concept"),
        ("Observation", "combo-value-quantity"): ("component-value-quantity", "value-quantity"),
        ("Observation", "combo-code-value-concept"): (
            "code-value-concept",
            "component-code-value-concept",
        ),
        ("Observation", "combo-code-value-quantity"): (
            "code-value-quantity",
            "component-code-value-quantity",
        ),
    }
    for (resource_type, _code), parts in with_parts.items():
        for part in parts:
            assert not registry.PARAMS[resource_type][part].parts


def _own_rows(param: registry.SearchParam, resource: dict) -> IndexRows:
    rows = IndexRows()
    if param.type == "composite":
        _add_composite(rows, param, resource)
    else:
        _add(rows, param, param.values(resource))
    return rows


def _renamed(rows: IndexRows, names: dict[str, str]) -> dict[str, set[tuple]]:
    return {
        table: {(names.get(row[0], row[0]), *row[1:]) for row in getattr(rows, table)}
        for table in IndexRows.__dataclass_fields__
    }


def test_the_parts_rows_are_exactly_the_rows_the_parameter_would_have() -> None:
    """On every HL7 example and test resource of the types concerned: the rows a
    parameter with parts would write itself equal its parts' rows, renamed."""
    checked = 0
    resources = [r for _path, r in example_resources(include_conformance=False)] + RESOURCES
    for resource in resources:
        params: Mapping[str, registry.SearchParam] = (
            registry.PARAMS.get(resource.get("resourceType", "")) or {}
        )
        for param in params.values():
            if not param.parts:
                continue
            own = _own_rows(param, resource)
            union = IndexRows()
            names: dict[str, str] = {}
            for part in param.parts:
                part_rows = _own_rows(params[part], resource)
                for table in IndexRows.__dataclass_fields__:
                    getattr(union, table).update(getattr(part_rows, table))
                names[part] = param.code
                names[part + ":text"] = param.code + ":text"
            assert _renamed(union, names) == _renamed(own, {}), (resource.get("id"), param.code)
            checked += len(own)
    assert checked > 100


@pytest.mark.django_db
def test_no_rows_are_written_under_a_parameter_with_parts() -> None:
    o5 = next(r for r in RESOURCES if r["id"] == "o5")  # code and two components
    rows = extract(o5)
    assert {row[0] for row in rows.token} >= {"code", "component-code"}
    names = {row[0] for table in IndexRows.__dataclass_fields__ for row in getattr(rows, table)}
    assert not [name for name in names if name.startswith("combo-")]
    org = uuid4()
    store = PostgresStore()
    store.create(org, o5, resource_id="o5")
    with tenant_transaction(org), connection.cursor() as cursor:
        stored = set()
        for table in TABLES:
            cursor.execute(f"SELECT DISTINCT param FROM {table}")  # noqa: S608
            stored |= {row[0] for row in cursor.fetchall()}
    assert "component-code" in stored
    assert not [name for name in stored if name.startswith("combo-")]
