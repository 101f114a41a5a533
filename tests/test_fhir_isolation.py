"""Tenant isolation of the FHIR interactions: an outsider finds nothing and changes
nothing. The whole suite runs twice: with both walls, and with the tag wall switched
off so that PostgreSQL row-level security alone must hold."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from clinik.fhir.store import _store
from clinik.fhir.tenancy import TENANT_SYSTEM, tenant_transaction

pytestmark = pytest.mark.django_db

PATIENT = {"resourceType": "Patient", "name": [{"family": "Private", "given": ["Pat"]}]}


@pytest.fixture(params=["both-walls", "rls-only"])
def walls(request, settings) -> Iterator[str]:
    settings.FHIR_TAG_WALL = request.param == "both-walls"
    _store.cache_clear()
    yield request.param
    _store.cache_clear()


@pytest.fixture
def victim(api, walls) -> dict[str, Any]:
    """A patient of the owner's organization, updated once (two versions)."""
    created = api.post("Patient", PATIENT).json()
    pid = created["id"]
    api.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "female"})
    return api.get(f"Patient/{pid}").json()


def _same_as_missing(response: Any, pid: str, missing: Any, status: int = 404) -> None:
    assert response.status_code == missing.status_code == status
    assert response.content.replace(pid.encode(), b"ID") == missing.content.replace(
        b"no-such-id", b"ID"
    )


def _unchanged(api, victim: dict[str, Any]) -> None:
    assert api.get(f"Patient/{victim['id']}").json() == victim


Attempt = Callable[[Any, str], Any]

NOT_FOUND_ATTEMPTS: dict[str, Attempt] = {
    "read": lambda o, pid: o.get(f"Patient/{pid}"),
    "read-with-if-none-match": lambda o, pid: o.get(
        f"Patient/{pid}", headers={"If-None-Match": 'W/"2"'}
    ),
    "read-with-if-modified-since": lambda o, pid: o.get(
        f"Patient/{pid}", headers={"If-Modified-Since": "Wed, 01 Jan 2020 00:00:00 GMT"}
    ),
    "vread-v1": lambda o, pid: o.get(f"Patient/{pid}/_history/1"),
    "vread-v2": lambda o, pid: o.get(f"Patient/{pid}/_history/2"),
    "instance-history": lambda o, pid: o.get(f"Patient/{pid}/_history"),
    "instance-history-since": lambda o, pid: o.get(f"Patient/{pid}/_history?_since=2000-01-01"),
    "instance-history-at": lambda o, pid: o.get(f"Patient/{pid}/_history?_at=2999-01-01"),
    "patch": lambda o, pid: o.patch(
        f"Patient/{pid}", [{"op": "replace", "path": "/gender", "value": "male"}]
    ),
    "delete": lambda o, pid: o.delete(f"Patient/{pid}"),
    "expunge": lambda o, pid: o.post(f"Patient/{pid}/$expunge", ""),
    "head-read": lambda o, pid: o.client.head(
        f"/fhir/R4/Patient/{pid}", headers={"Authorization": f"Bearer {o.key}"}
    ),
    "vread-v3": lambda o, pid: o.get(f"Patient/{pid}/_history/3"),
    "vread-with-if-none-match": lambda o, pid: o.get(
        f"Patient/{pid}/_history/1", headers={"If-None-Match": 'W/"1"'}
    ),
    "instance-history-count": lambda o, pid: o.get(f"Patient/{pid}/_history?_count=1000"),
    "patch-with-if-match": lambda o, pid: o.patch(
        f"Patient/{pid}",
        [{"op": "remove", "path": "/name"}],
        headers={"If-Match": 'W/"2"'},
    ),
    "delete-prefer-outcome": lambda o, pid: o.delete(
        f"Patient/{pid}", headers={"Prefer": "return=OperationOutcome"}
    ),
    "read-with-format": lambda o, pid: o.get(f"Patient/{pid}?_format=json"),
    "read-with-spoofed-tenant-headers": lambda o, pid: o.get(
        f"Patient/{pid}",
        headers={"X-Tenant-ID": "victim", "X-Org-ID": "victim", "X-Forwarded-Host": "victim"},
    ),
}


@pytest.mark.parametrize("name", sorted(NOT_FOUND_ATTEMPTS))
def test_outsider_gets_exactly_what_a_random_id_gets(
    name: str, api, outsider_api, victim: dict[str, Any]
) -> None:
    attempt = NOT_FOUND_ATTEMPTS[name]
    pid = victim["id"]
    response = attempt(outsider_api, pid)
    missing = attempt(outsider_api, "no-such-id")
    # A DELETE of an unknown id is a no-op that succeeds (200 with information).
    _same_as_missing(response, pid, missing, 200 if name.startswith("delete") else 404)
    _unchanged(api, victim)


