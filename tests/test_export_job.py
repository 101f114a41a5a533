"""The bulk export job (clinik.fhir.export.run_export), called directly: files and
counts equal what the tenant stores, per type, with _type and _since; another
tenant's resources never appear; patient and group scopes; splitting; cancel;
expiry and the retention job."""

import threading
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from clinik.audit.models import AuditEvent
from clinik.fhir import export, export_actions
from clinik.fhir.store import get_store
from clinik.fhir.tenancy import TENANT_SYSTEM, tenant_transaction
from clinik.privacy.models import ExportJob

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path: Path) -> Path:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    return tmp_path


def _create(org, resource: dict) -> str:
    return get_store().create(org.pk, resource).id


def _seed(org, patients: int = 3, observations: int = 2) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"Patient": [], "Observation": []}
    for _ in range(patients):
        ids["Patient"].append(_create(org, {"resourceType": "Patient", "gender": "female"}))
    for n in range(observations):
        ids["Observation"].append(
            _create(
                org,
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": f"code {n}"},
                    "subject": {"reference": f"Patient/{ids['Patient'][0]}"},
                },
            )
        )
    return ids


def _stored_counts(org_id) -> dict[str, int]:
    with tenant_transaction(org_id), connection.cursor() as cursor:
        cursor.execute(
            "SELECT resource_type, count(*) FROM fhir_resource"
            " WHERE org_id = %s AND deleted_at IS NULL GROUP BY resource_type",
            [org_id],
        )
        return dict(cursor.fetchall())


def _lines(root: Path, job: ExportJob) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for entry in job.files:
        path = root / "files" / str(job.org_id) / str(job.pk) / entry["name"]
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        assert len(rows) == entry["count"]
        assert path.stat().st_size == entry["bytes"]
        found.setdefault(entry["type"], []).extend(rows)
    return found


def _run(owner, **params) -> ExportJob:
    job = export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(**params), request=None
    )
    assert export.run_export(job.pk) == "completed"
    job.refresh_from_db()
    return job


def test_system_export_counts_equal_the_stored_counts(owner, outsider, _export_dir) -> None:
    _seed(owner.org, patients=4, observations=3)
    _seed(outsider.org, patients=5, observations=1)
    _create(owner.org, {"resourceType": "Organization", "name": "Clinic"})
    deleted = _create(owner.org, {"resourceType": "Patient"})
    get_store().delete(owner.org.pk, "Patient", deleted)

    job = _run(owner)

    stored = _stored_counts(owner.org.pk)
    assert stored == {"Patient": 4, "Observation": 3, "Organization": 1}
    assert job.counts == stored
    assert job.exported == 8
    lines = _lines(_export_dir, job)
    assert {t: len(rows) for t, rows in lines.items()} == stored
    for rows in lines.values():
        for row in rows:
            assert {"system": TENANT_SYSTEM, "code": str(owner.org.pk)} in row["meta"]["tag"]
    assert deleted not in {r["id"] for r in lines["Patient"]}
    assert sorted(f["name"] for f in job.files) == [
        "Observation-1.ndjson",
        "Organization-1.ndjson",
        "Patient-1.ndjson",
    ]
    assert job.status == "completed" and job.transaction_time is not None
    assert job.expires_at is not None and job.lease_until is None


def test_another_tenants_resources_never_appear(owner, outsider, _export_dir) -> None:
    theirs = _seed(outsider.org, patients=3, observations=3)
    job = _run(owner)
    assert job.counts == {} and job.files == []
    mine = _seed(owner.org, patients=1, observations=0)
    job2 = _run(owner)
    exported_ids = {r["id"] for rows in _lines(_export_dir, job2).values() for r in rows}
    assert exported_ids == set(mine["Patient"])
    assert not exported_ids & set(theirs["Patient"] + theirs["Observation"])
    on_disk = list((_export_dir / "files").rglob("*.ndjson"))
    assert on_disk and all(str(outsider.org.pk) not in str(p) for p in on_disk)


