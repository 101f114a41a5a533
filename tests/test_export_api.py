"""$export over HTTP through the gateway: kick-off, status polling, manifest,
download with the organization's key, cancel, and every refusal."""

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from clinik.audit.models import AuditEvent
from clinik.fhir.tenancy import tenant_transaction
from clinik.privacy.models import ExportJob

pytestmark = pytest.mark.django_db

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path: Path) -> Path:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    settings.EXPORT_POLL_MIN_SECONDS = 0
    return tmp_path


def _path(url: str) -> str:
    """`https://testserver/fhir/R4/$export-poll-status?_jobId=…` → `$export-poll-status?…`"""
    parts = urlsplit(url)
    assert parts.path.startswith("/fhir/R4/")
    return parts.path[len("/fhir/R4/") :] + (f"?{parts.query}" if parts.query else "")


def _seed(api) -> dict[str, list[str]]:
    ids: dict[str, list[str]] = {"Patient": [], "Observation": []}
    for family in ("Ames", "Bell", "Cruz"):
        response = api.post("Patient", {"resourceType": "Patient", "name": [{"family": family}]})
        assert response.status_code == 201
        ids["Patient"].append(response.json()["id"])
    for n in range(2):
        response = api.post(
            "Observation",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"reading {n}"},
                "subject": {"reference": f"Patient/{ids['Patient'][n]}"},
            },
        )
        assert response.status_code == 201
        ids["Observation"].append(response.json()["id"])
    return ids


def _kickoff(api, path: str = "$export", capture=None, **kw):
    with capture(execute=True):
        return api.get(path, headers=ASYNC, **kw)


def _stored(org_id) -> dict[str, int]:
    with tenant_transaction(org_id), connection.cursor() as cursor:
        cursor.execute(
            "SELECT resource_type, count(*) FROM fhir_resource"
            " WHERE org_id = %s AND deleted_at IS NULL GROUP BY resource_type",
            [org_id],
        )
        return dict(cursor.fetchall())


def _download(api, url: str) -> list[dict]:
    response = api.get(_path(url), headers={"Accept": "application/fhir+ndjson"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/fhir+ndjson"
    body = b"".join(response.streaming_content)
    assert int(response["Content-Length"]) == len(body)
    return [orjson.loads(line) for line in body.splitlines()]


def test_kickoff_poll_manifest_download(api, outsider_api, django_capture_on_commit_callbacks):
    ids = _seed(api)
    _seed(outsider_api)
    kickoff = _kickoff(api, capture=django_capture_on_commit_callbacks)
    assert kickoff.status_code == 202
    status_url = kickoff["Content-Location"]
    assert status_url.startswith("http://testserver/fhir/R4/$export-poll-status?_jobId=")
    status = api.get(_path(status_url))
    assert status.status_code == 200
    manifest = status.json()
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"] == "http://testserver/fhir/R4/$export"
    assert manifest["transactionTime"].endswith("Z")
    assert "Expires" in status
    counts = {entry["type"]: entry["count"] for entry in manifest["output"]}
    assert counts == _stored(api.org.pk) == {"Patient": 3, "Observation": 2}
    for entry in manifest["output"]:
        rows = _download(api, entry["url"])
        assert len(rows) == entry["count"]
        assert {r["id"] for r in rows} == set(ids[entry["type"]])
    downloads = AuditEvent.objects.filter(action="export.download", org_id=api.org.pk)
    assert downloads.count() == 2
    assert {d.actor_type for d in downloads} == {"key"}
    assert {d.target_id for d in downloads} == {str(ExportJob.objects.get().pk)}


def test_a_read_only_key_exports_with_get(owner, django_capture_on_commit_callbacks):
    from tests.conftest import _api_for

    reader = _api_for(owner, scopes="read")
    kickoff = _kickoff(reader, capture=django_capture_on_commit_callbacks)
    assert kickoff.status_code == 202
    assert reader.get(_path(kickoff["Content-Location"])).status_code == 200


def test_a_read_only_key_starts_polls_and_cancels_with_post_and_delete(
    owner, django_capture_on_commit_callbacks
):
    """An export only reads: a read-only key may also kick off with POST and cancel
    with DELETE (its own organization's export; writes elsewhere stay 403)."""
    from tests.conftest import _api_for

    reader = _api_for(owner, scopes="read")
    body = {
        "resourceType": "Parameters",
        "parameter": [{"name": "_type", "valueString": "Patient"}],
    }
    with django_capture_on_commit_callbacks(execute=True):
        kickoff = reader.post("$export", body, headers=ASYNC)
    assert kickoff.status_code == 202
    status = _path(kickoff["Content-Location"])
    assert reader.get(status).status_code == 200
    assert reader.delete(status).status_code == 202
    assert reader.get(status).status_code == 404
    assert reader.post("Patient", {"resourceType": "Patient"}).status_code == 403
    assert reader.delete("Patient/any").status_code == 403


def test_type_and_since_parameters(api, django_capture_on_commit_callbacks):
    _seed(api)
    kickoff = _kickoff(
        api, "$export?_type=Observation&_outputFormat=ndjson", django_capture_on_commit_callbacks
    )
    manifest = api.get(_path(kickoff["Content-Location"])).json()
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [("Observation", 2)]
    assert manifest["request"].endswith("$export?_type=Observation&_outputFormat=ndjson")
    future = (timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kickoff = _kickoff(api, f"$export?_since={future}", django_capture_on_commit_callbacks)
    assert api.get(_path(kickoff["Content-Location"])).json()["output"] == []


def test_post_kickoff_with_parameters(api, django_capture_on_commit_callbacks):
    _seed(api)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient"},
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
        ],
    }
    with django_capture_on_commit_callbacks(execute=True):
        kickoff = api.post("$export", body, headers=ASYNC)
    assert kickoff.status_code == 202
    manifest = api.get(_path(kickoff["Content-Location"])).json()
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [("Patient", 3)]


def test_patient_and_group_exports(api, django_capture_on_commit_callbacks):
    ids = _seed(api)
    kickoff = _kickoff(api, "Patient/$export", django_capture_on_commit_callbacks)
    manifest = api.get(_path(kickoff["Content-Location"])).json()
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Patient": 3, "Observation": 2}
    group = api.post(
        "Group",
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{ids['Patient'][0]}"}}],
        },
    ).json()["id"]
    kickoff = _kickoff(api, f"Group/{group}/$export", django_capture_on_commit_callbacks)
    assert kickoff.status_code == 202
    manifest = api.get(_path(kickoff["Content-Location"])).json()
    assert {o["type"]: o["count"] for o in manifest["output"]} == {"Patient": 1, "Observation": 1}
    assert manifest["request"].endswith(f"Group/{group}/$export")
    assert api.get("Group/no-such-group/$export", headers=ASYNC).status_code == 404


