"""Export files in S3 (moto speaks the S3 wire protocol in-process) and locally, and
the settings that refuse unencrypted S3 in production."""

import os
import subprocess
import sys
from pathlib import Path

import boto3
import orjson
import pytest
from moto import mock_aws

from clinik.fhir import export, export_actions
from clinik.fhir.store import get_store
from clinik.privacy.storage import LocalStorage, delete_org_files, get_storage
from tests.test_guards import PRODUCTION_ENV

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "clinik-exports-test"


@pytest.fixture
def s3(settings, tmp_path: Path, monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = BUCKET
    settings.EXPORT_S3_PREFIX = "exports/"
    settings.EXPORT_S3_REGION = "us-east-1"
    settings.EXPORT_S3_SSE = "AES256"
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _keys(client, prefix: str = "") -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.mark.django_db
def test_export_to_s3_is_encrypted_and_complete(owner, outsider, s3, tmp_path) -> None:
    store = get_store()
    for _ in range(3):
        store.create(owner.org.pk, {"resourceType": "Patient"})
    store.create(owner.org.pk, {"resourceType": "Observation", "status": "final", "code": {}})
    store.create(outsider.org.pk, {"resourceType": "Patient"})
    job = export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
    )
    assert export.run_export(job.pk) == "completed"
    job.refresh_from_db()
    prefix = f"exports/{owner.org.pk}/{job.pk}/"
    assert _keys(s3) == [prefix + "Observation-1.ndjson", prefix + "Patient-1.ndjson"]
    for key in _keys(s3):
        assert s3.head_object(Bucket=BUCKET, Key=key)["ServerSideEncryption"] == "AES256"
    opened = get_storage().open(f"{owner.org.pk}/{job.pk}/Patient-1.ndjson")
    assert opened is not None
    chunks, size = opened
    body = b"".join(chunks)
    assert size == len(body)
    assert len(body.splitlines()) == job.counts["Patient"] == 3
    assert all(orjson.loads(line)["resourceType"] == "Patient" for line in body.splitlines())
    staged = [p for p in (tmp_path / "staging").rglob("*") if p.is_file()]
    assert staged == []  # the local staging copy is gone once uploaded

    assert export_actions.cancel_export(job=job, actor=owner.user, request=None)
    assert export.delete_files(job.pk)
    assert _keys(s3) == []


@pytest.mark.django_db
def test_kms_encryption_names_the_key(owner, s3, settings) -> None:
    settings.EXPORT_S3_SSE = "aws:kms"
    settings.EXPORT_S3_KMS_KEY_ID = "alias/clinik-exports"
    get_store().create(owner.org.pk, {"resourceType": "Patient"})
    job = export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
    )
    assert export.run_export(job.pk) == "completed"
    head = s3.head_object(Bucket=BUCKET, Key=_keys(s3)[0])
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == "alias/clinik-exports"


def test_delete_org_files_clears_s3_and_the_local_directory(s3, tmp_path) -> None:
    org, other = "0b7e6f3a-0000-4000-8000-000000000001", "0b7e6f3a-0000-4000-8000-000000000002"
    storage = get_storage()
    for key in (f"{org}/j1/Patient-1.ndjson", f"{org}/j2/Patient-1.ndjson", f"{other}/j3/a"):
        part = storage.create(key)
        part.write(b"{}\n")
        part.commit()
    local = LocalStorage(tmp_path / "files")
    part = local.create(f"{org}/old/Patient-1.ndjson")
    part.write(b"{}\n")
    part.commit()
    assert delete_org_files(org) == 3
    assert _keys(s3) == [f"exports/{other}/j3/a"]
    assert not list((tmp_path / "files").rglob("*.ndjson"))
    assert delete_org_files(org) == 0


def test_deletion_removes_every_version_on_a_versioned_bucket(s3) -> None:
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    storage = get_storage()
    for body in (b"first\n", b"second\n"):
        part = storage.create("org/job/Patient-1.ndjson")
        part.write(body)
        part.commit()
    listing = s3.list_object_versions(Bucket=BUCKET)
    assert len(listing["Versions"]) == 2
    assert storage.delete_prefix("org") == 1
    listing = s3.list_object_versions(Bucket=BUCKET)
    assert not listing.get("Versions") and not listing.get("DeleteMarkers")


def test_local_files_are_private_and_appear_only_when_complete(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    part = storage.create("org/job/Patient-1.ndjson")
    part.write(b'{"resourceType":"Patient"}\n')
    assert storage.open("org/job/Patient-1.ndjson") is None
    part.commit()
    path = tmp_path / "org/job/Patient-1.ndjson"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "org/job").stat().st_mode & 0o777 == 0o700
    with pytest.raises(ValueError):
        storage.open("../outside")
    discarded = storage.create("org/job/Observation-1.ndjson")
    discarded.write(b"x")
    discarded.discard()
    assert sorted(p.name for p in (tmp_path / "org/job").iterdir()) == ["Patient-1.ndjson"]


PRODUCTION = {
    **PRODUCTION_ENV,
    "DATABASE_SSLMODE": "require",
    "DJANGO_SETTINGS_MODULE": "clinik.settings",
}


def _start(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, **PRODUCTION, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_s3_without_server_side_encryption() -> None:
    result = _start(EXPORT_S3_BUCKET="exports", EXPORT_S3_SSE="")
    assert result.returncode != 0
    assert "EXPORT_S3_SSE must be AES256 or aws:kms when DEBUG=false" in result.stderr
    assert _start(EXPORT_S3_BUCKET="exports", EXPORT_S3_SSE="aws:kms").returncode == 0
    assert _start(EXPORT_S3_SSE="rot13").returncode != 0


@pytest.mark.django_db
def test_download_through_the_api_streams_from_s3(api, s3, django_capture_on_commit_callbacks):
    for family in ("Ames", "Bell"):
        api.post("Patient", {"resourceType": "Patient", "name": [{"family": family}]})
    with django_capture_on_commit_callbacks(execute=True):
        kickoff = api.get("$export", headers={"Prefer": "respond-async"})
    status_path = kickoff["Content-Location"].split("/fhir/R4/", 1)[1]
    [output] = api.get(status_path).json()["output"]
    response = api.get(output["url"].split("/fhir/R4/", 1)[1])
    assert response.status_code == 200
    rows = [orjson.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert sorted(r["name"][0]["family"] for r in rows) == ["Ames", "Bell"] and output["count"] == 2
