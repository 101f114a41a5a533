"""FHIR search against the PostgreSQL store: every parameter type, modifier and prefix
over a known data set, with exact expected results; result parameters; index upkeep.

The data set is stored once per module under its own tenant (committed, then purged),
so the many cases below only read."""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID, uuid4

import pytest
from django.db import connection

from clinik.fhir.http import FhirError
from clinik.fhir.search.extract import TABLES
from clinik.fhir.search.query import Cursor, SearchQuery, parse_search
from clinik.fhir.store.postgres import PostgresStore, erase_deleted
from clinik.fhir.tenancy import TENANT_SYSTEM, tenant_transaction
from tests.search_data import CASES, PATIENTS, RESOURCES

pytestmark = pytest.mark.django_db

STORE = PostgresStore()


@pytest.fixture(scope="module")
def tenant(django_db_setup: None, django_db_blocker: Any) -> Iterator[UUID]:
    org = uuid4()
    with django_db_blocker.unblock():
        for resource in RESOURCES:
            STORE.create(org, resource, resource_id=resource["id"])
    yield org
    with django_db_blocker.unblock():
        STORE.purge_tenant(org)


def query(types: list[str] | None, qs: str, **kw: Any) -> SearchQuery:
    return parse_search(parse_qsl(qs, keep_blank_values=True), types, **kw)


def search(org: UUID, resource_type: str | None, qs: str, **kw: Any) -> Any:
    return STORE.search(org, query([resource_type] if resource_type else None, qs, **kw))


def ids(org: UUID, resource_type: str, qs: str) -> set[str]:
    return {v.id for v in search(org, resource_type, qs).matches}


@pytest.mark.parametrize(("resource_type", "qs", "expected"), CASES, ids=[c[1] for c in CASES])
def test_search_finds_exactly(tenant: UUID, resource_type: str, qs: str, expected: set[str]):
    result = search(tenant, resource_type, f"{qs}&_count=1000")
    assert {v.id for v in result.matches} == expected
    assert result.total == len(expected)
    assert all(v.resource_type == resource_type for v in result.matches)


# --- result parameters ----------------------------------------------------------------------


def test_sort_by_string_ascending_and_descending(tenant: UUID) -> None:
    asc = [v.id for v in search(tenant, "Patient", "_sort=family&family:missing=false").matches]
    assert asc == ["pat-angstrom", "pat-chalmers", "pat-muller", "pat-muller2", "pat-smith"]
    desc = [v.id for v in search(tenant, "Patient", "_sort=-family&family:missing=false").matches]
    assert desc == ["pat-smith", "pat-muller", "pat-muller2", "pat-chalmers", "pat-angstrom"]


def test_sort_by_date_puts_missing_values_last(tenant: UUID) -> None:
    asc = [v.id for v in search(tenant, "Patient", "_sort=birthdate").matches]
    assert asc == [
        "pat-chalmers",
        "pat-muller",
        "pat-muller2",
        "pat-angstrom",
        "pat-smith",
        "pat-anon",
    ]
    desc = [v.id for v in search(tenant, "Patient", "_sort=-birthdate").matches]
    assert desc == [
        "pat-smith",
        "pat-angstrom",
        "pat-muller",
        "pat-muller2",
        "pat-chalmers",
        "pat-anon",
    ]


def test_sort_by_several_keys(tenant: UUID) -> None:
    found = search(tenant, "Patient", "_sort=gender,-birthdate").matches
    assert [v.id for v in found] == [
        "pat-muller",  # female, 1980-03
        "pat-anon",  # female, no birth date
        "pat-muller2",  # male, 1980-03-15
        "pat-chalmers",  # male, 1974
        "pat-smith",  # other
        "pat-angstrom",  # unknown
    ]


def test_sort_by_quantity_token_id_and_last_updated(tenant: UUID) -> None:
    values = search(tenant, "Observation", "_sort=-value-quantity&value-quantity:missing=false")
    assert [v.id for v in values.matches] == ["o2", "o1", "o3", "o4"]
    by_status = search(tenant, "Observation", "_sort=status,_id").matches
    assert [v.id for v in by_status] == ["o5", "o7", "o1", "o2", "o4", "o6", "o3"]
    by_id = search(tenant, "Patient", "_sort=-_id").matches
    assert [v.id for v in by_id] == sorted(PATIENTS, reverse=True)
    recent = search(tenant, "Patient", "_sort=-_lastUpdated").matches
    assert [v.id for v in recent] == [
        v.id for v in sorted(recent, key=lambda v: v.last_updated, reverse=True)
    ]


