"""Cross-tenant bundle cases: an entry naming another tenant's resource behaves as
missing; conditional matching never reaches another tenant. Run with both walls and
with row-level security alone."""

from collections.abc import Iterator
from typing import Any

import pytest

from clinik.fhir.store import _store

pytestmark = pytest.mark.django_db

MRN = {"system": "urn:mrn", "value": "victim-1"}
PATIENT = {"resourceType": "Patient", "identifier": [MRN], "name": [{"family": "Victim"}]}


@pytest.fixture(params=["both-walls", "rls-only"])
def victim(request, settings, api) -> Iterator[dict[str, Any]]:
    settings.FHIR_TAG_WALL = request.param == "both-walls"
    _store.cache_clear()
    created = api.post("Patient", PATIENT).json()
    yield created
    _store.cache_clear()


def _batch(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


def _tx(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _statuses(response: Any) -> list[str]:
    return [e["response"]["status"] for e in response.json()["entry"]]


def _unchanged(api, victim: dict[str, Any]) -> None:
    assert api.get(f"Patient/{victim['id']}").json() == victim


def test_get_read_and_vread_of_another_tenants_id(api, outsider_api, victim) -> None:
    pid = victim["id"]
    bundle = _batch(
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}/_history/1"}},
    )
    assert _statuses(outsider_api.post("", bundle)) == ["404 Not Found", "404 Not Found"]


def test_search_in_a_bundle_finds_nothing_of_another_tenant(api, outsider_api, victim) -> None:
    bundle = _batch(
        {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|victim-1"}},
        {"request": {"method": "GET", "url": f"Patient?_id={victim['id']}"}},
    )
    body = outsider_api.post("", bundle).json()
    for entry in body["entry"]:
        assert entry["resource"]["entry"] == []


def test_put_onto_another_tenants_id_creates_in_own_tenant(api, outsider_api, victim) -> None:
    pid = victim["id"]
    bundle = _tx(
        {
            "resource": {**PATIENT, "id": pid, "gender": "other"},
            "request": {"method": "PUT", "url": f"Patient/{pid}"},
        }
    )
    assert _statuses(outsider_api.post("", bundle)) == ["201 Created"]
    _unchanged(api, victim)


def test_if_match_on_another_tenants_id_fails(api, outsider_api, victim) -> None:
    pid = victim["id"]
    bundle = _tx(
        {
            "resource": {**PATIENT, "id": pid},
            "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'},
        }
    )
    assert outsider_api.post("", bundle).status_code == 412
    _unchanged(api, victim)


def test_delete_of_another_tenants_id_is_missing(api, outsider_api, victim) -> None:
    # As for an id never known: a no-op that succeeds, and the victim stays.
    bundle = _tx({"request": {"method": "DELETE", "url": f"Patient/{victim['id']}"}})
    theirs = outsider_api.post("", bundle).json()["entry"][0]["response"]
    unknown = _tx({"request": {"method": "DELETE", "url": "Patient/no-such-id"}})
    assert theirs == outsider_api.post("", unknown).json()["entry"][0]["response"]
    assert theirs["status"] == "200 OK"
    _unchanged(api, victim)


def test_patch_of_another_tenants_id_is_missing(api, outsider_api, victim) -> None:
    import base64
    import json

    data = base64.b64encode(json.dumps([{"op": "remove", "path": "/name"}]).encode()).decode()
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}
    bundle = _batch(
        {"resource": binary, "request": {"method": "PATCH", "url": f"Patient/{victim['id']}"}}
    )
    assert _statuses(outsider_api.post("", bundle)) == ["404 Not Found"]
    _unchanged(api, victim)


def test_conditional_reference_to_another_tenant_does_not_resolve(
    api, outsider_api, victim
) -> None:
    bundle = _tx(
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient?identifier=urn:mrn|victim-1"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
    )
    assert outsider_api.post("", bundle).status_code == 400


def test_if_none_exist_ignores_another_tenants_match(api, outsider_api, victim) -> None:
    bundle = _tx(
        {
            "resource": PATIENT,
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": "identifier=urn:mrn|victim-1",
            },
        }
    )
    assert _statuses(outsider_api.post("", bundle)) == ["201 Created"]
    _unchanged(api, victim)


def test_conditional_put_ignores_another_tenants_match(api, outsider_api, victim) -> None:
    bundle = _tx(
        {
            "resource": {**PATIENT, "gender": "male"},
            "request": {"method": "PUT", "url": "Patient?identifier=urn:mrn|victim-1"},
        }
    )
    response = outsider_api.post("", bundle)
    assert _statuses(response) == ["201 Created"]
    assert victim["id"] not in response.json()["entry"][0]["response"]["location"]
    _unchanged(api, victim)


def test_conditional_delete_ignores_another_tenants_match(api, outsider_api, victim) -> None:
    bundle = _tx({"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|victim-1"}})
    assert _statuses(outsider_api.post("", bundle)) == ["204 No Content"]
    _unchanged(api, victim)


def test_conditional_patch_ignores_another_tenants_match(api, outsider_api, victim) -> None:
    import base64
    import json

    data = base64.b64encode(json.dumps([{"op": "remove", "path": "/name"}]).encode()).decode()
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}
    bundle = _batch(
        {
            "resource": binary,
            "request": {"method": "PATCH", "url": "Patient?identifier=urn:mrn|victim-1"},
        }
    )
    assert _statuses(outsider_api.post("", bundle)) == ["404 Not Found"]
    _unchanged(api, victim)


def test_urn_reference_cannot_point_at_another_tenants_resource(api, outsider_api, victim):
    bundle = _tx(
        {
            "fullUrl": f"http://testserver/fhir/R4/Patient/{victim['id']}",
            "resource": {**PATIENT, "id": victim["id"]},
            "request": {"method": "PUT", "url": f"Patient/{victim['id']}"},
        },
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{victim['id']}"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    )
    assert _statuses(outsider_api.post("", bundle)) == ["201 Created", "201 Created"]
    _unchanged(api, victim)
