"""The HealthLake store against the local fake datastore (tests/healthlake_fake.py):
start-up checks, SigV4, the tenant wall on every answer (a malicious datastore
included), paging, HealthLake's limits, throttling and the quota, closure."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from django.core import checks
from django.db import connection

from clinik.fhir.http import FhirError
from clinik.fhir.store import get_store
from clinik.fhir.store.healthlake_checks import healthlake_datastore
from clinik.fhir.store.healthlake_client import DatastoreRefused, HealthLakeClient, TransportFailure
from clinik.fhir.store.healthlake_quota import Quota
from clinik.fhir.store.healthlake_setup import build_store
from clinik.fhir.tenancy import TENANT_SYSTEM
from tests.healthlake_fake import ACCESS_KEY, REGION, SECRET_KEY, FakeHealthLake
from tests.healthlake_fixtures import use_fake
from tests.test_guards import PRODUCTION_ENV

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


def _tag(org_id: Any) -> dict[str, str]:
    return {"system": TENANT_SYSTEM, "code": str(org_id)}


def _ids(bundle: dict[str, Any], mode: str | None = None) -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] != "outcome" and (mode is None or e["search"]["mode"] == mode)
    ]


def _foreign(fake: FakeHealthLake, resource_type: str = "Patient", **body: Any) -> str:
    """A resource another tenant of the datastore holds (written at the wire)."""
    rid = str(uuid4())
    fake.put_raw(
        {"resourceType": resource_type, "id": rid, "meta": {"tag": [_tag(uuid4())]}, **body}
    )
    return rid


# --- start-up -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fake_args", "debug", "refused"),
    [
        ({}, False, None),
        ({"status": "CREATING"}, False, "not ACTIVE"),
        ({"version": "STU3"}, True, "not R4"),
        ({"cmk": False}, False, "customer-managed KMS key"),
        ({"cmk": False}, True, None),  # DEBUG: an AWS-owned key is allowed
    ],
)
def test_start_up_describes_the_datastore_and_refuses_one_unfit_for_phi(
    settings, monkeypatch, fake_args: dict[str, Any], debug: bool, refused: str | None
) -> None:
    fake = FakeHealthLake(**fake_args).start()
    try:
        use_fake(settings, monkeypatch, fake)
        settings.DEBUG = debug
        if refused is None:
            assert build_store().client.base == fake.endpoint
            assert [m.id for m in healthlake_datastore()] == ["clinik.I101"]
        else:
            with pytest.raises(DatastoreRefused, match=refused):
                build_store()
            [error] = healthlake_datastore()
            assert error.id == "clinik.E102" and refused in error.msg
        assert fake.requests == []  # describing is a control-plane call only
    finally:
        fake.stop()


def test_check_deploy_runs_the_datastore_check(settings, monkeypatch, healthlake) -> None:
    settings.DEBUG = False
    settings.SUBSCRIPTIONS_SECRET_KEYS = [PRODUCTION_ENV["SUBSCRIPTIONS_SECRET_KEYS"]]
    healthlake.cmk = False
    found = checks.run_checks(include_deployment_checks=True, tags=["clinik"])
    assert "clinik.E102" in [m.id for m in found]
    settings.FHIR_STORE = "postgres"
    assert checks.run_checks(include_deployment_checks=True, tags=["clinik"]) == []


def test_a_wrong_signature_is_refused_at_both_planes(settings, monkeypatch, healthlake, api):
    created = api.post("Patient", {"resourceType": "Patient"})
    assert created.status_code == 201
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY + "x")
    from clinik.fhir.store import _store

    _store.cache_clear()
    with pytest.raises(ClientError):  # the control plane refuses the describe
        build_store()
    assert healthlake.refused_signatures == 1
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    store = build_store()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY + "x")
    store.client._session = __import__("boto3").session.Session(region_name=REGION)
    with pytest.raises(FhirError) as refused:
        store.read(api.org.pk, "Patient", created.json()["id"])
    assert refused.value.status == 503  # our credentials are wrong: never a 500
    assert healthlake.refused_signatures == 2
    assert ACCESS_KEY  # the fake verified against these credentials


# --- the tenant wall -------------------------------------------------------------------


def test_a_put_onto_another_tenants_id_answers_exactly_like_an_unknown_id(api, healthlake) -> None:
    theirs = _foreign(healthlake, name=[{"family": "Theirs"}])
    unknown = str(uuid4())
    answers = []
    for rid in (theirs, unknown):
        for headers in ({}, {"If-Match": 'W/"1"'}):
            answer = api.put(
                f"Patient/{rid}", {"resourceType": "Patient", "id": rid}, headers=headers
            )
            answers.append((answer.status_code, answer.json()))
    # Update-as-create is not offered: the same 400 not-supported for both ids (and
    # the same 412 with If-Match), so a PUT never reveals that another tenant has an id.
    assert answers[0] == answers[2] and answers[1] == answers[3]
    assert answers[0][0] == 400 and answers[0][1]["issue"][0]["code"] == "not-supported"
    assert "POST" in answers[0][1]["issue"][0]["diagnostics"]
    assert answers[1][0] == 412
    # The same through a conditional PUT naming the id, and a transaction's PUT entry.
    for rid in (theirs, unknown):
        conditional = api.put(
            "Patient?identifier=urn:x|none", {"resourceType": "Patient", "id": rid}
        )
        assert (conditional.status_code, conditional.json()) == answers[0]
    assert healthlake.current("Patient", theirs)["name"] == [{"family": "Theirs"}]
    assert healthlake.current("Patient", unknown) is None
    assert api.get(f"Patient/{theirs}").status_code == 404
    # a DELETE of an id the tenant does not have is the informational no-op (issue 14)
    deleted = api.delete(f"Patient/{theirs}")
    assert deleted.status_code == 200
    assert deleted.json()["issue"][0]["severity"] == "information"
    assert api.post(f"Patient/{theirs}/$expunge", "").status_code == 404
    assert healthlake.current("Patient", theirs) is not None


def test_own_resources_update_and_revive_after_delete(api, healthlake) -> None:
    pid = api.post("Patient", {"resourceType": "Patient"}).json()["id"]
    updated = api.put(f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "gender": "male"})
    assert updated.status_code == 200 and updated.json()["meta"]["versionId"] == "2"
    assert api.delete(f"Patient/{pid}").status_code == 204
    revived = api.put(f"Patient/{pid}", {"resourceType": "Patient", "id": pid})
    assert revived.status_code == 201  # the tenant's own deleted id: not update-as-create
    created = api.put("Patient?identifier=urn:x|new", {"resourceType": "Patient"})
    assert created.status_code == 201  # no match, no id: a create with an id we chose


def test_a_malicious_datastore_leaks_nothing_through_search_include_or_chain(
    api, healthlake
) -> None:
    own = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Smith"}]}).json()
    api.post(
        "Observation",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1-1"}]},
            "subject": {"reference": f"Patient/{own['id']}"},
        },
    )
    their_patient = _foreign(healthlake, name=[{"family": "Smith"}], gender="female")
    their_obs = _foreign(
        healthlake,
        "Observation",
        status="final",
        code={"coding": [{"system": "http://loinc.org", "code": "1-1"}]},
        subject={"reference": f"Patient/{their_patient}"},
    )
    secrets = {their_patient, their_obs}
    # The datastore puts another tenant's resources into the answer as match and include.
    healthlake.inject = [
        ("match", ("Patient", their_patient)),
        ("include", ("Observation", their_obs)),
    ]
    found = api.get("Patient?family=Smith&_revinclude=Observation:subject")
    assert found.status_code == 200
    assert _ids(found.json(), "match") == [own["id"]]
    assert not secrets & set(_ids(found.json()))
    # ... and ignores the tenant tag altogether: chained, _has and _include criteria.
    healthlake.inject = []
    healthlake.ignore_tag = True
    for query in (
        "Observation?subject.name=Smith",
        "Observation?subject:Patient.name=Smith&_include=Observation:subject",
        "Patient?_has:Observation:subject:code=http://loinc.org|1-1",
        "Patient?name=Smith&_revinclude=Observation:subject",
    ):
        answer = api.get(query)
        assert answer.status_code == 200, query
        body = answer.content.decode()
        assert not any(s in body for s in secrets), query
        assert _ids(answer.json()), query  # the tenant's own resources still come back
    assert their_patient in {r["id"] for r in healthlake.live()}


def test_every_search_carries_the_tenant_tag_and_chains_carry_it_too(api, healthlake) -> None:
    api.get("Observation?subject.name=Smith")
    api.post("Patient/_search", "name=Smith", content_type="application/x-www-form-urlencoded")
    searches = [r for r in healthlake.requests if r[1].endswith("_search")]
    assert len(searches) == 2


def test_paging_links_are_our_own_and_bound_to_the_tenant(api, outsider_api, healthlake) -> None:
    made = {
        api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Page"}]}).json()["id"]
        for _ in range(5)
    }
    seen: list[str] = []
    url = "Patient?family=Page&_count=2"
    next_url = None
    for _ in range(5):
        body = api.get(url).json()
        seen += _ids(body)
        links = {link["relation"]: link["url"] for link in body["link"]}
        assert all("datastore" not in u and healthlake.origin not in u for u in links.values())
        if "next" not in links:
            break
        next_url = links["next"]
        url = next_url.split("/fhir/R4/", 1)[1]
    assert sorted(seen) == sorted(made)
    assert next_url is not None
    stolen = outsider_api.get(next_url.split("/fhir/R4/", 1)[1])
    assert stolen.status_code == 410
    assert not made & set(stolen.content.decode().split('"'))


# --- HealthLake's limits are declared, not hidden ------------------------------------------


def test_unsupported_features_get_the_usual_outcome(api, healthlake) -> None:
    api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Limit"}]})
    lenient = api.get("Patient?family=Limit&_count=500&_sort=family&_total=accurate").json()
    [outcome] = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    diagnostics = " ".join(i["diagnostics"] for i in outcome["resource"]["issue"])
    assert "_count is at most 100" in diagnostics and "_sort" in diagnostics
    assert "_total" in diagnostics
    assert len(_ids(lenient)) == 1
    for query in ("_count=500", "_sort=family", "_total=accurate"):
        strict = api.get(f"Patient?family=Limit&{query}", headers={"Prefer": "handling=strict"})
        assert strict.status_code == 400, query
        assert strict.json()["issue"][0]["code"] == "not-supported"
    unsupported = api.get("Appointment?patient=x", headers={"Prefer": "handling=strict"})
    assert unsupported.status_code == 400
    # HealthLake documents history per resource only: type and system history are 400.
    for path in ("Patient/_history", "_history"):
        history = api.get(path)
        assert history.status_code == 400 and history.json()["resourceType"] == "OperationOutcome"
        assert history.json()["issue"][0]["code"] == "not-supported"
    # HealthLake's transactions hold at most 160 resources: more is the usual outcome.
    post = {
        "resource": {"resourceType": "Patient"},
        "request": {"method": "POST", "url": "Patient"},
    }
    big = api.post("", {"resourceType": "Bundle", "type": "transaction", "entry": [post] * 161})
    assert big.status_code == 400, big.content
    assert big.json()["issue"][0]["code"] == "not-supported"
    assert "at most 160" in big.json()["issue"][0]["diagnostics"]
    assert healthlake.transactions == 0 and len(healthlake.live(str(api.org.pk))) == 1


def test_metadata_promises_only_what_the_store_does(client, healthlake) -> None:
    statement = client.get("/fhir/R4/metadata").json()
    rest = statement["rest"][0]
    codes = {i["code"] for i in rest["interaction"]}
    assert "history-system" not in codes
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["updateCreate"] is False
    assert "history-type" not in {i["code"] for i in patient["interaction"]}
    count = next(p for p in patient["searchParam"] if p["name"] == "_count")
    assert "at most 100" in count["documentation"]
    appointment = next(r for r in rest["resource"] if r["type"] == "Appointment")
    assert "patient" not in {p["name"] for p in appointment["searchParam"]}


def test_a_batch_runs_entry_by_entry_inside_the_tenant(api, healthlake) -> None:
    theirs = _foreign(healthlake)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": f"Patient/{theirs}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{theirs}"}},
        ],
    }
    answer = api.post("", bundle)
    assert answer.status_code == 200, answer.content
    statuses = [e["response"]["status"] for e in answer.json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("404")
    assert statuses[2].startswith("200")  # the no-op delete of an id not ours (issue 14)
    assert healthlake.current("Patient", theirs) is not None


def test_export_reads_exactly_the_tenant(api, outsider_api, healthlake) -> None:
    own = {
        api.post("Patient", {"resourceType": "Patient"}).json()["id"],
        api.post(
            "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
        ).json()["id"],
    }
    outsider_api.post("Patient", {"resourceType": "Patient"})
    _foreign(healthlake)
    healthlake.ignore_tag = True  # even a datastore that ignores the tag cannot widen it
    exported = {v.id for v in get_store().iter_tenant(api.org.pk, types=["Patient", "Observation"])}
    assert exported == own


# --- throttling and the quota ---------------------------------------------------------------


def test_throttling_loses_and_duplicates_nothing(api, healthlake) -> None:
    answers = []
    with healthlake.throttling(0.3):
        for n in range(30):
            answers.append(
                api.post("Patient", {"resourceType": "Patient", "name": [{"text": str(n)}]})
            )
    assert healthlake.throttled > 0
    created = [a.json()["id"] for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert all(a.status_code == 503 and a["Retry-After"].isdigit() for a in refused)
    stored = healthlake.live(str(api.org.pk))
    assert sorted(r["id"] for r in stored) == sorted(created)  # none lost, none twice
    assert all(r["meta"]["versionId"] == "1" for r in stored)
    for rid in created:
        assert api.get(f"Patient/{rid}").status_code == 200


def test_exhausted_retries_are_503_with_retry_after_and_change_nothing(api, healthlake) -> None:
    with healthlake.throttling(1.0):
        answer = api.post("Patient", {"resourceType": "Patient"})
        search = api.get("Patient")
    for refused in (answer, search):
        assert refused.status_code == 503
        assert int(refused["Retry-After"]) >= 1
        assert refused.json()["issue"][0]["code"] == "throttled"
    assert healthlake.live(str(api.org.pk)) == []


def test_the_quota_is_shared_in_redis_and_refuses_rather_than_hangs(settings) -> None:
    quota = Quota.from_url(settings.REDIS_URL, uuid4().hex, {"crud": 1, "search": 1})
    other_worker = Quota.from_url(settings.REDIS_URL, quota.datastore_id, quota.limits)
    refused = 0
    for n in range(50):
        try:
            (quota if n % 2 else other_worker).acquire("search", deadline=time.monotonic())
        except FhirError as error:
            assert error.status == 503 and error.headers == {"Retry-After": "1"}
            refused += 1
    assert refused >= 45  # one request per second between both workers
    quota.slow_down("crud")
    assert other_worker.redis.exists(f"clinik:healthlake:{quota.datastore_id}:crud:slow")


# --- closure ----------------------------------------------------------------------------------


def _lived_in(api, healthlake) -> dict[str, Any]:
    org = api.org.pk
    store = get_store()
    pid = store.create(org, {"resourceType": "Patient", "name": [{"family": "Closing"}]}).id
    store.update(org, {"resourceType": "Patient", "gender": "male"}, pid)
    for resource_type, body in (
        ("Observation", {"status": "final", "code": {"text": "x"}}),
        ("Encounter", {"status": "finished", "class": {"code": "AMB"}}),
        ("Condition", {"subject": {"reference": f"Patient/{pid}"}}),
        ("Organization", {"name": "Clinic"}),
    ):
        for _ in range(3):
            store.create(org, {"resourceType": resource_type, **body})
    gone = store.create(org, {"resourceType": "Patient"}).id
    store.delete(org, "Patient", gone)
    theirs = _foreign(healthlake)
    return {"theirs": theirs, "versions": healthlake.kept_versions(str(org))}


def test_closure_empties_the_tenant_with_counts(api, healthlake) -> None:
    facts = _lived_in(api, healthlake)
    assert facts["versions"] == 14  # 13 live resources, one of them with 2 versions
    counts = get_store().purge_tenant(api.org.pk)
    assert counts == {
        "healthlake_pending_erased": 0,
        "healthlake_erased": 13,
        "healthlake_remaining": 0,
    }
    assert healthlake.kept_versions(str(api.org.pk)) == 0  # history included
    assert healthlake.current("Patient", facts["theirs"]) is not None
    assert get_store().purge_tenant(api.org.pk)["healthlake_erased"] == 0  # rerun: same state


_PURGE = """
import sys, uuid, django
django.setup()
from clinik.fhir.store import get_store
print("started", flush=True)
get_store().purge_tenant(uuid.UUID(sys.argv[1]))
print("done", flush=True)
"""


def test_closure_killed_mid_purge_and_rerun_ends_the_same(api, healthlake, settings) -> None:
    facts = _lived_in(api, healthlake)
    healthlake.hold_erase_after = 5
    s = connection.settings_dict
    host, port = s["HOST"] or "127.0.0.1", s["PORT"] or 5432
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "clinik.settings",
        "DATABASE_URL": f"postgres://{s['USER']}@{host}:{port}/{s['NAME']}",
        "FHIR_STORE": "healthlake",
        "HEALTHLAKE_DATASTORE_ID": healthlake.datastore_id,
        "HEALTHLAKE_REGION": REGION,
        "HEALTHLAKE_ENDPOINT_URL": healthlake.origin,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "REDIS_URL": settings.REDIS_URL,
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", _PURGE, str(api.org.pk)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if not healthlake.held.wait(60):
            pytest.fail(f"the purge never reached its 6th $erase: {worker.communicate()[1]}")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        healthlake.release.set()
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == -signal.SIGKILL
    halfway = healthlake.kept_versions(str(api.org.pk))
    assert 0 < halfway < facts["versions"]  # killed halfway
    healthlake.hold_erase_after = None
    counts = get_store().purge_tenant(api.org.pk)
    assert counts["healthlake_remaining"] == 0
    assert healthlake.kept_versions(str(api.org.pk)) == 0
    assert healthlake.current("Patient", facts["theirs"]) is not None


# --- conditional operations and idempotency ------------------------------------------------


def test_conditional_create_update_delete_stay_inside_the_tenant(
    api, outsider_api, healthlake
) -> None:
    mrn = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]}
    theirs = outsider_api.post("Patient", mrn).json()["id"]
    first = api.post("Patient", mrn, headers={"If-None-Exist": "identifier=urn:mrn|42"})
    again = api.post("Patient", mrn, headers={"If-None-Exist": "identifier=urn:mrn|42"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] != theirs
    updated = api.put("Patient?identifier=urn:mrn|42", {**mrn, "gender": "female"})
    assert updated.status_code == 200 and updated.json()["id"] == first.json()["id"]
    assert api.delete("Patient?identifier=urn:mrn|42").status_code == 204
    own = [r for r in healthlake.live(str(api.org.pk)) if r["resourceType"] == "Patient"]
    assert own == []
    assert healthlake.current("Patient", theirs)["meta"]["versionId"] == "1"


def test_an_idempotent_retry_creates_once(api, healthlake) -> None:
    headers = {"Idempotency-Key": "retry-42"}
    first = api.post("Patient", {"resourceType": "Patient"}, headers=headers)
    again = api.post("Patient", {"resourceType": "Patient"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert len(healthlake.live(str(api.org.pk))) == 1


def test_no_healthlake_url_or_value_reaches_the_logs(api, healthlake, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO)  # DEBUG logs SQL with its parameters: never in use
    api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Zyxwvut"}]})
    for _ in range(3):
        api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Zyxwvut"}]})
    body = api.get("Patient?family=Zyxwvut&_count=2").json()
    api.get(next(x["url"] for x in body["link"] if x["relation"] == "next").split("/R4/")[1])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "Zyxwvut" not in logged and healthlake.datastore_id not in logged


def test_closure_job_on_healthlake_gives_the_same_proof(owner, api, healthlake) -> None:
    from django.utils import timezone

    from clinik.audit.models import AuditEvent
    from clinik.privacy.closure import do_request_closure, run_closure
    from clinik.privacy.models import Closure

    facts = _lived_in(api, healthlake)
    closure = do_request_closure(org=owner.org, actor=owner.user, request=None)
    Closure.objects.filter(pk=closure.pk).update(scheduled_for=timezone.now())
    assert run_closure(closure.pk) == "completed"
    assert healthlake.kept_versions(str(owner.org.pk)) == 0
    assert healthlake.current("Patient", facts["theirs"]) is not None
    proof = {
        e.target_type: int(e.target_id)
        for e in AuditEvent.objects.filter(org_id=owner.org.pk, action="closure.deleted")
    }
    assert proof["healthlake_erased"] == 13 and proof["healthlake_remaining"] == 0


# --- transaction bundles: one HealthLake transaction ------------------------------------


def _tx(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _observation(subject: str) -> dict[str, Any]:
    return {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": subject},
        },
        "request": {"method": "POST", "url": "Observation"},
    }


def test_a_transaction_is_one_atomic_healthlake_transaction_inside_the_tenant(
    api, healthlake
) -> None:
    from clinik.audit.models import AuditEvent

    kept = api.post("Patient", {"resourceType": "Patient", "gender": "male"}).json()
    doomed = api.post("Patient", {"resourceType": "Patient"}).json()
    forged = {"system": TENANT_SYSTEM, "code": str(uuid4())}  # another tenant's tag
    bundle = _tx(
        {
            "fullUrl": "urn:uuid:0c8f3a6e-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Patient", "meta": {"tag": [forged]}},
            "request": {"method": "POST", "url": "Patient"},
        },
        _observation("urn:uuid:0c8f3a6e-0000-4000-8000-000000000001"),
        {
            "resource": {**kept, "gender": "female"},
            "request": {"method": "PUT", "url": f"Patient/{kept['id']}", "ifMatch": 'W/"1"'},
        },
        {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
        {"request": {"method": "GET", "url": f"Patient/{kept['id']}"}},
    )
    before = AuditEvent.objects.filter(org_id=api.org.pk).count()
    answer = api.post("", bundle)
    assert answer.status_code == 200, answer.content
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "201 Created",
        "201 Created",
        "200 OK",
        "204 No Content",
        "200 OK",
    ]
    assert healthlake.transactions == 1  # the writes went as one transaction
    assert entries[4]["resource"]["gender"] == "female"  # the GET ran after the writes
    assert entries[2]["response"]["etag"] == 'W/"2"'
    patient_id = entries[0]["response"]["location"].split("/")[1]
    observation_id = entries[1]["response"]["location"].split("/")[1]
    stored = healthlake.current("Observation", observation_id)
    assert stored["subject"]["reference"] == f"Patient/{patient_id}"
    for rid in (patient_id, kept["id"]):
        tags = healthlake.current("Patient", rid)["meta"]["tag"]
        assert tags == [_tag(api.org.pk)]  # ours only: the forged tag is dropped
    assert AuditEvent.objects.filter(org_id=api.org.pk).count() == before + 5
    assert healthlake.current("Patient", doomed["id"]) is None  # deleted and erased
    assert api.get(f"Patient/{doomed['id']}").status_code == 410


def test_a_transaction_the_datastore_refuses_writes_nothing(api, healthlake) -> None:
    from clinik.audit.models import AuditEvent

    kept = api.post("Patient", {"resourceType": "Patient"}).json()
    before = sorted(map(str, healthlake.live()))
    audited = AuditEvent.objects.filter(org_id=api.org.pk, action="fhir.create").count()
    healthlake.fail_transaction_entry = 1  # e.g. a concurrent write: If-Match fails there
    answer = api.post(
        "",
        _tx(
            {
                "fullUrl": "urn:uuid:0c8f3a6e-0000-4000-8000-000000000003",
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            _observation("urn:uuid:0c8f3a6e-0000-4000-8000-000000000003"),
            {"request": {"method": "DELETE", "url": f"Patient/{kept['id']}"}},
        ),
    )
    assert answer.status_code == 412, answer.content
    assert answer.json()["issue"][0]["code"] == "conflict"
    assert healthlake.transactions == 1
    assert sorted(map(str, healthlake.live())) == before  # all or nothing at the datastore
    assert api.get(f"Patient/{kept['id']}").status_code == 200
    assert AuditEvent.objects.filter(org_id=api.org.pk, action="fhir.create").count() == audited
    store: Any = get_store()
    assert store.redis.smembers(store._pending_key(api.org.pk)) == set()


def test_an_applied_transaction_whose_erase_fails_still_succeeds(api, healthlake) -> None:
    """After HealthLake applied the transaction, a failing `$erase` must not turn the
    answer into an error (a retry would write twice): the delete stays pending, and the
    closure's purge erases it first."""
    from clinik.audit.models import AuditEvent

    kept = api.post("Patient", {"resourceType": "Patient"}).json()
    healthlake.fail_erase = True
    answer = api.post(
        "",
        _tx(
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "DELETE", "url": f"Patient/{kept['id']}"}},
        ),
    )
    assert answer.status_code == 200, answer.content
    assert AuditEvent.objects.filter(org_id=api.org.pk, action="fhir.delete").count() == 1
    assert api.get(f"Patient/{kept['id']}").status_code == 410
    store: Any = get_store()
    assert store.redis.smembers(store._pending_key(api.org.pk)) == {
        f"Patient/{kept['id']}".encode()
    }
    healthlake.fail_erase = False
    assert store.purge_tenant(api.org.pk)["healthlake_pending_erased"] == 1
    assert store.redis.smembers(store._pending_key(api.org.pk)) == set()


