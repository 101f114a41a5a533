"""batch and transaction Bundles POSTed to the base."""

import base64
import copy
import json
from typing import Any

import orjson
import pytest
from django.db import connection

from clinik.fhir.bundles import MAX_ENTRIES
from clinik.fhir.spec import package_path
from clinik.fhir.tenancy import tenant_transaction
from tests.synthea import patient_bundle

pytestmark = pytest.mark.django_db

PATIENT = {"resourceType": "Patient", "name": [{"family": "Bundle"}]}


def _tx(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _post(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _count(org_id, table: str = "fhir_resource") -> int:
    with tenant_transaction(org_id), connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
        return int(cursor.fetchone()[0])


def test_transaction_resolves_urn_uuid_references(api) -> None:
    bundle = _tx(
        _post(PATIENT, "urn:uuid:11111111-1111-1111-1111-111111111111"),
        _post(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "weight"},
                "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
            },
            "urn:uuid:22222222-2222-2222-2222-222222222222",
        ),
    )
    for slash in ("", "/"):
        response = api.client.post(
            f"/fhir/R4{slash}",
            data=json.dumps(bundle),
            content_type="application/fhir+json",
            headers={"Authorization": f"Bearer {api.key}"},
        )
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["type"] == "transaction-response"
        statuses = [e["response"]["status"] for e in body["entry"]]
        assert statuses == ["201 Created", "201 Created"]
        patient_id = body["entry"][0]["response"]["location"].split("/")[1]
        obs_location = body["entry"][1]["response"]["location"]
        assert body["entry"][1]["response"]["etag"] == 'W/"1"'
        observation = api.get(obs_location.rsplit("/_history", 1)[0]).json()
        assert observation["subject"]["reference"] == f"Patient/{patient_id}"


def test_entries_are_processed_delete_post_put_get(api) -> None:
    existing = api.post("Patient", PATIENT).json()["id"]
    bundle = _tx(
        {"request": {"method": "GET", "url": f"Patient/{existing}"}},
        {
            "resource": {**PATIENT, "id": existing, "gender": "male"},
            "request": {"method": "PUT", "url": f"Patient/{existing}"},
        },
        _post(PATIENT),
        {"request": {"method": "GET", "url": "Patient/never-existed-here"}},
    )
    # The GET of an unknown id fails the whole transaction (404): nothing is written.
    failed = api.post("", bundle)
    assert failed.status_code == 404
    assert failed.json()["issue"][0]["expression"] == ["Bundle.entry[3]"]
    assert _count(api.org.pk) == 1
    # The DELETE of an unknown id is a no-op that succeeds (as HAPI answers).
    bundle["entry"][3] = {"request": {"method": "DELETE", "url": "Patient/never-existed-here"}}
    done = api.post("", bundle).json()["entry"][3]["response"]
    assert done["status"] == "200 OK"
    assert done["outcome"]["issue"][0]["severity"] == "information"
    assert _count(api.org.pk) == 2
    bundle["entry"][3] = {"request": {"method": "DELETE", "url": f"Patient/{existing}"}}
    bundle["entry"][0] = {"request": {"method": "GET", "url": f"Patient/{existing}/_history/1"}}
    body = api.post("", bundle).json()
    statuses = [e["response"]["status"] for e in body["entry"]]
    # DELETE ran first, then POST, then PUT (reviving it as v4), then the GET of v1.
    assert statuses == ["200 OK", "200 OK", "201 Created", "204 No Content"]
    assert body["entry"][1]["response"]["etag"] == 'W/"4"'
    assert body["entry"][0]["resource"]["id"] == existing


def test_transaction_is_all_or_nothing_on_an_invalid_resource(api) -> None:
    bundle = _tx(_post(PATIENT), _post({"resourceType": "Patient", "gender": 42}))
    response = api.post("", bundle)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.gender"]
    assert _count(api.org.pk) == 0


