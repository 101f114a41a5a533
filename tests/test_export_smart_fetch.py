"""The SMART reference bulk client, smart-fetch, runs a bulk export with its defaults
(every type the CapabilityStatement lists, `_typeFilter` on Observation's US Core
categories) against the real server and a real Celery worker, and gets exactly the
organization's resources those defaults select.

smart-fetch lives in a virtualenv of its own (`make smart-fetch`, pinned in
pyproject.toml's `smart-fetch` extra): its dependencies pin a botocore that our boto3
refuses."""

import gzip
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from clinik.accounts.models import Organization
from clinik.keys.models import ApiKey
from tests.liveserver import database_url, serve

ROOT = Path(__file__).resolve().parent.parent
SMART_FETCH = ROOT / "var" / "tools" / "smart-fetch" / "bin" / "smart-fetch"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@pytest.fixture(scope="module")
def live(django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[Any]:
    assert SMART_FETCH.exists(), "smart-fetch is missing: run `make smart-fetch`"
    with django_db_blocker.unblock():
        orgs = [Organization.objects.create(name=n) for n in ("Bulk org", "Other org")]
        keys = [
            ApiKey.issue(org=o, name="bulk", scopes="read", expires_at=None, created_by=None)[1]
            for o in orgs
        ]
        writers = [
            ApiKey.issue(org=o, name="w", scopes="read-write", expires_at=None, created_by=None)[1]
            for o in orgs
        ]
    work = tmp_path_factory.mktemp("smart-fetch")
    env = {
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "EXPORT_DIR": str(work / "exports"),
        "EXPORT_S3_BUCKET": "",
        "EXPORT_POLL_MIN_SECONDS": "0",
    }
    with (work / "worker.log").open("wb") as worker_out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "clinik", "worker", "--pool=solo"],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=worker_out,
            stderr=subprocess.STDOUT,
        )
    try:
        with serve(work, env=env) as server:
            yield {"base": f"{server.base}/fhir/R4", "keys": keys, "writers": writers}
    finally:
        worker.terminate()
        worker.wait(timeout=20)
        with django_db_blocker.unblock():
            for org in orgs:
                org.delete()


def _post(live: Any, writer: str, resource: dict[str, Any]) -> str:
    request = urllib.request.Request(
        f"{live['base']}/{resource['resourceType']}",
        data=json.dumps(resource).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {writer}", "Content-Type": "application/fhir+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        return str(json.loads(response.read())["id"])


def _observation(patient: str, category: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"text": "reading"},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _exported(folder: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.ndjson.gz")):  # (log.ndjson is smart-fetch's log)
        with gzip.open(path, "rt") as lines:
            for line in lines:
                resource = json.loads(line)
                found.setdefault(resource["resourceType"], set()).add(resource["id"])
    return found


def test_smart_fetch_bulk_export_with_its_defaults(live: Any, tmp_path: Path) -> None:
    own, other = live["writers"]
    patients = [_post(live, own, {"resourceType": "Patient"}) for _ in range(2)]
    vitals = [_post(live, own, _observation(p, "vital-signs")) for p in patients]
    laboratory = _post(live, own, _observation(patients[0], "laboratory"))
    _post(live, own, _observation(patients[1], "not-a-us-core-category"))  # filtered out
    condition = _post(
        live,
        own,
        {"resourceType": "Condition", "subject": {"reference": f"Patient/{patients[0]}"}},
    )
    outsider = _post(live, other, {"resourceType": "Patient"})
    _post(live, other, _observation(outsider, "vital-signs"))

    token = tmp_path / "token"
    token.write_text(live["keys"][0])
    out = tmp_path / "out"
    result = subprocess.run(
        [
            str(SMART_FETCH),
            "bulk",
            str(out),
            "--fhir-url",
            live["base"],
            "--bearer-token",
            str(token),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Its defaults: _type (the types /metadata lists) and _typeFilter on Observation.
    log = [json.loads(line) for line in (out / "log.ndjson").read_text().splitlines()]
    kickoff = next(e for e in log if e.get("eventId") == "kickoff")["eventDetail"]["exportUrl"]
    assert "_typeFilter=Observation%3Fcategory%3D" in kickoff and "_type=" in kickoff
    assert _exported(out) == {
        "Patient": set(patients),
        "Observation": {*vitals, laboratory},
        "Condition": {condition},
    }