def test_a_reference_to_another_tenants_resource_is_refused_like_a_missing_one(
    api, healthlake
) -> None:
    theirs = _foreign(healthlake)
    mine = api.post("Patient", {"resourceType": "Patient"}).json()["id"]
    answers = []
    for target in (theirs, str(uuid4())):
        answer = api.post("", _tx(_observation(f"Patient/{target}")))
        answers.append((answer.status_code, answer.json()))
    assert answers[0] == answers[1]  # nothing tells another tenant's id from a missing one
    assert answers[0][0] == 400 and answers[0][1]["issue"][0]["code"] == "not-found"
    assert answers[0][1]["issue"][0]["expression"] == ["Bundle.entry[0]"]
    assert healthlake.transactions == 0  # refused before anything was sent
    ok = api.post("", _tx(_observation(f"Patient/{mine}")))
    assert ok.status_code == 200 and healthlake.transactions == 1


def test_a_transaction_writes_each_resource_once_and_refuses_update_as_create(
    api, healthlake
) -> None:
    pid = api.post("Patient", {"resourceType": "Patient"}).json()["id"]
    twice = api.post(
        "",
        _tx(
            {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
            {
                "resource": {"resourceType": "Patient", "id": pid},
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            },
        ),
    )
    assert twice.status_code == 400 and twice.json()["issue"][0]["code"] == "not-supported"
    assert twice.json()["issue"][0]["expression"] == ["Bundle.entry[1]"]
    new_id = api.post(
        "",
        _tx(
            {
                "resource": {"resourceType": "Patient", "id": "123"},
                "request": {"method": "PUT", "url": "Patient/123"},
            }
        ),
    )
    assert new_id.status_code == 400 and "Update as create" in new_id.content.decode()
    assert healthlake.transactions == 0 and api.get(f"Patient/{pid}").status_code == 200


def test_the_fake_datastore_runs_transactions_all_or_nothing_with_urn_uuids(
    api, healthlake
) -> None:
    """The fake's transaction itself (what the adapter relies on HealthLake for)."""
    store: Any = get_store()
    client = store.client
    urn = "urn:uuid:5a1d0e3c-0000-4000-8000-000000000002"
    bundle = _tx(
        {
            "fullUrl": urn,
            "resource": {"resourceType": "Patient"},
            "request": {"method": "POST", "url": "Patient"},
        },
        {**_observation(urn)},
    )
    answer = client.call("POST", "", body=bundle, idempotent=False)
    assert answer.status == 200
    patient, observation = (e["resource"] for e in answer.json()["entry"])
    assert observation["subject"]["reference"] == f"Patient/{patient['id']}"
    healthlake.fail_transaction_entry = 1
    failed = client.call("POST", "", body=bundle, idempotent=False)
    assert failed.status == 412
    assert len(healthlake.live()) == 2  # the first entry of the failed one was undone
    too_big = client.call("POST", "", body=_tx(*[bundle["entry"][0]] * 161), idempotent=False)
    assert too_big.status == 400


# --- the transport (libcurl) against a raw socket server -------------------------------


class RawServer:
    """Answers each request with the next scripted bytes (None: closes without an
    answer; "silent": reads it and never answers). One thread per connection."""

    def __init__(self, answers: list[bytes | str | None], tls: Any = None) -> None:
        self.answers = answers
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stopped = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}/datastore/x/r4/"

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        if self.tls:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:  # the client refused the certificate
                conn.close()
                return
        with conn:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length:
                    body += conn.recv(65536)
                with self.lock:
                    self.requests.append(head + b"\r\n\r\n" + body)
                    answer = self.answers.pop(0) if self.answers else None
                if answer == "silent":
                    self.stopped.wait(10)
                    return
                if not isinstance(answer, bytes):
                    return
                conn.sendall(answer)
                if b"Connection: close" in answer or b"HTTP/1.0" in answer:
                    return

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