@pytest.mark.parametrize(
    ("query", "headers", "status", "says"),
    [
        ("", {"Accept": "application/fhir+json"}, 400, "respond-async"),
        ("?_outputFormat=text/csv", ASYNC, 400, "_outputFormat"),
        ("?_elements=id", ASYNC, 400, "_elements is not supported"),
        ("?_typeFilter=Patient%3Fnonsense%3Dx", ASYNC, 400, "_typeFilter for Patient"),
        ("?_typeFilter=Patient%3Fbirthdate%3Dnot-a-date", ASYNC, 400, "_typeFilter for Patient"),
        ("?_typeFilter=Patient%3F_count%3D1", ASYNC, 400, "result parameters"),
        ("?_typeFilter=gender%3Dmale", ASYNC, 400, "Type?search"),
        ("?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal", ASYNC, 400, "not in _type"),
        ("?_type=Patient,Nonsense", ASYNC, 400, "not a resource type"),
        ("?_since=yesterday", ASYNC, 400, "_since"),
        ("?_since=2026-01-01&_since=2026-02-01", ASYNC, 400, "once"),
        ("?_bogus=1", ASYNC, 400, "Unknown parameter"),
        ("", {**ASYNC, "Accept": "text/html"}, 406, ""),
    ],
)
def test_kickoff_refusals(api, query, headers, status, says) -> None:
    response = api.get(f"$export{query}", headers=headers)
    assert response.status_code == status
    assert says in response.json()["issue"][0]["diagnostics"]
    assert not ExportJob.objects.exists()


def test_type_filters_are_ored_per_type_and_stay_in_the_tenant(
    api, outsider_api, django_capture_on_commit_callbacks
):
    ids = _seed(api)
    # The outsider's matching resources never show up in the owner's export.
    outsider_api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Ames"}]})
    api.post(
        "Observation",
        {"resourceType": "Observation", "status": "preliminary", "code": {"text": "x"}},
    )
    # Two filters on Patient (ORed); Observation filtered by status; other types whole.
    # Inner commas come URL-quoted once more, as smart-fetch sends them.
    filters = (
        "Patient%3Ffamily%3DAmes,Patient%3Ffamily%3DCruz%252CAmes,Observation%3Fstatus%3Dfinal"
    )
    kickoff = _kickoff(api, f"$export?_typeFilter={filters}", django_capture_on_commit_callbacks)
    assert kickoff.status_code == 202
    manifest = api.get(_path(kickoff["Content-Location"])).json()
    exported = {o["type"]: _download(api, o["url"]) for o in manifest["output"]}
    patients = sorted(r["name"][0]["family"] for r in exported["Patient"])
    assert patients == ["Ames", "Cruz"]
    assert {r["id"] for r in exported["Observation"]} == set(ids["Observation"])
    assert set(exported) == {"Patient", "Observation"}
    assert (
        "_typeFilter=Observation%3Fstatus%3Dfinal%2CPatient%3Ffamily%3DAmes%2C"
        in (manifest["request"])
    )