def test_sort_by_a_parameter_read_from_its_parts(tenant: UUID) -> None:
    """combo-value-quantity has no rows of its own (value-quantity's and
    component-value-quantity's are its rows): o5 sorts by its components, 95 and 150."""
    qs = "combo-value-quantity:missing=false&_sort="
    ascending = search(tenant, "Observation", qs + "combo-value-quantity").matches
    assert [v.id for v in ascending] == ["o4", "o5", "o3", "o1", "o2"]
    descending = search(tenant, "Observation", qs + "-combo-value-quantity").matches
    assert [v.id for v in descending] == ["o5", "o2", "o1", "o3", "o4"]


def test_default_order_is_by_id(tenant: UUID) -> None:
    assert [v.id for v in search(tenant, "Patient", "").matches] == sorted(PATIENTS)


def test_include_adds_the_referenced_resources(tenant: UUID) -> None:
    result = search(tenant, "Observation", "code=8480-6&_include=Observation:subject")
    assert {v.id for v in result.matches} == {"o1", "o2", "o3"}
    assert {(v.resource_type, v.id) for v in result.included} == {
        ("Patient", "pat-chalmers"),
        ("Patient", "pat-muller"),
    }


def test_include_with_target_type_and_wildcard(tenant: UUID) -> None:
    result = search(tenant, "Observation", "_id=o1&_include=Observation:performer:Practitioner")
    assert {v.id for v in result.included} == {"pr-smith"}
    everything = search(tenant, "Observation", "_id=o1&_include=*")
    assert {v.id for v in everything.included} == {"pat-chalmers", "pr-smith", "e1"}


def test_include_iterate_follows_included_resources(tenant: UUID) -> None:
    once = search(tenant, "Observation", "_id=o3&_include=Observation:subject")
    assert {v.id for v in once.included} == {"pat-muller"}
    iterated = search(
        tenant,
        "Observation",
        "_id=o3&_include=Observation:subject&_include:iterate=Patient:organization"
        "&_include:iterate=Organization:partof",
    )
    assert {v.id for v in iterated.included} == {"pat-muller", "org-beta", "org-acme"}


def test_revinclude_adds_resources_that_refer_to_matches(tenant: UUID) -> None:
    result = search(tenant, "Patient", "_id=pat-chalmers&_revinclude=Observation:subject")
    assert {v.id for v in result.included} == {"o1", "o2"}
    both = search(
        tenant,
        "Patient",
        "_id=pat-chalmers&_revinclude=Observation:subject&_revinclude=Condition:subject",
    )
    assert {v.id for v in both.included} == {"o1", "o2", "c1"}


def test_revinclude_iterate(tenant: UUID) -> None:
    result = search(
        tenant,
        "Organization",
        "_id=org-beta&_revinclude=Patient:organization&_revinclude:iterate=Observation:subject",
    )
    assert {v.id for v in result.included} == {"pat-muller", "o3"}


def test_included_resources_are_not_repeated_or_matches(tenant: UUID) -> None:
    result = search(tenant, "Patient", "_id=pat-chalmers,pat-muller&_include=Patient:link")
    assert result.included == []
    orgs = search(tenant, "Organization", "_include=Organization:partof")
    assert {v.id for v in orgs.matches} == {"org-acme", "org-beta"}
    assert orgs.included == []


def test_total_modes(tenant: UUID) -> None:
    assert search(tenant, "Patient", "_count=2").total == 6
    assert search(tenant, "Patient", "_count=2&_total=accurate").total == 6
    assert search(tenant, "Patient", "_count=2&_total=none").total is None
    estimate = search(tenant, "Patient", "_count=2&_total=estimate").total
    assert isinstance(estimate, int) and estimate >= 0