@pytest.fixture
def raw(settings) -> Iterator[Any]:
    servers: list[RawServer] = []

    def start(
        answers: list[bytes | str | None], tls: Any = None, **options: Any
    ) -> tuple[RawServer, Any]:
        server = RawServer(answers, tls)
        servers.append(server)
        quota = Quota.from_url(settings.REDIS_URL, uuid4().hex, {"crud": 1000, "search": 1000})
        options = {"connect_timeout": 1.0, "read_timeout": 2.0, "retry_budget": 2.0, **options}
        client = HealthLakeClient(
            server.endpoint,
            region=REGION,
            quota=quota,
            credentials=Credentials(ACCESS_KEY, SECRET_KEY),
            **options,
        )
        return server, client

    yield start
    for server in servers:
        server.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 2\r\n\r\n{}"
CHUNKED = (
    b'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nETag: W/"1"\r\n\r\n'
    b'4\r\n{"a"\r\n3;x=y\r\n:1}\r\n0\r\nTrailer: t\r\n\r\n'
)
UNTIL_CLOSED = b"HTTP/1.0 200 OK\r\n\r\nuntil close"


def test_the_transport_keeps_one_connection_and_reads_every_kind_of_body(raw) -> None:
    server, client = raw([OK, CHUNKED, b"HTTP/1.1 100 Continue\r\n\r\n" + OK, UNTIL_CLOSED, OK])
    assert client.call("GET", "Patient/a", params=[("x", "1")]).body == b"{}"
    created = client.call("PUT", "Patient/b", body={"x": 1})
    assert (created.status, created.json(), created.headers["etag"]) == (201, {"a": 1}, 'W/"1"')
    assert client.call("DELETE", "Patient/c").status == 200  # after a 100 Continue
    assert server.connections == 1  # one connection kept alive for all three
    assert client.call("GET", "Patient/d").body == b"until close"
    assert client.call("GET", "Patient/e").status == 200
    assert server.connections == 2  # a close-delimited answer ends its connection
    first, put = server.requests[0], server.requests[1]
    assert first.startswith(b"GET /datastore/x/r4/Patient/a?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in first and b"\r\nAuthorization: AWS4-HMAC-SHA256 " in first
    assert b"Expect:" not in put and put.endswith(b'Content-Length: 7\r\n\r\n{"x":1}')
    assert b"\r\nUser-Agent: ClinikAPI\r\n" in first  # no library versions told


def test_an_idle_connection_the_server_closed_is_replaced_once(raw) -> None:
    server, client = raw([OK, None, OK], max_attempts=1)  # no retry by the client
    assert client.call("GET", "Patient/a").status == 200
    # The server drops the kept connection without answering: sent again, anew.
    assert client.call("GET", "Patient/a").status == 200
    assert server.connections == 2


def test_a_transaction_is_sent_once_on_a_new_connection_and_never_resent(raw) -> None:
    server, client = raw([OK, None])
    assert client.call("GET", "Patient/a").status == 200
    with pytest.raises(FhirError) as refused:  # read and closed without an answer
        client.call("POST", "", body={"resourceType": "Bundle"}, idempotent=False)
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "5"}
    assert len(server.requests) == 2 and server.connections == 2


