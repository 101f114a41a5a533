"""Tenant isolation of search: an outsider's searches never find, count, include or
chain into another tenant's resources, even when ids and values collide. Every test
runs twice: with both walls, and with the tag wall off so that PostgreSQL row-level
security alone must hold."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from clinik.fhir.search.query import parse_search
from clinik.fhir.store import _store
from clinik.fhir.store.postgres import PostgresStore
from clinik.fhir.tenancy import TENANT_SYSTEM, tenant_transaction
from tests.search_data import RESOURCES

pytestmark = pytest.mark.django_db


@pytest.fixture(params=["both-walls", "rls-only"])
def walls(request, settings) -> Iterator[str]:
    settings.FHIR_TAG_WALL = request.param == "both-walls"
    _store.cache_clear()
    yield request.param
    _store.cache_clear()


@pytest.fixture
def victim(api, walls) -> Any:
    for resource in RESOURCES:
        response = api.put(f"{resource['resourceType']}/{resource['id']}", resource)
        assert response.status_code == 201
    return api


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry", []) if e["search"]["mode"] in ("match", "include")]


SEARCHES = [
    "Patient",
    "Patient?_id=pat-chalmers",
    "Patient?identifier=urn:mrn|12345",
    "Patient?identifier=12345",
    "Patient?family=chalmers",
    "Patient?name=peter",
    "Patient?family:contains=alm",
    "Patient?family:exact=Chalmers",
    "Patient?birthdate=1974",
    "Patient?gender=male",
    "Patient?_tag=urn:tags|vip",
    "Patient?_security=R",
    "Patient?_sort=family",
    "Patient?_has:Observation:subject:code=8480-6",
    "Patient?_revinclude=Observation:subject",
    "Observation?subject=Patient/pat-chalmers",
    "Observation?code=8480-6",
    "Observation?value-quantity=120",
    "Observation?code-value-quantity=8480-6$120",
    "Observation?_include=Observation:subject",
    "Observation?subject.name=chalmers",
    "Observation?subject.organization.name=acme",
    "Organization?_has:Patient:organization:_has:Observation:subject:code=85354-9",
    "ValueSet?url:below=http://example.org",
    "RiskAssessment?probability=gt0",
    "?_type=Patient,Observation",
    "?_id=pat-chalmers,o1",
    "?_tag=urn:tags|vip",
    "?_type=Observation,Encounter&subject.name=chalmers",
]


@pytest.mark.parametrize("path", SEARCHES)
def test_an_outsider_finds_and_counts_nothing(path: str, victim, outsider_api) -> None:
    assert _matches(victim.get(path).json()) or "Patient?_revinclude" in path
    bundle = outsider_api.get(path).json()
    assert _matches(bundle) == []
    assert bundle["total"] == 0


@pytest.mark.parametrize("path", ["Patient?family=chalmers&_summary=count", "Patient?_count=0"])
def test_counts_only_count_own_resources(path: str, victim, outsider_api) -> None:
    assert victim.get(path).json()["total"] > 0
    assert outsider_api.get(path).json()["total"] == 0


def test_the_victims_tenant_tag_finds_nothing(victim, outsider_api) -> None:
    tag = f"{TENANT_SYSTEM}|{victim.org.pk}"
    assert outsider_api.get(f"Patient?_tag={tag}").json()["total"] == 0
    assert outsider_api.get(f"?_tag={tag}").json()["total"] == 0
    assert victim.get(f"Patient?_tag={tag}").json()["total"] == 6


def test_post_search_finds_nothing(victim, outsider_api) -> None:
    response = outsider_api.post(
        "Patient/_search", "family=chalmers", content_type="application/x-www-form-urlencoded"
    )
    assert response.json()["total"] == 0


def test_colliding_ids_never_cross_tenants(victim, outsider_api) -> None:
    """The outsider stores resources with the victim's ids and references to them:
    includes, chains, _has and revincludes follow the outsider's own data only."""
    own_patient = {"resourceType": "Patient", "id": "pat-chalmers", "name": [{"family": "Own"}]}
    assert outsider_api.put("Patient/pat-chalmers", own_patient).status_code == 201
    own_obs = {
        "resourceType": "Observation",
        "id": "mine",
        "status": "final",
        "code": {"coding": [{"system": "urn:own", "code": "x"}]},
        "subject": {"reference": "Patient/pat-chalmers"},
        "performer": [{"reference": "Practitioner/pr-smith"}],
    }
    assert outsider_api.put("Observation/mine", own_obs).status_code == 201

    included = outsider_api.get("Observation?_include=*").json()
    assert [e["resource"]["name"][0]["family"] for e in included["entry"][1:]] == ["Own"]
    assert outsider_api.get("Observation?subject.name=chalmers").json()["total"] == 0
    assert outsider_api.get("Observation?subject.name=own").json()["total"] == 1
    assert outsider_api.get("Observation?performer.name=smith").json()["total"] == 0
    assert outsider_api.get("Patient?_has:Observation:subject:code=8480-6").json()["total"] == 0
    revincluded = outsider_api.get("Patient?_revinclude=Observation:subject").json()
    assert [e["fullUrl"].rsplit("/", 1)[1] for e in revincluded["entry"]] == [
        "pat-chalmers",
        "mine",
    ]
    assert outsider_api.get("Patient?family=chalmers").json()["total"] == 0
    # ... and the victim sees its own, unchanged.
    assert victim.get("Patient?_id=pat-chalmers&family=chalmers").json()["total"] == 1
    assert victim.get("Observation?subject.name=own").json()["total"] == 0


def test_store_search_under_row_level_security_alone(victim, outsider) -> None:
    """Straight at the store without the tag wall: the SQL names no tenant, and the
    outsider's transaction still sees none of the victim's rows."""
    store = PostgresStore(tag_wall=False)
    for qs in (
        [("family", "chalmers")],
        [("_has:Observation:subject:code", "8480-6")],
        [("_revinclude", "Observation:subject")],
    ):
        query = parse_search(qs, ["Patient"])
        assert store.search(victim.org.pk, query).matches
        assert store.search(outsider.org.pk, query).matches == []
    with tenant_transaction(outsider.org.pk), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fhir_idx_string")
        assert cursor.fetchone() == (0,)


def test_index_rows_of_another_tenant_cannot_be_written(victim, outsider) -> None:
    from django.db.utils import DatabaseError

    with (
        pytest.raises(DatabaseError),
        tenant_transaction(outsider.org.pk),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "INSERT INTO fhir_idx_string (org_id, resource_type, param, value, exact, id)"
            " VALUES (%s, 'Patient', 'family', 'x', 'x', 'pat-chalmers')",
            [victim.org.pk],
        )