def test_summary_count_and_count_zero_return_only_the_total(tenant: UUID) -> None:
    counted = search(tenant, "Observation", "code=8480-6&_summary=count")
    assert counted.total == 3 and counted.matches == []
    zero = search(tenant, "Observation", "code=8480-6&_count=0")
    assert zero.total == 3 and zero.matches == []


def test_paging_by_key_has_next_and_previous(tenant: UUID) -> None:
    first = search(tenant, "Patient", "_count=4")
    assert [v.id for v in first.matches] == sorted(PATIENTS)[:4]
    assert first.previous is None and first.next is not None
    second = search(tenant, "Patient", f"_count=4&_cursor={first.next.encode()}")
    assert [v.id for v in second.matches] == sorted(PATIENTS)[4:]
    assert second.next is None and second.previous is not None
    back = search(tenant, "Patient", f"_count=4&_cursor={second.previous.encode()}")
    assert [v.id for v in back.matches] == sorted(PATIENTS)[:4]
    assert back.previous is None and back.next is not None


def test_paging_with_sort_uses_offsets(tenant: UUID) -> None:
    first = search(tenant, "Patient", "_count=4&_sort=-_id")
    second = search(tenant, "Patient", f"_count=4&_sort=-_id&_cursor={first.next.encode()}")
    assert [v.id for v in first.matches + second.matches] == sorted(PATIENTS, reverse=True)
    assert second.next is None and second.previous == Cursor(0)


def test_legacy_offset_still_pages(tenant: UUID) -> None:
    assert [v.id for v in search(tenant, "Patient", "_count=2&_offset=4").matches] == sorted(
        PATIENTS
    )[4:]


def test_system_search_across_named_types(tenant: UUID) -> None:
    result = search(tenant, None, "_type=Patient,Practitioner&name=smith")
    assert {(v.resource_type, v.id) for v in result.matches} == {
        ("Patient", "pat-smith"),
        ("Practitioner", "pr-smith"),
    }
    assert result.total == 2


def test_system_search_by_common_parameters(tenant: UUID) -> None:
    result = search(tenant, None, "_id=pat-chalmers,o1,vs1")
    assert {(v.resource_type, v.id) for v in result.matches} == {
        ("Patient", "pat-chalmers"),
        ("Observation", "o1"),
        ("ValueSet", "vs1"),
    }
    assert {v.id for v in search(tenant, None, "_tag=urn:tags|vip").matches} == {"pat-chalmers"}
    everything = search(tenant, None, "_count=1000")
    assert everything.total == len(RESOURCES)


def test_system_search_with_chains_per_type(tenant: UUID) -> None:
    result = search(tenant, None, "_type=Observation,Encounter&subject.name=chalmers")
    assert {v.id for v in result.matches} == {"o1", "o2", "e1"}
    paged = search(tenant, None, "_type=Observation,Encounter&subject.name=chalmers&_count=2")
    assert [v.id for v in paged.matches] == ["e1", "o1"]
    rest = search(
        tenant,
        None,
        f"_type=Observation,Encounter&subject.name=chalmers&_count=2&_cursor={paged.next.encode()}",
    )
    assert [v.id for v in rest.matches] == ["o2"]
    assert paged.total == 3


def test_the_tenant_tag_matches_every_own_resource(tenant: UUID) -> None:
    own = search(tenant, "Patient", f"_tag={TENANT_SYSTEM}|{tenant}")
    assert {v.id for v in own.matches} == PATIENTS
    other = search(tenant, "Patient", f"_tag={TENANT_SYSTEM}|{uuid4()}")
    assert other.matches == []
    assert search(tenant, "Patient", f"_tag:not={TENANT_SYSTEM}|{tenant}").matches == []


# --- parameters the server does not know, and malformed values ------------------------------


def test_unknown_parameters_are_reported_and_ignored() -> None:
    parsed = query(["Patient"], "family=x&foo=1&_text=abc&near=1&gender:in=http://vs")
    assert [len(c) for c in parsed.criteria.values()] == [1]
    assert parsed.issues == [
        "Unknown search parameter foo for Patient",
        "Search parameter _text is not supported",
        "Unknown search parameter near for Patient",
        "Modifier :in is not supported on gender",
    ]
    assert not any("abc" in issue or "http://vs" in issue for issue in parsed.issues)


