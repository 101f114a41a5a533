"""The HealthLake store against a real datastore, when one is configured:
HEALTHLAKE_TEST_DATASTORE_ID (+ HEALTHLAKE_TEST_REGION or AWS_REGION) and AWS
credentials from the standard chain. Without them the suite is skipped, and says so.

Use a datastore that holds no real PHI: the tests write resources tagged with test
organizations and erase them at the end (purge_tenant)."""

import os
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from clinik.fhir import capability
from clinik.fhir.store import _store, get_store

DATASTORE = os.environ.get("HEALTHLAKE_TEST_DATASTORE_ID", "")
REGION = os.environ.get("HEALTHLAKE_TEST_REGION") or os.environ.get("AWS_REGION", "")


def _why_skipped() -> str | None:
    if not DATASTORE or not REGION:
        return (
            "real HealthLake suite SKIPPED: set HEALTHLAKE_TEST_DATASTORE_ID and"
            " HEALTHLAKE_TEST_REGION (or AWS_REGION) to run it against a datastore"
        )
    if boto3.session.Session(region_name=REGION).get_credentials() is None:
        return "real HealthLake suite SKIPPED: no AWS credentials in the standard chain"
    return None


pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(_why_skipped() is not None, reason=_why_skipped() or ""),
]


@pytest.fixture
def real(settings: Any) -> Iterator[None]:
    settings.FHIR_STORE = "healthlake"
    settings.HEALTHLAKE_DATASTORE_ID = DATASTORE
    settings.HEALTHLAKE_REGION = REGION
    settings.HEALTHLAKE_ENDPOINT_URL = ""
    _store.cache_clear()
    capability.statement_json.cache_clear()
    yield
    _store.cache_clear()
    capability.statement_json.cache_clear()


def _eventually(check: Any, seconds: float = 60.0) -> Any:
    """HealthLake's search index is eventually consistent: poll it."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_crud_search_isolation_and_closure_on_a_real_datastore(real, api, outsider_api) -> None:
    try:
        created = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Zz"}]})
        assert created.status_code == 201
        pid = created.json()["id"]
        assert api.get(f"Patient/{pid}").status_code == 200
        assert outsider_api.get(f"Patient/{pid}").status_code == 404
        updated = api.put(f"Patient/{pid}", {"resourceType": "Patient", "id": pid})
        assert updated.json()["meta"]["versionId"] == "2"
        assert api.get(f"Patient/{pid}/_history/1").status_code == 200
        assert _eventually(lambda: api.get("Patient?_id=" + pid).json().get("entry"))
        assert "entry" not in outsider_api.get("Patient?_id=" + pid).json()
        assert api.delete(f"Patient/{pid}").status_code == 204
        assert api.get(f"Patient/{pid}").status_code == 410
    finally:
        for org in (api.org.pk, outsider_api.org.pk):
            assert get_store().purge_tenant(org)["healthlake_remaining"] == 0


def test_a_transaction_and_a_foreign_put_on_a_real_datastore(real, api, outsider_api) -> None:
    """What the adapter assumes of HealthLake's transactions (atomic, ifMatch honoured,
    PUT entries with our ids) and that a PUT onto another tenant's id says nothing."""
    try:
        mine = api.post("Patient", {"resourceType": "Patient"}).json()["id"]
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": "urn:uuid:7d0c1f4e-0000-4000-8000-000000000009",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:7d0c1f4e-0000-4000-8000-000000000009"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": {"resourceType": "Patient", "id": mine, "gender": "male"},
                "request": {"method": "PUT", "url": f"Patient/{mine}", "ifMatch": 'W/"1"'},
            },
        ]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        done = api.post("", bundle)
        assert done.status_code == 200, done.content
        assert api.get(f"Patient/{mine}").json()["gender"] == "male"
        entries[2]["request"]["ifMatch"] = 'W/"1"'  # stale now: nothing written
        assert api.post("", bundle).status_code == 412
        foreign = outsider_api.put(f"Patient/{mine}", {"resourceType": "Patient", "id": mine})
        unknown = outsider_api.put(
            "Patient/no-such-id-zz", {"resourceType": "Patient", "id": "no-such-id-zz"}
        )
        assert (foreign.status_code, foreign.json()) == (unknown.status_code, unknown.json())
        assert foreign.status_code == 400
    finally:
        for org in (api.org.pk, outsider_api.org.pk):
            assert get_store().purge_tenant(org)["healthlake_remaining"] == 0