def test_type_filter(owner, _export_dir) -> None:
    _seed(owner.org, patients=2, observations=5)
    job = _run(owner, types=["Observation"])
    assert job.counts == {"Observation": 5}
    assert set(_lines(_export_dir, job)) == {"Observation"}


def test_since_keeps_resources_changed_after_it(owner, _export_dir) -> None:
    start = timezone.now() - timedelta(days=2)
    with time_machine.travel(start, tick=False):
        _seed(owner.org, patients=2, observations=1)
    with time_machine.travel(start + timedelta(days=1), tick=False):
        recent = _seed(owner.org, patients=1, observations=0)
    job = _run(owner, since=start + timedelta(hours=12))
    assert job.counts == {"Patient": 1}
    assert [r["id"] for r in _lines(_export_dir, job)["Patient"]] == recent["Patient"]


def test_patient_export_keeps_patients_and_what_references_them(owner, _export_dir) -> None:
    ids = _seed(owner.org, patients=2, observations=2)
    _create(owner.org, {"resourceType": "Organization", "name": "not about a patient"})
    _create(
        owner.org,
        {
            "resourceType": "AllergyIntolerance",
            "patient": {"reference": f"Patient/{ids['Patient'][1]}"},
        },
    )
    job = _run(owner, kind="patient")
    assert job.counts == {"Patient": 2, "Observation": 2, "AllergyIntolerance": 1}


def test_group_export_keeps_its_members_compartments(owner, _export_dir) -> None:
    ids = _seed(owner.org, patients=3, observations=0)
    a, b, c = ids["Patient"]
    for patient in (a, b, c):
        _create(
            owner.org,
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{patient}"},
            },
        )
    group = _create(
        owner.org,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"Patient/{a}"}},
                {"entity": {"reference": f"https://example.test/fhir/Patient/{b}/_history/1"}},
            ],
        },
    )
    job = _run(owner, kind="group", group_id=group)
    lines = _lines(_export_dir, job)
    assert {r["id"] for r in lines["Patient"]} == {a, b}
    subjects = {r["subject"]["reference"] for r in lines["Observation"]}
    assert subjects == {f"Patient/{a}", f"Patient/{b}"}
    assert "Group" not in job.counts


def test_group_deleted_before_the_job_runs_fails_cleanly(owner, _export_dir) -> None:
    group = _create(owner.org, {"resourceType": "Group", "type": "person", "actual": True})
    job = export_actions.start_export(
        org=owner.org,
        actor=owner.user,
        params=export.ExportParams(kind="group", group_id=group),
        request=None,
    )
    get_store().delete(owner.org.pk, "Group", group)
    assert export.run_export(job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and job.error == "The Group is not found"
    assert not list(_export_dir.rglob("*.ndjson"))


def test_files_are_split_above_the_size_limit(owner, settings, _export_dir) -> None:
    settings.EXPORT_FILE_MAX_BYTES = 1024
    for _ in range(12):
        _create(owner.org, {"resourceType": "Patient", "name": [{"text": "x" * 150}]})
    job = _run(owner)
    parts = [f for f in job.files if f["type"] == "Patient"]
    assert len(parts) > 1
    assert all(f["bytes"] <= 1024 for f in parts)
    assert sum(f["count"] for f in parts) == 12 == job.counts["Patient"]
    assert len(_lines(_export_dir, job)["Patient"]) == 12


def test_second_concurrent_export_is_refused(owner) -> None:
    export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
    )
    with pytest.raises(export.ExportBusy):
        export_actions.start_export(
            org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
        )


def test_a_job_is_claimed_once(owner) -> None:
    job = export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
    )
    assert export.run_export(job.pk) == "completed"
    assert export.run_export(job.pk) == "skipped"


def test_cancel_before_it_runs(owner, _export_dir) -> None:
    _seed(owner.org)
    job = export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
    )
    assert export_actions.cancel_export(job=job, actor=owner.user, request=None)
    assert export.run_export(job.pk) == "skipped"
    assert not export_actions.cancel_export(job=job, actor=owner.user, request=None)
    assert not list(_export_dir.rglob("*.ndjson"))


