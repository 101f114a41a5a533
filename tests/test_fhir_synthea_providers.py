"""Synthea's provider bundles: the hospital and practitioner batch bundles (2,382
entries each, every one a conditional create), loaded through the whole stack, then a
patient transaction whose conditional references (`Practitioner?identifier=…`) must
resolve to them; loading them again creates nothing; another tenant's identical
identifiers are never matched. The bundles are generated in Synthea's shape
(tests/synthea.py): the real files are large."""

from typing import Any

import pytest
from django.db import connection

from clinik.audit.models import AuditEvent
from clinik.fhir.tenancy import tenant_transaction
from tests.synthea import (
    NPI,
    SYNTHEA_ID,
    _npi,
    _organization_ids,
    hospital_bundle,
    practitioner_bundle,
    provider_patient_bundle,
)

pytestmark = pytest.mark.django_db


def _statuses(body: dict[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in body["entry"]:
        status = entry["response"]["status"]
        counts[status] = counts.get(status, 0) + 1
    return counts


def _counts(org_id: Any) -> dict[str, int]:
    with tenant_transaction(org_id), connection.cursor() as cursor:
        cursor.execute(
            "SELECT resource_type, count(*) FROM fhir_resource WHERE org_id = %s"
            " AND deleted_at IS NULL GROUP BY 1",
            [org_id],
        )
        return dict(cursor.fetchall())


def _one(api, query: str) -> dict[str, Any]:
    bundle = api.get(query).json()
    assert bundle["total"] == 1, query
    return bundle["entry"][0]["resource"]


def test_synthea_provider_bundles_then_a_patient_with_conditional_references(api) -> None:
    hospitals, practitioners = hospital_bundle(), practitioner_bundle()
    assert len(hospitals["entry"]) == len(practitioners["entry"]) == 2382
    for bundle in (hospitals, practitioners):
        response = api.post("", bundle)
        assert response.status_code == 200, response.content[:500]
        body = response.json()
        assert body["type"] == "batch-response"
        assert _statuses(body) == {"201 Created": 2382}
    assert _counts(api.org.pk) == {
        "Organization": 1191,
        "Location": 1191,
        "Practitioner": 1191,
        "PractitionerRole": 1191,
    }
    assert AuditEvent.objects.filter(org_id=api.org.pk, action="fhir.create").count() == 4 * 1191

    # The conditional references inside the batch resolved to the resources it created.
    org_id = _organization_ids(4, 7)[3]
    organization = _one(api, f"Organization?identifier={SYNTHEA_ID}|{org_id}")
    location = _one(api, f"Location?identifier={SYNTHEA_ID}|{org_id[::-1]}")
    assert location["managingOrganization"]["reference"] == f"Organization/{organization['id']}"
    practitioner = _one(api, f"Practitioner?identifier={NPI}|{_npi(3)}")
    role = _one(api, f"PractitionerRole?identifier={NPI}|{_npi(3)}")
    assert role["practitioner"]["reference"] == f"Practitioner/{practitioner['id']}"
    assert role["organization"]["reference"] == f"Organization/{organization['id']}"

    # Loading them again matches every entry and creates nothing.
    again = api.post("", hospitals).json()
    assert _statuses(again) == {"200 OK": 2382}
    assert again["entry"][0]["response"]["location"].startswith("Organization/")
    assert _counts(api.org.pk)["Organization"] == 1191

    # A patient bundle pointing at them conditionally.
    response = api.post("", provider_patient_bundle(entries=40))
    assert response.status_code == 200, response.content[:500]
    encounters = api.get(f"Encounter?participant=Practitioner/{practitioner['id']}").json()
    assert encounters["total"] == 4
    for entry in encounters["entry"]:
        encounter = entry["resource"]
        assert encounter["serviceProvider"]["reference"] == f"Organization/{organization['id']}"
        assert encounter["location"][0]["location"]["reference"] == f"Location/{location['id']}"
        patient = encounter["subject"]["reference"]
        assert api.get(f"{patient}/Encounter").json()["total"] == 4


def test_conditional_creates_in_one_batch_repeat_fail_and_stay_in_the_tenant(
    api, outsider_api
) -> None:
    def create(identifier: str, **request: str) -> dict[str, Any]:
        return {
            "resource": {
                "resourceType": "Organization",
                "identifier": [{"system": SYNTHEA_ID, "value": identifier}],
            },
            "request": {"method": "POST", "url": "Organization", **request},
        }

    # The outsider holds the same identifier: never matched from the owner's bundle.
    assert (
        outsider_api.post(
            "",
            {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [create("a", ifNoneExist=f"identifier={SYNTHEA_ID}|a")],
            },
        ).status_code
        == 200
    )
    for _ in range(2):
        assert api.post("Organization", create("twin")["resource"]).status_code == 201
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            create("a", ifNoneExist=f"identifier={SYNTHEA_ID}|a"),
            create("a", ifNoneExist=f"identifier={SYNTHEA_ID}|a"),  # the same again
            create("twin", ifNoneExist=f"identifier={SYNTHEA_ID}|twin"),  # two match
            create("b", ifNoneExist="unknown-parameter=x"),
            create("c"),  # plain create
            {
                "resource": {
                    "resourceType": "Location",
                    "managingOrganization": {"reference": "Organization?identifier=nobody"},
                },
                "request": {"method": "POST", "url": "Location"},
            },
        ],
    }
    body = api.post("", bundle).json()
    responses = [e["response"] for e in body["entry"]]
    assert [r["status"] for r in responses] == [
        "201 Created",
        "200 OK",
        "412 Precondition Failed",
        "400 Bad Request",
        "201 Created",
        "400 Bad Request",
    ]
    assert responses[0]["location"] == responses[1]["location"]
    assert _counts(api.org.pk) == {"Organization": 4}
    assert _counts(outsider_api.org.pk) == {"Organization": 1}