@pytest.mark.parametrize(
    "qs",
    [
        "foo=1",
        "_text=abc",
        "gender:in=http://vs",
        "_sort=nonsense",
        "name.family=x",
        "_has:Foo:x:y=1",
    ],
)
def test_strict_handling_refuses_unknown_parameters(qs: str) -> None:
    with pytest.raises(FhirError) as refused:
        query(["Patient"], qs, strict=True)
    assert refused.value.status == 400


@pytest.mark.parametrize(
    ("resource_type", "qs"),
    [
        ("Patient", "birthdate=1974-13"),
        ("Patient", "birthdate=yesterday"),
        ("Patient", "birthdate=gt"),
        ("RiskAssessment", "probability=abc"),
        ("RiskAssessment", "probability=gtx"),
        ("Observation", "value-quantity=12|a|b|c"),
        ("Observation", "value-quantity=mm"),
        ("Patient", "family:missing=maybe"),
        ("Patient", "family="),
        ("Patient", "identifier=|"),
        ("Observation", "subject=Patient/bad id"),
        ("Observation", "subject:Patient=Group/1"),
        ("Observation", "code-value-quantity=8480-6"),
        ("Patient", "_count=-1"),
        ("Patient", "_count=ten"),
        ("Patient", "_total=some"),
        ("Patient", "_summary=maybe"),
        ("Patient", "_elements=a.b"),
        ("Patient", "_include=Patient"),
        ("Patient", "_cursor=not-a-cursor"),
        ("Patient", "_sort=-"),
        ("Patient", "_has:Observation:subject=1"),
        ("Observation", "subject.organization.partof.partof.name=x"),
    ],
)
def test_malformed_values_are_400_without_quoting_them(resource_type: str, qs: str) -> None:
    with pytest.raises(FhirError) as refused:
        query([resource_type], qs)
    assert refused.value.status == 400
    value = qs.partition("=")[2]
    if len(value) > 3:
        assert value not in refused.value.diagnostics


def test_count_is_capped_at_1000() -> None:
    assert query(["Patient"], "_count=5000").count == 1000
    assert query(["Patient"], "").count == 20


def test_system_search_needs_types_for_type_specific_parameters() -> None:
    parsed = query(None, "name=smith")
    assert parsed.issues and all(not c for c in parsed.criteria.values())
    with pytest.raises(FhirError):
        query(None, "_type=Patient,NoSuchType")


# --- index upkeep: same transaction as the resource ------------------------------------------


@pytest.fixture
def org() -> Iterator[UUID]:
    tenant = uuid4()
    yield tenant
    STORE.purge_tenant(tenant)


def _index_rows(org: UUID, resource_id: str) -> int:
    with tenant_transaction(org), connection.cursor() as cursor:
        total = 0
        for table in TABLES:
            cursor.execute(f"SELECT count(*) FROM {table} WHERE id = %s", [resource_id])  # noqa: S608
            total += cursor.fetchone()[0]
    return total


def test_update_reindexes_and_delete_removes_at_once(org: UUID) -> None:
    created = STORE.create(org, {"resourceType": "Patient", "name": [{"family": "Before"}]})
    assert ids(org, "Patient", "family=before") == {created.id}
    STORE.update(org, {"resourceType": "Patient", "name": [{"family": "After"}]}, created.id)
    assert ids(org, "Patient", "family=before") == set()
    assert ids(org, "Patient", "family=after") == {created.id}
    STORE.delete(org, "Patient", created.id)
    assert ids(org, "Patient", "family=after") == set()
    assert ids(org, "Patient", "") == set()
    assert _index_rows(org, created.id) == 0
    STORE.update(org, {"resourceType": "Patient", "name": [{"family": "Again"}]}, created.id)
    assert ids(org, "Patient", "family=again") == {created.id}


def test_a_failed_transaction_leaves_no_index_rows(org: UUID) -> None:
    with pytest.raises(RuntimeError), tenant_transaction(org):
        STORE.create(
            org, {"resourceType": "Patient", "name": [{"family": "Ghost"}]}, resource_id="g"
        )
        raise RuntimeError("roll back")
    assert _index_rows(org, "g") == 0
    assert ids(org, "Patient", "family=ghost") == set()