def test_cancel_after_completion_deletes_the_files(owner, _export_dir) -> None:
    _seed(owner.org)
    job = _run(owner)
    assert list(_export_dir.rglob("*.ndjson"))
    assert export_actions.cancel_export(job=job, actor=owner.user, request=None)
    assert export.delete_files(job.pk)
    assert not list(_export_dir.rglob("*.ndjson"))
    actions = list(
        AuditEvent.objects.filter(target_id=str(job.pk)).values_list("action", flat=True)
    )
    assert actions == ["export.start", "export.complete", "export.cancel"]


def _bulk_insert(org_id, count: int, resource_type: str = "Patient") -> None:
    """Rows straight into the store's table, as a big tenant's would be."""
    with tenant_transaction(org_id), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO fhir_resource (org_id, resource_type, id, version_id, last_updated,"
            " content) SELECT %s, %s, 'bulk-' || g, 1, now(),"
            " json_build_object('resourceType', %s::text, 'id', 'bulk-' || g,"
            "  'meta', json_build_object('tag', json_build_array(json_build_object("
            "  'system', %s::text, 'code', %s::text))))::text"
            " FROM generate_series(1, %s) g",
            [org_id, resource_type, resource_type, TENANT_SYSTEM, str(org_id), count],
        )


@pytest.mark.django_db(transaction=True)
def test_cancel_while_running_stops_and_deletes_its_files(owner, _export_dir) -> None:
    _bulk_insert(owner.org.pk, 2500)
    # Queued as start_export would, without its worker (eager in tests) running it.
    job = ExportJob.objects.create(
        org=owner.org, requested_by_type="user", requested_by_id=str(owner.user.pk)
    )
    seen: list[int] = []

    def cancel_from_the_dashboard(rows: int) -> None:
        seen.append(rows)
        if len(seen) == 1:
            assert ExportJob.objects.get(pk=job.pk).live_exported() == 1000

            def other_process() -> None:
                try:
                    export_actions.cancel_export(job=job, actor=owner.user, request=None)
                finally:
                    connection.close()

            thread = threading.Thread(target=other_process)
            thread.start()
            thread.join()

    assert export.run_export(job.pk, on_progress=cancel_from_the_dashboard) == "cancelled"
    assert seen == [1000]
    job.refresh_from_db()
    assert job.status == "cancelled" and job.lease_until is None and job.files_deleted
    assert not [p for p in _export_dir.rglob("*") if p.is_file()]


def test_retention_job_expires_files_and_fails_lost_workers(owner, outsider, _export_dir) -> None:
    _seed(owner.org)
    done = _run(owner)
    lost = export_actions.start_export(
        org=outsider.org, actor=outsider.user, params=export.ExportParams(), request=None
    )
    ExportJob.objects.filter(pk=lost.pk).update(
        status="running", lease_until=timezone.now() - timedelta(minutes=1)
    )
    assert export.purge_expired_exports() == 1  # the lost job's (empty) prefix
    done.refresh_from_db()
    assert done.status == "completed" and list(_export_dir.rglob("*.ndjson"))
    assert done.expires_at is not None
    later = done.expires_at + timedelta(seconds=1)
    assert export.purge_expired_exports(now=later) == 1
    done.refresh_from_db()
    assert done.status == "expired" and done.files_deleted
    assert not list(_export_dir.rglob("*.ndjson"))
    assert ExportJob.objects.get(pk=lost.pk).status == "failed"
    assert export.purge_expired_exports(now=later) == 0  # idempotent


def test_manifest_lists_every_file_with_its_count(owner) -> None:
    _seed(owner.org, patients=2, observations=1)
    job = _run(owner, types=["Observation", "Patient"])
    base = "https://api.test/fhir/R4/"
    doc = export.manifest(job, base)
    assert doc["requiresAccessToken"] is True and doc["error"] == []
    assert doc["request"] == f"{base}$export?_type=Observation%2CPatient"
    assert {o["type"]: o["count"] for o in doc["output"]} == {"Observation": 1, "Patient": 2}
    assert doc["output"][0]["url"].startswith(f"{base}$export-file?_jobId={job.pk}&file=")
