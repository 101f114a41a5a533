"""Conditional create, update and delete; Idempotency-Key; concurrency; tenancy."""

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from clinik.fhir.tenancy import tenant_transaction

PATIENT = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]}


def _count(org_id, resource_type: str = "Patient") -> int:
    with tenant_transaction(org_id), connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM fhir_resource WHERE resource_type = %s AND deleted_at IS NULL",
            [resource_type],
        )
        return int(cursor.fetchone()[0])


# --- conditional create -------------------------------------------------------------------


@pytest.mark.django_db
def test_conditional_create_outcomes(api) -> None:
    header = {"If-None-Exist": "identifier=urn:mrn|42"}
    first = api.post("Patient", PATIENT, headers=header)
    assert first.status_code == 201
    second = api.post("Patient", PATIENT, headers=header)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert _count(api.org.pk) == 1
    api.post("Patient", PATIENT)  # a duplicate made without the condition
    several = api.post("Patient", PATIENT, headers=header)
    assert several.status_code == 412
    assert several.json()["issue"][0]["code"] == "multiple-matches"
    assert api.post("Patient", PATIENT, headers={"If-None-Exist": "nonsense=1"}).status_code == 400
    assert api.post("Patient", PATIENT, headers={"If-None-Exist": ""}).status_code == 201


@pytest.mark.django_db
def test_conditional_create_never_matches_another_tenant(api, outsider_api) -> None:
    outsider_api.post("Patient", PATIENT)
    response = api.post("Patient", PATIENT, headers={"If-None-Exist": "identifier=urn:mrn|42"})
    assert response.status_code == 201
    assert _count(api.org.pk) == 1


# --- conditional update ----------------------------------------------------------------


@pytest.mark.django_db
def test_conditional_update_outcomes(api) -> None:
    created = api.put("Patient?identifier=urn:mrn|42", PATIENT)
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = api.put("Patient?identifier=urn:mrn|42", {**PATIENT, "gender": "female"})
    assert updated.status_code == 200
    assert updated.json()["id"] == pid
    assert updated.json()["meta"]["versionId"] == "2"
    wrong_id = api.put("Patient?identifier=urn:mrn|42", {**PATIENT, "id": "other"})
    assert wrong_id.status_code == 400
    api.post("Patient", PATIENT)
    several = api.put("Patient?identifier=urn:mrn|42", PATIENT)
    assert several.status_code == 412


@pytest.mark.django_db
def test_conditional_update_does_not_touch_another_tenant(api, outsider_api) -> None:
    theirs = outsider_api.post("Patient", PATIENT).json()
    response = api.put("Patient?identifier=urn:mrn|42", {**PATIENT, "gender": "male"})
    assert response.status_code == 201
    assert response.json()["id"] != theirs["id"]
    assert outsider_api.get(f"Patient/{theirs['id']}").json() == theirs


# --- conditional delete ----------------------------------------------------------------


@pytest.mark.django_db
def test_conditional_delete_single_multiple_and_none(api, outsider_api) -> None:
    kept = outsider_api.post("Patient", PATIENT).json()["id"]
    assert api.delete("Patient?identifier=urn:mrn|42").status_code == 204  # no match
    one = api.post("Patient", PATIENT).json()["id"]
    assert api.delete("Patient?identifier=urn:mrn|42").status_code == 204
    assert api.get(f"Patient/{one}").status_code == 410
    api.post("Patient", PATIENT)
    api.post("Patient", PATIENT)
    assert api.delete("Patient?identifier=urn:mrn|42").status_code == 204
    assert _count(api.org.pk) == 0
    assert outsider_api.get(f"Patient/{kept}").status_code == 200
    assert api.delete("Patient?_count=5").status_code == 400
    assert api.delete("Patient").status_code == 400


