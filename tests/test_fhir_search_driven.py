"""Searches driven from one criterion's ids with every other criterion probed per
candidate (clinik.fhir.search.sql, _Statement._from_index and Compiler.probe): the
combinations that path introduced give the same answers as each criterion alone.

Each case pairs a criterion that drives (a reference, a token, a chain, a `_has`) with
one that is probed (a chain, a `_has`, `:not`, `_lastUpdated`, a sort key), over a
small data set with deleted resources among the candidates."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

import pytest

from clinik.fhir.search.query import parse_search
from clinik.fhir.store.postgres import PostgresStore

pytestmark = pytest.mark.django_db

STORE = PostgresStore()
LOINC = "http://loinc.org"


def _observation(
    oid: str, patient: str, code: str, value: float | None, date: str | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
    }
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": "mmHg"}
    if date is not None:
        resource["effectiveDateTime"] = date
    return resource


@pytest.fixture
def org() -> Iterator[UUID]:
    tenant = uuid4()
    patients: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "p1", "gender": "female", "name": [{"family": "Ada"}]},
        {"resourceType": "Patient", "id": "p2", "gender": "male", "name": [{"family": "Bo"}]},
        {"resourceType": "Patient", "id": "p3", "gender": "female", "name": [{"family": "Ada"}]},
        {"resourceType": "Patient", "id": "gone", "gender": "female", "name": [{"family": "Ada"}]},
    ]
    observations = [
        _observation("o1", "p1", "8480-6", 120, "2024-01-01"),
        _observation("o2", "p1", "8462-4", 80, "2024-03-01"),
        _observation("o3", "p2", "8480-6", 140, None),
        _observation("o4", "p3", "8480-6", 90, "2024-02-01"),
        _observation("o5", "gone", "8480-6", 150, "2024-05-01"),
        _observation("o6", "p3", "8462-4", 70, "2024-04-01"),
        _observation("o7", "p2", "8480-6", 130, "2024-06-01"),
    ]
    for resource in [*patients, *observations]:
        STORE.create(tenant, resource, resource_id=str(resource["id"]))
    STORE.delete(tenant, "Patient", "gone")  # o5 still refers to it
    STORE.delete(tenant, "Observation", "o7")  # p2's second 8480-6 is gone
    yield tenant
    STORE.purge_tenant(tenant)


def _search(org: UUID, resource_type: str, qs: str) -> list[str]:
    query = parse_search(parse_qsl(qs, keep_blank_values=True), [resource_type])
    result = STORE.search(org, query)
    found = [v.id for v in result.matches]
    assert result.total == len(found)
    return found


def _ids(org: UUID, resource_type: str, qs: str) -> set[str]:
    return set(_search(org, resource_type, qs))


def test_a_probed_chain_or_has_matches_as_it_does_alone(org: UUID) -> None:
    # code drives (first in the query), the chain is probed per candidate
    assert _ids(org, "Observation", "code=8480-6&subject:Patient.family=ada") == {"o1", "o4"}
    assert _ids(org, "Observation", "subject:Patient.family=ada") == {"o1", "o2", "o4", "o6"}
    # gender drives, `_has` is probed; a deleted patient's observation does not count
    assert _ids(org, "Patient", "gender=female&_has:Observation:subject:code=8480-6") == {
        "p1",
        "p3",
    }
    # two `_has`: the first drives (and the deleted target stays out), the second probes
    both = "_has:Observation:subject:code=8480-6&_has:Observation:subject:code=8462-4"
    assert _ids(org, "Patient", both) == {"p1", "p3"}
    assert _ids(org, "Patient", "_has:Observation:subject:value-quantity=gt135") == {"p2"}
    # a `_has` whose inner criterion is no index probe (:not reads the source resource)
    assert _ids(org, "Patient", "gender=male&_has:Observation:subject:code:not=8462-4") == {"p2"}
    assert _ids(org, "Patient", "gender=female&_has:Observation:subject:code:not=8480-6") == {
        "p1",
        "p3",
    }
    # a chain inside a probed `_has`
    nested = "gender=female&_has:Observation:subject:subject:Patient.family=bo"
    assert _ids(org, "Patient", nested) == set()


def test_not_missing_and_id_next_to_a_driver(org: UUID) -> None:
    assert _ids(org, "Observation", "subject=Patient/p1&code:not=8480-6") == {"o2"}
    assert _ids(org, "Observation", "code=8480-6&date:missing=true") == {"o3"}
    assert _ids(org, "Observation", "code=8480-6&_id=o1,o3,o7") == {"o1", "o3"}
    assert _ids(org, "Observation", "subject=Patient/p3&_id:not=o4") == {"o6"}


def test_last_updated_next_to_a_driver(org: UUID) -> None:
    assert _ids(org, "Observation", "code=8480-6&_lastUpdated=gt2000-01-01") == {
        "o1",
        "o3",
        "o4",
        "o5",
    }
    assert _ids(org, "Observation", "code=8480-6&_lastUpdated=lt2000-01-01") == set()
    (o1,) = STORE.search(org, parse_search([("_id", "o1")], ["Observation"])).matches
    after = (o1.last_updated + timedelta(microseconds=1)).isoformat().replace("+", "%2B")
    assert "o1" not in _ids(org, "Observation", f"code=8480-6&_lastUpdated=gt{after}")


def test_sorting_a_driven_search(org: UUID) -> None:
    # a value sort key per candidate; a candidate without the value sorts last
    assert _search(org, "Observation", "code=8480-6&_sort=date") == ["o1", "o4", "o5", "o3"]
    assert _search(org, "Observation", "code=8480-6&_sort=-date") == ["o5", "o4", "o1", "o3"]
    assert _search(org, "Observation", "subject=Patient/p1&_sort=-value-quantity") == [
        "o1",
        "o2",
    ]
    # _lastUpdated and _id as sort keys of a driven search
    by_update = _search(org, "Observation", "code=8480-6&_sort=-_lastUpdated")
    assert sorted(by_update) == ["o1", "o3", "o4", "o5"]
    assert by_update == ["o5", "o4", "o3", "o1"]  # created in that order, reversed
    assert _search(org, "Observation", "code=8480-6&_sort=-_id") == ["o5", "o4", "o3", "o1"]
    # `_has` drives a sorted search: the deleted patient stays out
    assert _search(org, "Patient", "_has:Observation:subject:code=8480-6&_sort=-_id") == [
        "p3",
        "p2",
        "p1",
    ]


def test_revinclude_leaves_deleted_sources_out(org: UUID) -> None:
    query = parse_search([("_id", "p2"), ("_revinclude", "Observation:subject")], ["Patient"])
    result = STORE.search(org, query)
    assert [v.id for v in result.matches] == ["p2"]
    assert [v.id for v in result.included] == ["o3"]  # o7 was deleted