def test_lenient_handling_ignores_unsupported_kickoff_parameters(
    api, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        kickoff = api.get(
            "$export?_elements=id&_type=Patient",
            headers={**ASYNC, "Prefer": "respond-async, handling=lenient"},
        )
    assert kickoff.status_code == 202


def test_kickoff_needs_a_key(client) -> None:
    assert client.get("/fhir/R4/$export", headers=ASYNC).status_code == 401


def test_second_concurrent_export_is_429(api) -> None:
    first = api.get("$export", headers=ASYNC)  # its worker is not started in this test
    assert first.status_code == 202
    second = api.get("$export", headers=ASYNC)
    assert second.status_code == 429 and second["Retry-After"] == "60"


def test_status_while_running_and_polling_too_often(api, settings) -> None:
    settings.EXPORT_POLL_MIN_SECONDS = 5
    kickoff = api.get("$export", headers=ASYNC)  # queued: no worker ran it
    path = _path(kickoff["Content-Location"])
    queued = api.get(path)
    assert queued.status_code == 202
    assert queued["X-Progress"] == "queued" and queued["Retry-After"] == "5"
    too_soon = api.get(path)
    assert too_soon.status_code == 429 and too_soon["Retry-After"] == "5"
    job = ExportJob.objects.get()
    ExportJob.objects.filter(pk=job.pk).update(status="running")
    cache.set(job.progress_cache_key(), 4000)
    with time_machine.travel(timezone.now() + timedelta(seconds=6), tick=False):
        cache.delete(f"export-poll:{job.org_id}:{job.pk}")  # Redis keys age in real time
        running = api.get(path)
    assert running.status_code == 202 and running["X-Progress"] == "4000 written"


def test_cancel_then_404(api, django_capture_on_commit_callbacks, _export_dir) -> None:
    _seed(api)
    kickoff = _kickoff(api, capture=django_capture_on_commit_callbacks)
    path = _path(kickoff["Content-Location"])
    manifest = api.get(path).json()
    assert [p for p in _export_dir.rglob("*") if p.is_file()]
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(path).status_code == 202
    assert api.get(path).status_code == 404
    assert api.delete(path).status_code == 404
    assert api.get(_path(manifest["output"][0]["url"])).status_code == 404
    assert not [p for p in _export_dir.rglob("*") if p.is_file()]


def test_another_organizations_key_gets_404(api, outsider_api, django_capture_on_commit_callbacks):
    _seed(api)
    kickoff = _kickoff(api, capture=django_capture_on_commit_callbacks)
    path = _path(kickoff["Content-Location"])
    manifest = api.get(path).json()
    file_path = _path(manifest["output"][0]["url"])
    assert outsider_api.get(path).status_code == 404
    assert outsider_api.get(file_path).status_code == 404
    assert outsider_api.delete(path).status_code == 404
    assert api.get(path).status_code == 200  # untouched
    unknown = path.replace(str(ExportJob.objects.get().pk), "00000000-0000-4000-8000-000000000000")
    assert api.get(unknown).status_code == 404
    assert api.get("$export-poll-status?_jobId=not-a-uuid").status_code == 404


def test_links_expire(api, django_capture_on_commit_callbacks) -> None:
    _seed(api)
    kickoff = _kickoff(api, capture=django_capture_on_commit_callbacks)
    path = _path(kickoff["Content-Location"])
    manifest = api.get(path).json()
    file_path = _path(manifest["output"][0]["url"])
    job = ExportJob.objects.get()
    assert job.expires_at is not None
    with time_machine.travel(job.expires_at + timedelta(seconds=1), tick=False):
        assert api.get(file_path).status_code == 410
        assert api.get(path).status_code == 410
    assert api.get(file_path.replace("file=", "file=..%2F")).status_code == 404


def test_wrong_methods(api) -> None:
    assert api.send("PUT", "$export", {}, headers=ASYNC).status_code == 405
    assert api.send("POST", "$export-poll-status?_jobId=x", {}).status_code == 405
    assert api.send("DELETE", "$export-file?_jobId=x").status_code == 405