# --- idempotency ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_idempotent_retry_returns_the_original_and_creates_nothing(api) -> None:
    headers = {"Idempotency-Key": "retry-123"}
    first = api.post("Patient", PATIENT, headers=headers)
    again = api.post("Patient", PATIENT, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert first["Location"] == again["Location"]
    assert _count(api.org.pk) == 1
    different = api.post("Patient", {**PATIENT, "gender": "male"}, headers=headers)
    assert different.status_code == 422
    assert _count(api.org.pk) == 1
    assert api.post("Patient", PATIENT, headers={"Idempotency-Key": " "}).status_code == 400


@pytest.mark.django_db
def test_idempotency_records_keep_no_body(api) -> None:
    api.post(
        "Patient",
        {**PATIENT, "name": [{"family": "Secretname"}]},
        headers={"Idempotency-Key": "k1"},
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT request_hash, pointers FROM fhir_idempotency")
        rows = cursor.fetchall()
    assert len(rows) == 1
    assert "Secretname" not in json.dumps(rows)
    assert len(rows[0][0]) == 64


@pytest.mark.django_db
def test_idempotency_keys_are_per_tenant(api, outsider_api) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    mine = api.post("Patient", PATIENT, headers=headers).json()
    theirs = outsider_api.post("Patient", PATIENT, headers=headers).json()
    assert mine["id"] != theirs["id"]
    assert _count(api.org.pk) == 1
    assert _count(outsider_api.org.pk) == 1


@pytest.mark.django_db
def test_idempotent_bundle_replay(api) -> None:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}}],
    }
    headers = {"Idempotency-Key": "bundle-1"}
    first = api.post("", bundle, headers=headers).json()
    again = api.post("", bundle, headers=headers).json()
    assert _count(api.org.pk) == 1
    assert [e["response"]["location"] for e in first["entry"]] == [
        e["response"]["location"] for e in again["entry"]
    ]
    bundle["entry"][0]["resource"] = {**PATIENT, "gender": "male"}
    assert api.post("", bundle, headers=headers).status_code == 422


@pytest.mark.django_db
def test_idempotency_window_is_24_hours(api) -> None:
    import time_machine
    from django.utils import timezone

    from clinik.fhir.idempotency import purge_expired

    start = timezone.now()
    with time_machine.travel(start, tick=False):
        api.post("Patient", PATIENT, headers={"Idempotency-Key": "day"})
    with time_machine.travel(start + timedelta(hours=25), tick=False):
        assert api.post("Patient", PATIENT, headers={"Idempotency-Key": "day"}).status_code == 201
        assert purge_expired() == 0  # the fresh record replaced the stale one
    with time_machine.travel(start + timedelta(hours=50), tick=False):
        assert purge_expired() == 1
    assert _count(api.org.pk) == 2


# --- concurrency (a live server, real parallel HTTP requests) -------------------------


def _send(url: str, key: str, method: str, body: Any, headers: dict[str, str]) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/fhir+json",
            **headers,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.django_db(transaction=True)
def test_parallel_identical_conditional_creates_make_one_resource(live_server, owner) -> None:
    from tests.conftest import _api_for

    key = _api_for(owner).key
    url = f"{live_server.url}/fhir/R4/Patient"
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(
            pool.map(
                lambda _: _send(
                    url, key, "POST", PATIENT, {"If-None-Exist": "identifier=urn:mrn|42"}
                ),
                range(20),
            )
        )
    assert sorted(statuses) == [200] * 19 + [201]
    assert _count(owner.org.pk) == 1


@pytest.mark.django_db(transaction=True)
def test_parallel_conditional_updates_keep_versions_consistent(live_server, owner) -> None:
    from tests.conftest import _api_for

    key = _api_for(owner).key
    url = f"{live_server.url}/fhir/R4/Patient?identifier=urn:mrn|42"
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(lambda _: _send(url, key, "PUT", PATIENT, {}), range(20)))
    assert sorted(statuses) == [200] * 19 + [201]
    assert _count(owner.org.pk) == 1
    with tenant_transaction(owner.org.pk), connection.cursor() as cursor:
        cursor.execute("SELECT version_id FROM fhir_history ORDER BY version_id")
        assert [row[0] for row in cursor.fetchall()] == list(range(1, 21))


@pytest.mark.django_db(transaction=True)
def test_parallel_idempotent_retries_create_once(live_server, owner) -> None:
    from tests.conftest import _api_for

    key = _api_for(owner).key
    url = f"{live_server.url}/fhir/R4/Patient"
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(
            pool.map(
                lambda _: _send(url, key, "POST", PATIENT, {"Idempotency-Key": "same"}), range(10)
            )
        )
    assert statuses == [201] * 10
    assert _count(owner.org.pk) == 1