def test_transaction_is_all_or_nothing_on_a_failed_if_match(api) -> None:
    pid = api.post("Patient", PATIENT).json()["id"]
    bundle = _tx(
        _post(PATIENT),
        {
            "resource": {**PATIENT, "id": pid},
            "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"7"'},
        },
    )
    response = api.post("", bundle)
    assert response.status_code == 412
    assert _count(api.org.pk) == 1
    assert _count(api.org.pk, "fhir_history") == 1


def test_transaction_is_all_or_nothing_on_an_unresolvable_reference(api) -> None:
    bundle = _tx(
        _post(PATIENT),
        _post(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "urn:uuid:99999999-9999-9999-9999-999999999999"},
            }
        ),
    )
    response = api.post("", bundle)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    assert _count(api.org.pk) == 0
    conditional = _tx(
        _post(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient?identifier=urn:x|nobody"},
            }
        ),
    )
    assert api.post("", conditional).status_code == 400
    assert _count(api.org.pk) == 0


def test_conditional_reference_resolves_inside_the_tenant(api, outsider_api) -> None:
    identified = {**PATIENT, "identifier": [{"system": "urn:mrn", "value": "77"}]}
    outsider_api.post("Patient", identified)  # the same identifier in another tenant
    mine = api.post("Patient", identified).json()["id"]
    bundle = _tx(
        _post(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient?identifier=urn:mrn|77"},
            }
        ),
    )
    body = api.post("", bundle).json()
    location = body["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    assert api.get(location).json()["subject"]["reference"] == f"Patient/{mine}"
    # In the outsider's tenant alone, the same bundle also resolves to its own patient only.
    theirs = outsider_api.post("", bundle).json()
    location = theirs["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
    assert outsider_api.get(location).json()["subject"]["reference"] != f"Patient/{mine}"


def test_if_none_exist_in_a_transaction(api) -> None:
    identified = {**PATIENT, "identifier": [{"system": "urn:mrn", "value": "5"}]}
    first = api.post("", _tx(_post(identified, ifNoneExist="identifier=urn:mrn|5"))).json()
    second = api.post("", _tx(_post(identified, ifNoneExist="identifier=urn:mrn|5"))).json()
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert second["entry"][0]["response"]["status"] == "200 OK"
    assert first["entry"][0]["response"]["location"] == second["entry"][0]["response"]["location"]
    assert _count(api.org.pk) == 1


def test_batch_entries_succeed_or_fail_independently(api) -> None:
    pid = api.post("Patient", PATIENT).json()["id"]
    bundle = _tx(
        _post(PATIENT),
        _post({"resourceType": "Patient", "gender": "robot"}),
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "GET", "url": "Patient?_id=" + pid}},
        kind="batch",
    )
    response = api.post("", bundle)
    assert response.status_code == 200
    entries = response.json()["entry"]
    assert response.json()["type"] == "batch-response"
    assert [e["response"]["status"] for e in entries] == [
        "201 Created",
        "400 Bad Request",
        "200 OK",
        "404 Not Found",
        "200 OK",
    ]
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["resource"]["id"] == pid
    assert entries[4]["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in entries[4]["resource"]["entry"]] == [pid]
    assert _count(api.org.pk) == 2


def test_patch_entries_carry_a_binary_json_patch(api) -> None:
    pid = api.post("Patient", PATIENT).json()["id"]
    patch = [{"op": "replace", "path": "/name/0/family", "value": "Patched"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(patch).encode()).decode(),
    }
    body = api.post(
        "", _tx({"resource": binary, "request": {"method": "PATCH", "url": f"Patient/{pid}"}})
    ).json()
    assert body["entry"][0]["response"]["status"] == "200 OK"
    assert api.get(f"Patient/{pid}").json()["name"][0]["family"] == "Patched"


def test_caps_and_bad_bundles(api) -> None:
    get = {"request": {"method": "GET", "url": "Patient/p"}}
    too_many = _tx(*[get for _ in range(MAX_ENTRIES + 1)])
    response = api.post("", too_many)
    assert response.status_code == 413
    assert response.json()["issue"][0]["code"] == "too-costly"
    assert api.post("", {"resourceType": "Bundle", "type": "collection"}).status_code == 400
    assert api.post("", PATIENT).status_code == 400
    assert api.post("", "{broken").status_code == 400
    bad_method = _tx({"request": {"method": "TRACE", "url": "Patient"}})
    assert api.post("", bad_method).status_code == 400
    other_server = _tx({"request": {"method": "GET", "url": "https://evil.test/fhir/Patient/1"}})
    assert api.post("", other_server).status_code == 400
    assert _count(api.org.pk) == 0


def test_representation_is_returned_on_request(api) -> None:
    body = api.post("", _tx(_post(PATIENT)), headers={"Prefer": "return=representation"}).json()
    assert body["entry"][0]["resource"]["resourceType"] == "Patient"
    minimal = api.post("", _tx(_post(PATIENT))).json()
    assert "resource" not in minimal["entry"][0]


def test_synthea_bundle_loads_with_every_reference_resolved(api) -> None:
    bundle = patient_bundle(300, seed=1)
    response = api.post("", bundle)
    assert response.status_code == 200, response.content[:800]
    entries = response.json()["entry"]
    assert all(e["response"]["status"] == "201 Created" for e in entries)
    assert _count(api.org.pk) == 300
    with tenant_transaction(api.org.pk), connection.cursor() as cursor:
        cursor.execute("SELECT content FROM fhir_resource")
        contents = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT resource_type || '/' || id FROM fhir_resource")
        known = {row[0] for row in cursor.fetchall()}
    references = []
    for content in contents:
        text = content
        assert "urn:uuid:" not in text
        references += [r for r in _references(orjson.loads(text))]
    assert references and all(r in known for r in references)


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        for value in node.values():
            found += _references(value)
        return found
    if isinstance(node, list):
        return [r for item in node for r in _references(item)]
    return []


def test_hl7_example_transaction_bundle(api) -> None:
    example = json.loads((package_path() / "Bundle-bundle-transaction.json").read_text())
    # The state the example expects: Patient/123a at version 2, Patient/234 and
    # Patient/12334 (at version 4) existing.
    api.put("Patient/123a", {**PATIENT, "id": "123a"})
    api.put("Patient/123a", {**PATIENT, "id": "123a"})
    api.put("Patient/234", {**PATIENT, "id": "234"})
    for _ in range(4):
        api.put("Patient/12334", {**PATIENT, "id": "12334"})
    before = _count(api.org.pk)
    # Entry 7 invokes ValueSet/$lookup, a terminology operation this server does not
    # offer: the transaction is refused as a whole with a clear outcome.
    refused = api.post("", example)
    assert refused.status_code == 400
    assert refused.json()["issue"][0]["expression"] == ["Bundle.entry[7]"]
    assert _count(api.org.pk) == before
    without_operation = copy.deepcopy(example)
    del without_operation["entry"][7]
    response = api.post("", without_operation)
    assert response.status_code == 200, response.content[:800]
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == [
        "201 Created",  # POST Patient
        "201 Created",  # POST Patient ifNoneExist (no match yet)
        "201 Created",  # PUT Patient/123 (update as create)
        "201 Created",  # conditional PUT, no match: created
        "200 OK",  # PUT Patient/123a with ifMatch W/"2"
        "204 No Content",  # DELETE Patient/234
        "204 No Content",  # conditional DELETE, no match
        "200 OK",  # GET Patient?name=peter
        "304 Not Modified",  # GET Patient/12334 with ifNoneMatch W/"4"
    ]
    assert api.get("Patient/234").status_code == 410
    assert api.get("Patient/123a").json()["meta"]["versionId"] == "3"
