"""Deleted resources are erased for good by the beat job within the grace period."""

from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from clinik.fhir.tasks import erase_deleted_resources_now
from clinik.fhir.tenancy import tenant_transaction

pytestmark = pytest.mark.django_db

PATIENT = {"resourceType": "Patient", "name": [{"family": "Erased"}]}


def _rows(org_id, resource_id: str) -> dict[str, int]:
    counts = {}
    with tenant_transaction(org_id), connection.cursor() as cursor:
        for table in ("fhir_resource", "fhir_history", "fhir_erasure"):
            cursor.execute(f"SELECT count(*) FROM {table} WHERE id = %s", [resource_id])  # noqa: S608
            counts[table] = cursor.fetchone()[0]
    return counts


def test_erase_job_removes_every_version_after_the_grace_period(api, settings) -> None:
    settings.FHIR_ERASE_DELETED_AFTER_DAYS = 7
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        pid = api.post("Patient", PATIENT).json()["id"]
        api.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "male"})
        kept = api.post("Patient", PATIENT).json()["id"]
        api.delete(f"Patient/{pid}")
    assert _rows(api.org.pk, pid) == {"fhir_resource": 1, "fhir_history": 3, "fhir_erasure": 1}
    with time_machine.travel(start + timedelta(days=6), tick=False):
        assert erase_deleted_resources_now() == 0
        assert api.get(f"Patient/{pid}/_history").json()["entry"][0]["request"]["method"] == (
            "DELETE"
        )
    with time_machine.travel(start + timedelta(days=8), tick=False):
        assert erase_deleted_resources_now() == 3
        assert erase_deleted_resources_now() == 0  # idempotent
    assert _rows(api.org.pk, pid) == {"fhir_resource": 0, "fhir_history": 0, "fhir_erasure": 0}
    assert api.get(f"Patient/{pid}").status_code == 404
    assert api.get(f"Patient/{kept}").status_code == 200


def test_a_resource_revived_after_delete_keeps_its_new_versions(api, settings) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        pid = api.post("Patient", PATIENT).json()["id"]
        api.delete(f"Patient/{pid}")
        api.put(f"Patient/{pid}", {**PATIENT, "id": pid})
    with time_machine.travel(start + timedelta(days=30), tick=False):
        erase_deleted_resources_now()
    versions = api.get(f"Patient/{pid}/_history").json()["entry"]
    assert [v["response"]["etag"] for v in versions] == ['W/"3"']
    assert api.get(f"Patient/{pid}").status_code == 200


def test_erase_job_works_across_tenants(api, outsider_api) -> None:
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        a = api.post("Patient", PATIENT).json()["id"]
        b = outsider_api.post("Patient", PATIENT).json()["id"]
        api.delete(f"Patient/{a}")
        outsider_api.delete(f"Patient/{b}")
    with time_machine.travel(start + timedelta(days=29), tick=False):
        assert erase_deleted_resources_now() == 4
    assert _rows(api.org.pk, a)["fhir_history"] == 0
    assert _rows(outsider_api.org.pk, b)["fhir_history"] == 0