def test_expunge_purge_and_erase_remove_index_rows(org: UUID) -> None:
    kept = STORE.create(org, {"resourceType": "Patient", "name": [{"family": "Kept"}]})
    gone = STORE.create(org, {"resourceType": "Patient", "name": [{"family": "Gone"}]})
    assert _index_rows(org, gone.id) > 0
    STORE.expunge(org, "Patient", gone.id)
    assert _index_rows(org, gone.id) == 0
    erased = STORE.create(org, {"resourceType": "Patient", "name": [{"family": "Erased"}]})
    STORE.delete(org, "Patient", erased.id)
    erase_deleted(timedelta(0))
    assert _index_rows(org, erased.id) == 0
    assert ids(org, "Patient", "family=kept") == {kept.id}
    counts = STORE.purge_tenant(org)
    assert counts["fhir_idx_string"] >= 1
    assert _index_rows(org, kept.id) == 0


def test_erase_does_not_unindex_a_resource_recreated_after_its_delete(org: UUID) -> None:
    patient = STORE.create(org, {"resourceType": "Patient", "name": [{"family": "Phoenix"}]})
    STORE.delete(org, "Patient", patient.id)
    STORE.update(org, {"resourceType": "Patient", "name": [{"family": "Phoenix"}]}, patient.id)
    erase_deleted(timedelta(0))
    assert ids(org, "Patient", "family=phoenix") == {patient.id}


def test_walking_every_page_of_a_thousand_results(org: UUID) -> None:
    for n in range(1000):
        STORE.create(
            org,
            {
                "resourceType": "Patient",
                "name": [{"family": f"Many{n % 7}", "given": [f"G{n:04d}"]}],
                "gender": "female" if n % 2 else "male",
            },
            resource_id=f"many-{n:04d}",
        )
    expected = [f"many-{n:04d}" for n in range(1000)]
    for qs, order in (
        ("family=many", expected),
        ("family=many&_sort=-given", list(reversed(expected))),
        ("family=many&_sort=family,given", sorted(expected, key=lambda i: (int(i[5:]) % 7, i))),
    ):
        seen: list[str] = []
        cursor = ""
        pages = 0
        while True:
            result = search(org, "Patient", f"{qs}&_count=75{cursor}")
            assert result.total == 1000
            seen += [v.id for v in result.matches]
            pages += 1
            if result.next is None:
                break
            cursor = f"&_cursor={result.next.encode()}"
        assert pages == 14
        assert seen == order, qs


def test_purging_index_rows_in_small_batches_removes_them_all(org: UUID) -> None:
    from clinik.fhir.search.index import purge_index

    for n in range(7):
        STORE.create(org, {"resourceType": "Patient", "name": [{"family": f"P{n}"}]})
    counts = purge_index(org, batch=3)
    assert counts["fhir_idx_string"] == 7 * 2  # family and name (phonetic reads name's)
    assert ids(org, "Patient", "family=p") == set()
    assert purge_index(org, batch=3)["fhir_idx_string"] == 0


def test_deleted_resources_stay_out_of_searches_driven_by_index_rows(org: UUID) -> None:
    """Searches driven from index rows alone (no fhir_resource probe) rely on a delete
    removing its index rows; `_has`, whose ids come from other resources' references,
    still checks that the resource lives."""
    patient = STORE.create(org, {"resourceType": "Patient", "name": [{"family": "Doomed"}]})
    observation = STORE.create(
        org,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{patient.id}"},
        },
    )
    has = "_has:Observation:subject:code=http://loinc.org|8480-6"
    chain = "subject:Patient.family=doomed"
    assert ids(org, "Patient", has) == {patient.id}
    assert ids(org, "Observation", chain) == {observation.id}
    assert ids(org, "Observation", f"{chain}&code=http://loinc.org|8480-6") == {observation.id}
    STORE.delete(org, "Patient", patient.id)
    assert ids(org, "Patient", has) == set()
    assert ids(org, "Observation", chain) == set()
    STORE.delete(org, "Observation", observation.id)
    assert ids(org, "Observation", "code=http://loinc.org|8480-6") == set()
    assert ids(org, "Observation", "code=http://loinc.org|8480-6&_id=" + observation.id) == set()