def test_timeouts_and_refused_connections_are_503_and_a_transaction_not_resent(raw) -> None:
    server, client = raw(["silent"] * 4, read_timeout=0.2, max_attempts=2)
    started = time.monotonic()
    with pytest.raises(FhirError) as timed_out:
        client.call("GET", "Patient/a")
    assert timed_out.value.status == 503 and timed_out.value.code == "transient"
    assert len(server.requests) == 2 and time.monotonic() - started < 5
    with pytest.raises(FhirError):
        client.call("POST", "", body={"resourceType": "Bundle"}, idempotent=False)
    assert len(server.requests) == 3  # the transaction once: its outcome is unknown
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    nowhere = HealthLakeClient(
        f"http://127.0.0.1:{port}/datastore/x/r4/",
        region=REGION,
        quota=client.quota,
        connect_timeout=0.5,
        credentials=Credentials(ACCESS_KEY, SECRET_KEY),
    )
    with pytest.raises(TransportFailure) as failure:
        nowhere._pool.request("GET", "/datastore/x/r4/Patient/secret", {}, None, reuse=True)
    assert "secret" not in str(failure.value) and "127.0.0.1" not in str(failure.value)


def test_a_header_cannot_split_the_request(raw) -> None:
    server, client = raw([OK])
    with pytest.raises(ValueError):
        client.call("GET", "Patient/a", headers={"If-Match": 'W/"1"\r\nInjected: 1'})
    assert server.requests == []


def test_tls_is_verified_against_the_trusted_cas(raw, tmp_path, monkeypatch) -> None:
    from tests.test_lib_webhooks import _self_signed

    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server, client = raw([OK], tls=context, max_attempts=1)
    with pytest.raises(FhirError) as untrusted:  # a certificate no system CA signed
        client.call("GET", "Patient/a")
    assert untrusted.value.status == 503 and server.requests == []
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # now a trusted CA: the same call goes through
    server, client = raw([OK], tls=context, max_attempts=1)
    assert client.call("GET", "Patient/a").status == 200
    assert server.requests[0].startswith(b"GET /datastore/x/r4/Patient/a HTTP/1.1")


def test_a_forked_worker_opens_its_own_connection(raw) -> None:
    server, client = raw([OK, OK, OK])
    assert client.call("GET", "Patient/a").status == 200
    pid = os.fork()
    if pid == 0:  # the child: a worker forked after the parent had called
        code = 1
        try:
            code = 0 if client.call("GET", "Patient/b").status == 200 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.call("GET", "Patient/c").status == 200  # the parent's is intact
    assert server.connections == 2 and len(server.requests) == 3
