"""Search parameters whose index rows are other parameters' rows (SearchParam.parts):
Observation's combo-* parameters are unions of a parameter and its component-*
counterpart, so writing their rows would repeat those rows. None are written; searches
read the parts' rows. Search results over known data: tests/search_data.py."""

from collections.abc import Mapping
from dataclasses import replace
from typing import Any
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
        if p.parts and not p.restrict_to
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
        # the same expression twice: the first code keeps the rows
        ("Patient", "phonetic"): ("name",),
        ("Practitioner", "phonetic"): ("name",),
        ("RelatedPerson", "phonetic"): ("name",),
        ("Person", "phonetic"): ("name",),
        ("CapabilityStatement", "version"): ("fhirversion",),
        ("CodeSystem", "url"): ("system",),
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
    parameter with parts would write itself equal its parts' rows, renamed (for a
    restricted reference parameter: its base's reference rows of the one target type;
    it keeps its own :identifier rows)."""
    checked = 0
    resources = [r for _path, r in example_resources(include_conformance=False)] + RESOURCES
    for resource in resources:
        params: Mapping[str, registry.SearchParam] = (
            registry.PARAMS.get(resource.get("resourceType", "")) or {}
        )
        for param in params.values():
            if not param.parts:
                continue
            own = _own_rows(replace(param, parts=(), restrict_to=None), resource)
            union = IndexRows()
            names: dict[str, str] = {}
            for part in param.parts:
                part_rows = _own_rows(params[part], resource)
                for table in IndexRows.__dataclass_fields__:
                    getattr(union, table).update(getattr(part_rows, table))
                names[part] = param.code
                names[part + ":text"] = param.code + ":text"
            if param.restrict_to:
                union.reference = {r for r in union.reference if r[1] == param.restrict_to}
                union.token, own.token = set(), set()  # identifier rows: its own
            assert _renamed(union, names) == _renamed(own, {}), (resource.get("id"), param.code)
            checked += len(own)
    assert checked > 300


def test_patient_is_subject_of_type_patient_on_every_clinical_resource() -> None:
    restricted = {
        (t, code): (p.parts, p.restrict_to)
        for t, params in registry.PARAMS.items()
        for code, p in params.items()
        if p.restrict_to
    }
    assert len(restricted) == 47
    for resource_type in ("Observation", "Condition", "Encounter", "DiagnosticReport"):
        assert restricted[(resource_type, "patient")] == (("subject",), "Patient")
    assert all(
        registry.PARAMS[t][parts[0]].type == "reference"
        for (t, _), (parts, _) in restricted.items()
    )


def test_a_restricted_parameter_keeps_its_identifier_rows_only() -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p1", "identifier": {"system": "urn:mrn", "value": "7"}},
    }
    rows = extract(observation)
    assert ("subject", "Patient", "p1") in rows.reference
    assert not [r for r in rows.reference if r[0] == "patient"]
    assert ("patient:identifier", "urn:mrn", "7") in rows.token
    assert ("subject:identifier", "urn:mrn", "7") in rows.token


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
    assert "component-code" in stored and "subject" in stored
    assert not [name for name in stored if name.startswith("combo-") or name == "patient"]


@pytest.mark.django_db
def test_searches_on_patient_read_subject_rows_of_patients_only() -> None:
    """`patient` has no reference rows of its own: every way of searching it reads
    `subject`'s rows whose target is a Patient, never a Group subject's."""
    from urllib.parse import parse_qsl

    from clinik.fhir.search.query import parse_search

    org, store = uuid4(), PostgresStore()
    resources: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "p1", "name": [{"family": "Lindqvist"}]},
        {"resourceType": "Group", "id": "p1", "type": "person", "actual": True},
        {
            "resourceType": "Observation",
            "id": "of-patient",
            "status": "final",
            "code": {"coding": [{"system": "urn:c", "code": "x"}]},
            "subject": {"reference": "Patient/p1"},
        },
        {
            "resourceType": "Observation",
            "id": "of-group",
            "status": "final",
            "code": {"coding": [{"system": "urn:c", "code": "x"}]},
            "subject": {"reference": "Group/p1"},  # the same id, another type
        },
        {
            "resourceType": "Observation",
            "id": "of-nobody",
            "status": "final",
            "code": {"coding": [{"system": "urn:c", "code": "x"}]},
        },
    ]
    for resource in resources:
        store.create(org, resource, resource_id=resource["id"])

    def found(resource_type: str, qs: str) -> tuple[set[str], set[str]]:
        query = parse_search(parse_qsl(qs), [resource_type])
        result = store.search(org, query)
        return {v.id for v in result.matches}, {
            f"{v.resource_type}/{v.id}" for v in result.included
        }

    assert found("Observation", "patient=p1") == ({"of-patient"}, set())
    assert found("Observation", "subject=p1") == ({"of-patient", "of-group"}, set())
    assert found("Observation", "patient:missing=true") == ({"of-group", "of-nobody"}, set())
    assert found("Observation", "patient:missing=false") == ({"of-patient"}, set())
    assert found("Observation", "code=x&patient:not=nobody")[0] >= {"of-patient"}
    assert found("Observation", "patient.name=lindqvist") == ({"of-patient"}, set())
    assert found("Patient", "_has:Observation:patient:code=x") == ({"p1"}, set())
    assert found("Group", "_has:Observation:patient:code=x") == (set(), set())
    assert found("Group", "_has:Observation:subject:code=x") == ({"p1"}, set())
    assert found("Observation", "_id=of-patient,of-group&_include=Observation:patient") == (
        {"of-patient", "of-group"},
        {"Patient/p1"},
    )
    assert found("Patient", "_id=p1&_revinclude=Observation:patient") == (
        {"p1"},
        {"Observation/of-patient"},
    )
    assert found("Group", "_id=p1&_revinclude=Observation:patient") == ({"p1"}, set())
    ordered = store.search(org, parse_search(parse_qsl("_sort=patient"), ["Observation"]))
    assert next(v.id for v in ordered.matches) == "of-patient"  # the only one with a key
    store.purge_tenant(org)
