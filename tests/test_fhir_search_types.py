"""Searches over several types in one statement (clinik.fhir.search.sql,
_Statement._from_pairs): `_type=A,B` with criteria of the same shape on each type,
and a compartment's `*`, driven from one criterion's (type, id) pairs with the
others probed per candidate. Each must answer what the single-type searches answer
together, deleted resources and other tenants left out."""

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

import pytest

from clinik.fhir.search import compartments
from clinik.fhir.search.query import Compartment, parse_search
from clinik.fhir.search.sql import _shared_shape
from clinik.fhir.store.postgres import PostgresStore

pytestmark = pytest.mark.django_db

STORE = PostgresStore()
SNOMED = "http://snomed.info/sct"
TYPES = ["Condition", "Observation"]


def _coded(rtype: str, rid: str, patient: str, code: str, text: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": rtype,
        "id": rid,
        "code": {"coding": [{"system": SNOMED, "code": code}], "text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if rtype == "Observation":
        resource["status"] = "final"
    return resource


def _load(tenant: UUID, resources: list[dict[str, Any]]) -> None:
    for resource in resources:
        STORE.create(tenant, resource, resource_id=str(resource["id"]))


@pytest.fixture
def org() -> Iterator[UUID]:
    tenant, other = uuid4(), uuid4()
    _load(
        tenant,
        [
            {"resourceType": "Patient", "id": "p1"},
            {"resourceType": "Patient", "id": "p2"},
            _coded("Observation", "o1", "p1", "111", "blood pressure"),
            _coded("Observation", "o2", "p1", "222", "heart rate"),
            _coded("Observation", "o3", "p2", "111", "blood pressure"),
            _coded("Observation", "gone", "p1", "111", "blood pressure"),
            _coded("Condition", "c1", "p1", "111", "blood disorder"),
            _coded("Condition", "c2", "p2", "333", "asthma"),
            {"resourceType": "Condition", "id": "c3", "code": {"text": "blood loss"}},
            {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}},
        ],
    )
    STORE.delete(tenant, "Observation", "gone")  # its index rows go, its references too
    # Another tenant with the same ids and codes: never in the answers.
    _load(other, [_coded("Observation", "o9", "p1", "111", "blood pressure")])
    yield tenant
    STORE.purge_tenant(tenant)
    STORE.purge_tenant(other)


def _system(org: UUID, qs: str, compartment: Compartment | None = None) -> list[str]:
    query = parse_search(parse_qsl(qs, keep_blank_values=True), None, compartment=compartment)
    assert not query.issues, query.issues
    result = STORE.search(org, query)
    found = [f"{v.resource_type}/{v.id}" for v in result.matches]
    assert result.total == len(found)
    return found


def _single(org: UUID, types: list[str], qs: str) -> set[str]:
    found: set[str] = set()
    for rtype in types:
        query = parse_search(parse_qsl(qs, keep_blank_values=True), [rtype])
        found |= {f"{rtype}/{v.id}" for v in STORE.search(org, query).matches}
    return found


CASES = [
    "code=111",
    f"code={SNOMED}|111",
    "code:text=blood",
    "code:text=blood&subject:missing=false",
    "subject:missing=false&code:text=blood",
    "code:text=blood&subject=Patient/p1",
    "subject=Patient/p1&code:not=111",
    "code:text=blood&subject:missing=true",
    "code=111,333&_id=o1,o3,c2,gone",
    "code:text=blood&_lastUpdated=gt2000-01-01",
    "code:text=blood&_lastUpdated=lt2000-01-01",
    "code:text=blood&code:text=pressure",
]


@pytest.mark.parametrize("qs", CASES)
def test_several_types_answer_what_each_type_answers(org: UUID, qs: str) -> None:
    query = parse_search(parse_qsl(f"_type=Condition,Observation&{qs}"), None)
    assert _shared_shape(query)  # one statement for both types: the path under test
    found = _system(org, f"_type=Condition,Observation&{qs}&_count=100")
    assert found == sorted(found)  # the default order: type, then id
    assert set(found) == _single(org, TYPES, qs)


def test_the_expected_answers(org: UUID) -> None:
    both = "_type=Condition,Observation&_count=100"
    assert _system(org, f"{both}&code=111") == ["Condition/c1", "Observation/o1", "Observation/o3"]
    assert _system(org, f"{both}&code:text=blood&subject:missing=true") == ["Condition/c3"]
    assert _system(org, f"{both}&subject=Patient/p1&code:not=111") == ["Observation/o2"]


def test_sorted_and_paged_over_several_types(org: UUID) -> None:
    both = "_type=Condition,Observation&code:text=blood"
    ordered = _system(org, f"{both}&_sort=-_lastUpdated")
    # created in the fixture's order: the last one first
    assert ordered == ["Condition/c3", "Condition/c1", "Observation/o3", "Observation/o1"]
    assert _system(org, f"{both}&_sort=_id") == [
        "Condition/c1",
        "Condition/c3",
        "Observation/o1",
        "Observation/o3",
    ]
    pages: list[str] = []
    query = parse_search(parse_qsl(f"{both}&_count=3&_total=accurate"), None)
    result = STORE.search(org, query)
    assert result.total == 4
    pages += [f"{v.resource_type}/{v.id}" for v in result.matches]
    assert result.next is not None
    query.cursor = result.next
    pages += [f"{v.resource_type}/{v.id}" for v in STORE.search(org, query).matches]
    assert pages == sorted(_single(org, TYPES, "code:text=blood"))


def _compartment(focal_id: str) -> Compartment:
    definition = compartments.get("Patient")
    assert definition is not None
    return Compartment(
        "Patient", focal_id, tuple(definition.members.items()), definition.focal_member
    )


def test_a_compartment_over_every_type(org: UUID) -> None:
    p1 = _compartment("p1")
    assert _system(org, "_count=100", p1) == [
        "Condition/c1",
        "Encounter/e1",
        "Observation/o1",
        "Observation/o2",
    ]
    assert _system(org, "_type=Condition,Observation&code=111", p1) == [
        "Condition/c1",
        "Observation/o1",
    ]
    assert _system(org, "_type=Condition,Observation&code:not=111", p1) == ["Observation/o2"]
    assert _system(org, "_sort=-_lastUpdated", p1) == [
        "Encounter/e1",
        "Condition/c1",
        "Observation/o2",
        "Observation/o1",
    ]
    assert _system(org, "_count=100", _compartment("p2")) == ["Condition/c2", "Observation/o3"]
    assert _system(org, "_count=100", _compartment("nobody")) == []