def test_spoofed_tenant_query_parameters_find_nothing(api, outsider_api, victim) -> None:
    for query in (
        f"_tag={TENANT_SYSTEM}|{api.org.pk}",
        f"org_id={api.org.pk}",
        f"tenant={api.org.pk}",
    ):
        listing = outsider_api.get(f"Patient?{query}").json()
        matches = [e for e in listing.get("entry", []) if e["search"]["mode"] != "outcome"]
        assert matches == [], query
        history = outsider_api.get(f"_history?{query}").json()
        assert "entry" not in history, query


def test_type_and_system_listings_and_history_hold_only_own_data(api, outsider_api, victim) -> None:
    own = outsider_api.post("Patient", PATIENT).json()
    for path in ("Patient", "Patient/_history", "_history", "_history?_count=1000"):
        body = outsider_api.get(path).json()
        ids = {e["fullUrl"].rsplit("/", 1)[1] for e in body.get("entry", []) if "fullUrl" in e}
        assert ids == {own["id"]}, path
    assert outsider_api.get("Patient/_history?_at=2999-01-01").json()["entry"][0]["fullUrl"]


def test_update_onto_another_tenants_id_creates_in_own_tenant_only(
    api, outsider_api, victim
) -> None:
    pid = victim["id"]
    response = outsider_api.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "other"})
    assert response.status_code == 201  # a new resource in the outsider's own space
    assert response.json()["meta"]["versionId"] == "1"
    assert response.json()["meta"]["tag"][-1]["code"] == str(outsider_api.org.pk)
    _unchanged(api, victim)
    # And the outsider deleting or expunging its own copy leaves the victim alone.
    assert outsider_api.delete(f"Patient/{pid}").status_code == 204
    assert outsider_api.post(f"Patient/{pid}/$expunge", "").status_code == 200
    _unchanged(api, victim)


def test_update_with_if_match_on_another_tenants_id_is_refused(api, outsider_api, victim):
    pid = victim["id"]
    response = outsider_api.put(
        f"Patient/{pid}", {**PATIENT, "id": pid}, headers={"If-Match": 'W/"2"'}
    )
    assert response.status_code == 412
    _unchanged(api, victim)


def test_client_sent_tenant_tag_does_not_place_data_in_another_tenant(
    api, outsider_api, victim
) -> None:
    tag = {"system": TENANT_SYSTEM, "code": str(api.org.pk)}
    planted = outsider_api.post("Patient", {**PATIENT, "meta": {"tag": [tag]}}).json()
    assert planted["meta"]["tag"] == [{"system": TENANT_SYSTEM, "code": str(outsider_api.org.pk)}]
    assert api.get(f"Patient/{planted['id']}").status_code == 404
    ids = {e["fullUrl"].rsplit("/", 1)[1] for e in api.get("Patient").json()["entry"]}
    assert ids == {victim["id"]}


def test_a_deleted_resource_of_another_tenant_is_404_not_410(api, outsider_api, victim) -> None:
    pid = victim["id"]
    assert api.delete(f"Patient/{pid}").status_code == 204
    assert api.get(f"Patient/{pid}").status_code == 410
    _same_as_missing(
        outsider_api.get(f"Patient/{pid}"), pid, outsider_api.get("Patient/no-such-id")
    )


def test_without_a_tenant_the_database_returns_no_rows(api, victim) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('clinik.org_id', '', true)")
        cursor.execute("SELECT count(*) FROM fhir_resource")
        assert cursor.fetchone() == (0,)
        cursor.execute("SELECT count(*) FROM fhir_history")
        assert cursor.fetchone() == (0,)
    with tenant_transaction(api.org.pk), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fhir_resource")
        assert cursor.fetchone() == (1,)


def test_the_app_role_cannot_switch_row_level_security_off(api, victim) -> None:
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL row_security = off")
        cursor.execute("SELECT count(*) FROM fhir_resource")


def test_rows_of_another_tenant_cannot_be_written(api, outsider, victim) -> None:
    insert = (
        "INSERT INTO fhir_resource (org_id, resource_type, id, version_id,"
        " last_updated, content) VALUES (%s, 'Patient', 'x', 1, now(), '{}')"
    )
    with pytest.raises(DatabaseError), tenant_transaction(outsider.org.pk):
        connection.cursor().execute(insert, [api.org.pk])


def test_rows_of_another_tenant_cannot_be_updated_or_deleted(api, outsider, victim) -> None:
    with tenant_transaction(outsider.org.pk), connection.cursor() as cursor:
        cursor.execute("UPDATE fhir_resource SET content = '{}' WHERE id = %s", [victim["id"]])
        assert cursor.rowcount == 0
        cursor.execute("DELETE FROM fhir_history WHERE id = %s", [victim["id"]])
        assert cursor.rowcount == 0
    _unchanged(api, victim)
