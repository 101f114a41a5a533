"""The HL7 examples' own search parameters on their own data: every example of the R4
package is indexed, and searching by the values extracted from it finds it again."""

from collections.abc import Iterator
from datetime import UTC
from typing import Any
from uuid import UUID, uuid4

import pytest

from clinik.fhir.search import registry
from clinik.fhir.search.extract import extract
from clinik.fhir.search.query import parse_search
from clinik.fhir.search.values import HIGHEST, LOWEST, MAX_INDEXED_CHARS
from clinik.fhir.spec import example_resources
from clinik.fhir.store.postgres import PostgresStore

pytestmark = pytest.mark.django_db

STORE = PostgresStore()
EXAMPLES = [resource for _path, resource in example_resources(include_conformance=False)]


@pytest.fixture(scope="module")
def tenant(django_db_setup: None, django_db_blocker: Any) -> Iterator[UUID]:
    org = uuid4()
    with django_db_blocker.unblock():
        for resource in EXAMPLES:
            STORE.create(org, resource, resource_id=resource["id"])
    yield org
    with django_db_blocker.unblock():
        STORE.purge_tenant(org)


def test_every_example_indexes_within_the_btree_limits() -> None:
    rows = 0
    for resource in EXAMPLES:
        found = extract(resource)
        rows += len(found)
        for _param, value, exact in found.string:
            assert len(value) <= MAX_INDEXED_CHARS and len(exact) <= MAX_INDEXED_CHARS
    assert rows > 5_000


def test_most_parameters_find_values_in_the_examples() -> None:
    """Each compiled expression is exercised: count the (type, parameter) pairs that
    extract at least one value from the examples of their type."""
    used: set[tuple[str, str]] = set()
    for resource in EXAMPLES:
        for param in registry.searchable(resource["resourceType"]):
            if param.extract is not None and param.values(resource):
                used.add((param.resource_type, param.code))
    types = {r["resourceType"] for r in EXAMPLES}
    defined = {(t, p.code) for t in types for p in registry.searchable(t) if p.extract}
    assert len(used) >= 0.55 * len(defined), (len(used), len(defined))
    for expected in [
        ("Patient", "family"),
        ("Patient", "deceased"),  # X.exists() and X != false
        ("Observation", "code-value-quantity"),
        ("Observation", "patient"),  # subject.where(resolve() is Patient)
        ("Condition", "onset-date"),  # onset.as(dateTime)
        ("Practitioner", "email"),  # telecom.where(system='email')
        ("MolecularSequence", "chromosome-variant-coordinate"),  # %resource in a component
    ]:
        assert expected in used, expected


def test_no_r4_search_parameter_needs_fhirpathpy_and_deceased_agrees_with_it() -> None:
    """Every R4 expression compiles to an extractor; `Patient.deceased.exists() and
    Patient.deceased != false`, the one boolean-valued one, gives what fhirpathpy gives."""
    from clinik.fhir.search import paths

    fallbacks = [
        (p.resource_type, p.code)
        for t in registry.PARAMS
        for p in registry.PARAMS[t].values()
        if p.fallback
    ]
    assert fallbacks == []
    expression = "Patient.deceased.exists() and Patient.deceased != false"
    compiled = paths.compile_path(expression, "Patient")
    reference = paths.fhirpath_extractor(expression, "Patient")
    assert compiled is not None
    for deceased in (
        {},
        {"deceasedBoolean": True},
        {"deceasedBoolean": False},
        {"deceasedDateTime": "2015-02-14T13:42:00+10:00"},
    ):
        patient = {"resourceType": "Patient", **deceased}
        assert compiled(patient) == reference(patient), deceased


def _escape(text: str) -> str:
    for char in "\\,|$":
        text = text.replace(char, "\\" + char)
    return text


def _instant(moment: Any) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _probes(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Search parameters built from what the resource was indexed under; each must find
    the resource again."""
    rows = extract(resource)
    for param, _value, exact in sorted(rows.string):
        if ":" not in param:
            yield param, _escape(exact[:40])
    for param, system, code in sorted(rows.token):
        if ":" not in param:
            yield param, f"{_escape(system)}|{_escape(code)}" if system else _escape(code)
    for param, low, high in sorted(rows.date):
        if LOWEST < high < HIGHEST and low.year > 1:
            yield param, f"le{_instant(high)}"
    for param, number, _upper in sorted(rows.number):
        if abs(number) != float("inf"):
            yield param, f"ge{number!r}"
    for param, target_type, target_id in sorted(rows.reference):
        if target_type and "/" not in target_id:
            yield param, f"{target_type}/{target_id}"
    for param, uri in sorted(rows.uri):
        yield param, _escape(uri)


def test_searching_by_extracted_values_finds_each_example(tenant: UUID) -> None:
    checked = 0
    for resource in EXAMPLES:
        resource_type = resource["resourceType"]
        for code, value in list(_probes(resource))[:6]:
            query = parse_search([(code, value), ("_count", "1000")], [resource_type])
            found = {v.id for v in STORE.search(tenant, query).matches}
            assert resource["id"] in found, (resource_type, resource["id"], code)
            checked += 1
    assert checked > 2000
