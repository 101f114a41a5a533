"""FHIR REST interactions through the full middleware stack."""

import json

import pytest
from django.db import connection

from clinik.audit.models import AuditEvent
from clinik.fhir.tenancy import TENANT_SYSTEM

pytestmark = pytest.mark.django_db

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:mrn", "value": "12345"}],
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "gender": "male",
    "birthDate": "1974-12-25",
}


def _create(api, body=PATIENT):
    response = api.post("Patient", body)
    assert response.status_code == 201, response.content
    return response.json()


def test_metadata_needs_no_key_and_lists_every_type(client) -> None:
    response = client.get("/fhir/R4/metadata")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Bundle"} <= types
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert {"read", "vread", "update", "patch", "delete", "create", "history-instance"} <= codes


def test_create_assigns_id_version_and_tenant_tag(api) -> None:
    response = api.post("Patient", {**PATIENT, "id": "client-id", "meta": {"versionId": "9"}})
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != "client-id"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert body["meta"]["tag"] == [{"system": TENANT_SYSTEM, "code": str(api.org.pk)}]
    assert response["ETag"] == 'W/"1"'
    assert response["Location"].endswith(f"/fhir/R4/Patient/{body['id']}/_history/1")
    assert "Last-Modified" in response
    assert body["name"] == PATIENT["name"]


def test_client_sent_tenant_tag_is_replaced_and_others_kept(api, outsider) -> None:
    tags = [
        {"system": TENANT_SYSTEM, "code": str(outsider.org.pk)},
        {"system": "urn:example", "code": "keep-me"},
    ]
    body = _create(api, {**PATIENT, "meta": {"tag": tags}})
    assert body["meta"]["tag"] == [
        {"system": "urn:example", "code": "keep-me"},
        {"system": TENANT_SYSTEM, "code": str(api.org.pk)},
    ]


def test_read_vread_and_conditional_reads(api) -> None:
    created = _create(api)
    pid = created["id"]
    read = api.get(f"Patient/{pid}")
    assert read.status_code == 200
    assert read.json() == created
    assert read["ETag"] == 'W/"1"'
    assert api.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert api.get(f"Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
    later = "Wed, 01 Jan 2100 00:00:00 GMT"
    assert api.get(f"Patient/{pid}", headers={"If-Modified-Since": later}).status_code == 304
    earlier = "Wed, 01 Jan 2020 00:00:00 GMT"
    assert api.get(f"Patient/{pid}", headers={"If-Modified-Since": earlier}).status_code == 200
    assert api.get(f"Patient/{pid}/_history/1").json() == created
    missing = api.get(f"Patient/{pid}/_history/7")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"


def test_read_unknown_is_404_operation_outcome(api) -> None:
    response = api.get("Patient/does-not-exist")
    assert response.status_code == 404
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"


def test_update_versions_and_if_match(api) -> None:
    created = _create(api)
    pid = created["id"]
    updated = api.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "female"})
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert updated["ETag"] == 'W/"2"'
    stale = api.put(f"Patient/{pid}", {**PATIENT, "id": pid}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    fresh = api.put(f"Patient/{pid}", {**PATIENT, "id": pid}, headers={"If-Match": 'W/"2"'})
    assert fresh.status_code == 200
    assert fresh.json()["meta"]["versionId"] == "3"
    assert api.get(f"Patient/{pid}/_history/2").json()["gender"] == "female"
    bad = api.put(f"Patient/{pid}", {**PATIENT, "id": pid}, headers={"If-Match": "three"})
    assert bad.status_code == 400


def test_update_as_create_with_client_id(api) -> None:
    response = api.put("Patient/my-own-id", {**PATIENT, "id": "my-own-id"})
    assert response.status_code == 201
    assert response.json()["id"] == "my-own-id"
    assert response["Location"].endswith("/Patient/my-own-id/_history/1")
    again = api.put("Patient/my-own-id", {**PATIENT, "id": "my-own-id"})
    assert again.status_code == 200


def test_update_body_id_must_match_url(api) -> None:
    response = api.put("Patient/abc", {**PATIENT, "id": "xyz"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Patient.id"]
    missing = api.put("Patient/abc", PATIENT)
    assert missing.status_code == 400


def test_update_cannot_drop_or_change_the_tenant_tag(api, outsider) -> None:
    created = _create(api)
    pid = created["id"]
    evil = {**PATIENT, "id": pid, "meta": {"tag": [{"system": TENANT_SYSTEM, "code": "x"}]}}
    body = api.put(f"Patient/{pid}", evil).json()
    assert body["meta"]["tag"] == [{"system": TENANT_SYSTEM, "code": str(api.org.pk)}]
    patched = api.patch(f"Patient/{pid}", [{"op": "remove", "path": "/meta/tag"}])
    assert patched.status_code == 200
    assert patched.json()["meta"]["tag"] == [{"system": TENANT_SYSTEM, "code": str(api.org.pk)}]


def test_patch_applies_json_patch_and_validates_the_result(api) -> None:
    pid = _create(api)["id"]
    ok = api.patch(f"Patient/{pid}", [{"op": "replace", "path": "/gender", "value": "other"}])
    assert ok.status_code == 200
    assert ok.json()["gender"] == "other"
    assert ok.json()["meta"]["versionId"] == "2"
    invalid = api.patch(f"Patient/{pid}", [{"op": "replace", "path": "/gender", "value": 7}])
    assert invalid.status_code == 400
    assert invalid.json()["issue"][0]["expression"] == ["Patient.gender"]
    unknown = api.patch(f"Patient/{pid}", [{"op": "add", "path": "/colour", "value": "blue"}])
    assert unknown.status_code == 400
    broken = api.patch(f"Patient/{pid}", [{"op": "replace", "path": "/nope/x", "value": 1}])
    assert broken.status_code == 422
    garbage = api.patch(f"Patient/{pid}", "{not json")
    assert garbage.status_code == 400
    stale = api.patch(
        f"Patient/{pid}",
        [{"op": "replace", "path": "/gender", "value": "male"}],
        headers={"If-Match": 'W/"1"'},
    )
    assert stale.status_code == 412
    wrong_type = api.patch(f"Patient/{pid}", [], content_type="application/fhir+json")
    assert wrong_type.status_code == 415
    assert api.get(f"Patient/{pid}").json()["meta"]["versionId"] == "2"


def test_delete_is_410_at_once_then_history_shows_it(api) -> None:
    pid = _create(api)["id"]
    response = api.delete(f"Patient/{pid}")
    assert response.status_code == 204
    gone = api.get(f"Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json()["issue"][0]["code"] == "deleted"
    assert api.get(f"Patient/{pid}/_history/1").status_code == 200
    assert api.get(f"Patient/{pid}/_history/2").status_code == 410
    history = api.get(f"Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    listing = api.get("Patient").json()
    assert "entry" not in listing
    assert api.delete(f"Patient/{pid}").status_code == 204  # idempotent
    # An id never known: a no-op that succeeds, saying so (as HAPI answers).
    never = api.delete("Patient/never-was")
    assert never.status_code == 200
    assert never.json()["issue"] == [
        {
            "severity": "information",
            "code": "informational",
            "diagnostics": "No resource has this id: nothing was deleted",
        }
    ]
    assert api.get("Patient/never-was").status_code == 404


def test_update_after_delete_revives_with_a_new_version(api) -> None:
    pid = _create(api)["id"]
    api.delete(f"Patient/{pid}")
    response = api.put(f"Patient/{pid}", {**PATIENT, "id": pid})
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "3"


def test_prefer_return(api) -> None:
    minimal = api.post("Patient", PATIENT, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201
    assert minimal.content == b""
    assert minimal["Location"]
    outcome = api.post("Patient", PATIENT, headers={"Prefer": "return=OperationOutcome"})
    assert outcome.json()["resourceType"] == "OperationOutcome"
    full = api.post("Patient", PATIENT, headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "Patient"


def test_content_negotiation(api) -> None:
    pid = _create(api)["id"]
    assert api.get(f"Patient/{pid}", headers={"Accept": "application/json"}).status_code == 200
    assert api.get(f"Patient/{pid}", headers={"Accept": "*/*"}).status_code == 200
    xml = api.get(f"Patient/{pid}", headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 406
    assert xml.json()["resourceType"] == "OperationOutcome"
    assert api.get(f"Patient/{pid}?_format=json").status_code == 200
    assert api.get(f"Patient/{pid}?_format=xml").status_code == 406
    as_json = api.post("Patient", PATIENT, content_type="application/json")
    assert as_json.status_code == 201
    as_xml = api.post("Patient", "<Patient/>", content_type="application/fhir+xml")
    assert as_xml.status_code == 415


@pytest.mark.parametrize(
    "body, status",
    [
        ("{not json", 400),
        ("[]", 400),
        ('"a string"', 400),
        ("", 400),
        (json.dumps({"resourceType": "Observation", "status": "final"}), 400),
    ],
)
def test_bad_bodies_are_400(api, body: str, status: int) -> None:
    response = api.post("Patient", body)
    assert response.status_code == status
    assert response.json()["resourceType"] == "OperationOutcome"


def test_history_levels_count_since_and_paging(api) -> None:
    a = _create(api)["id"]
    b = _create(api)["id"]
    api.put(f"Patient/{a}", {**PATIENT, "id": a, "gender": "female"})
    api.post(
        "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    )
    system = api.get("_history").json()
    assert system["type"] == "history"
    assert len(system["entry"]) == 4
    type_level = api.get("Patient/_history").json()
    assert len(type_level["entry"]) == 3
    instance = api.get(f"Patient/{a}/_history").json()
    assert [e["response"]["etag"] for e in instance["entry"]] == ['W/"2"', 'W/"1"']
    page1 = api.get("_history?_count=2").json()
    assert len(page1["entry"]) == 2
    next_url = next(link["url"] for link in page1["link"] if link["relation"] == "next")
    page2 = api.get(next_url.split("/fhir/R4/")[1]).json()
    assert len(page2["entry"]) == 2
    seen = {e["fullUrl"] + e["response"]["etag"] for e in page1["entry"] + page2["entry"]}
    assert len(seen) == 4
    future = api.get("_history?_since=2100-01-01").json()
    assert "entry" not in future
    assert api.get("_history?_since=yesterday").status_code == 400
    assert b in {e["fullUrl"].rsplit("/", 1)[1] for e in type_level["entry"]}


def test_history_at_returns_the_version_current_then(api) -> None:
    import time_machine

    with time_machine.travel("2026-01-01 10:00Z", tick=False):
        pid = _create(api)["id"]
    with time_machine.travel("2026-02-01 10:00Z", tick=False):
        api.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "female"})
    january = api.get(f"Patient/{pid}/_history?_at=2026-01-15").json()
    assert [e["response"]["etag"] for e in january["entry"]] == ['W/"1"']
    february = api.get(f"Patient/{pid}/_history?_at=2026-02").json()
    assert [e["response"]["etag"] for e in february["entry"]] == ['W/"2"']


def test_expunge_erases_every_version_at_once(api) -> None:
    pid = _create(api)["id"]
    api.put(f"Patient/{pid}", {**PATIENT, "id": pid, "gender": "female"})
    api.delete(f"Patient/{pid}")
    response = api.post(f"Patient/{pid}/$expunge", "")
    assert response.status_code == 200
    assert response.json()["resourceType"] == "OperationOutcome"
    assert api.get(f"Patient/{pid}").status_code == 404
    assert api.get(f"Patient/{pid}/_history").status_code == 404
    # Checked with SQL inside the tenant (row-level security admits its rows):
    for table in ("fhir_resource", "fhir_history", "fhir_erasure"):
        assert _count_rows(table, api.org.pk, pid) == 0


def _count_rows(table: str, org_id, resource_id: str) -> int:
    from clinik.fhir.tenancy import tenant_transaction

    with tenant_transaction(org_id), connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table} WHERE id = %s", [resource_id])  # noqa: S608
        return int(cursor.fetchone()[0])


def test_wrong_methods_are_405_operation_outcomes(api) -> None:
    pid = _create(api)["id"]
    response = api.send("POST", f"Patient/{pid}", PATIENT)
    assert response.status_code == 405
    assert response.json()["resourceType"] == "OperationOutcome"
    assert api.send("PATCH", "Patient").status_code == 405
    assert api.send("PUT", f"Patient/{pid}/_history/1").status_code == 405
    assert api.send("GET", f"Patient/{pid}/$expunge").status_code == 405


def test_every_interaction_is_audited_without_content(api) -> None:
    pid = _create(api)["id"]
    api.get(f"Patient/{pid}")
    api.get("Patient/nope")
    api.put(f"Patient/{pid}", {**PATIENT, "id": pid})
    api.delete(f"Patient/{pid}")
    events = list(AuditEvent.objects.filter(action__startswith="fhir.").order_by("id"))
    assert [(e.action, e.outcome) for e in events] == [
        ("fhir.create", "success"),
        ("fhir.read", "success"),
        ("fhir.read", "failure"),
        ("fhir.update", "success"),
        ("fhir.delete", "success"),
    ]
    assert all(e.actor_type == "key" and e.org_id == api.org.pk for e in events)
    dumped = json.dumps([list(AuditEvent.objects.values_list())], default=str)
    assert "Chalmers" not in dumped and "12345" not in dumped


def test_capability_statement_declares_what_is_implemented(client) -> None:
    statement = client.get("/fhir/R4/metadata").json()
    rest = statement["rest"][0]
    assert {"transaction", "batch", "history-system", "search-system"} <= {
        i["code"] for i in rest["interaction"]
    }
    assert [op["name"] for op in rest["operation"]] == ["export"]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert patient["conditionalCreate"] is True
    assert patient["conditionalUpdate"] is True
    assert patient["conditionalDelete"] == "multiple"
    assert {"family", "identifier", "birthdate"} <= {p["name"] for p in patient["searchParam"]}


def test_unknown_endpoints_are_404_operation_outcomes(api) -> None:
    for path in ("Patient/1/$everything", "$meta", "Patient/1/_history/1/extra"):
        response = api.get(path)
        assert response.status_code in (400, 404), path
        assert response.json()["resourceType"] == "OperationOutcome", path


@pytest.mark.django_db(transaction=True)
def test_refused_writes_are_audited_although_their_transaction_rolls_back(api) -> None:
    """A refused create, update or patch rolls its transaction back; its failure audit
    row is written after, in its own (real transactions here, not a test's)."""
    pid = _create(api)["id"]
    assert api.post("Patient", {"resourceType": "Patient", "bogus": 1}).status_code == 400
    stale = {"If-Match": 'W/"9"'}
    assert api.put(f"Patient/{pid}", {**PATIENT, "id": pid}, headers=stale).status_code == 412
    bad_patch = [{"op": "replace", "path": "/birthDate", "value": "not a date"}]
    assert api.patch(f"Patient/{pid}", bad_patch).status_code == 400
    events = list(AuditEvent.objects.filter(action__startswith="fhir.").order_by("id"))
    assert [(e.action, e.outcome, e.target_id) for e in events] == [
        ("fhir.create", "success", pid),
        ("fhir.create", "failure", ""),
        ("fhir.update", "failure", pid),
        ("fhir.patch", "failure", pid),
    ]


def test_api_requests_skip_the_dashboard_middleware(owner) -> None:
    """The gateway calls the API view itself: no session is loaded or saved even for a
    signed-in browser, no CSRF or message machinery runs; SecurityMiddleware's headers
    and Content-Length are still there."""
    from tests.conftest import _api_for

    api = _api_for(owner)
    browser = owner.client()
    response = browser.get("/fhir/R4/Patient/missing", HTTP_AUTHORIZATION=f"Bearer {api.key}")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    request = response.wsgi_request
    assert not hasattr(request, "session") and not hasattr(request, "_messages")
    assert "Set-Cookie" not in response and "Cookie" not in response.get("Vary", "")
    assert response["X-Content-Type-Options"] == "nosniff"
    assert int(response["Content-Length"]) == len(response.content)
    assert response.resolver_match.url_name == "fhir_instance"


@pytest.mark.django_db(transaction=True)
def test_a_refused_transaction_bundle_is_audited(api) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Patient", "birthDate": "not a date"},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    assert api.post("", bundle).status_code == 400
    events = list(AuditEvent.objects.filter(action__startswith="fhir.").order_by("id"))
    assert [(e.action, e.outcome, e.target_type) for e in events] == [
        ("fhir.batch", "failure", "Bundle")
    ]


@pytest.mark.parametrize("how", ["revoked", "expired", "closed"])
def test_a_read_by_a_known_key_sees_its_revocation_at_once(api, owner, how) -> None:
    """Reads by id skip the key lookup for a key this process knows; the read's own
    statement checks the key, so a key revoked, expired or whose organization closed
    since gets the same 401 as from the gateway, reads nothing and audits nothing."""
    from datetime import timedelta

    import time_machine
    from django.utils import timezone

    from clinik.accounts.models import Organization
    from clinik.gateway.ratelimit import known_keys
    from clinik.keys.actions import do_revoke_key
    from clinik.keys.models import ApiKey

    pid = _create(api)["id"]
    assert api.get(f"Patient/{pid}").status_code == 200  # the key is known now
    key = ApiKey.objects.get(org=owner.org)
    reads = AuditEvent.objects.filter(action="fhir.read").count()
    later = timezone.now()
    if how == "revoked":
        do_revoke_key(key=key, actor=owner.user, request=None)
    elif how == "expired":
        ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() + timedelta(hours=1))
        later += timedelta(hours=2)
    else:
        Organization.objects.filter(pk=owner.org.pk).update(status=Organization.Status.CLOSED)
    with time_machine.travel(later, tick=False):
        refused = api.get(f"Patient/{pid}")
    assert refused.status_code == 401
    assert refused.json()["issue"][0]["code"] == "login"
    assert "invalid_token" in refused["WWW-Authenticate"]
    assert pid not in refused.content.decode()
    assert AuditEvent.objects.filter(action="fhir.read").count() == reads
    assert known_keys.get(refused.wsgi_request.key_digest) is None
    with time_machine.travel(later, tick=False):
        assert api.get(f"Patient/{pid}").status_code == 401  # looked up: refused again


def _bundle_of_one(kind: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": "Bundled"}]},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }


_KNOWN_KEY_REQUESTS = {
    "create": lambda api, pid: api.post("Patient", {"resourceType": "Patient"}),
    "conditional create": lambda api, pid: api.post(
        "Patient", {"resourceType": "Patient"}, headers={"If-None-Exist": "family=Nobody"}
    ),
    "update": lambda api, pid: api.put(
        f"Patient/{pid}", {"resourceType": "Patient", "id": pid, "active": True}
    ),
    "patch": lambda api, pid: api.patch(
        f"Patient/{pid}", [{"op": "add", "path": "/active", "value": True}]
    ),
    "delete": lambda api, pid: api.delete(f"Patient/{pid}"),
    "search": lambda api, pid: api.get("Patient", data={"_id": pid}),
    "system search": lambda api, pid: api.get("", data={"_type": "Patient"}),
    "history": lambda api, pid: api.get(f"Patient/{pid}/_history"),
    "vread": lambda api, pid: api.get(f"Patient/{pid}/_history/1"),
    "transaction": lambda api, pid: api.post("", _bundle_of_one("transaction")),
    "batch": lambda api, pid: api.post("", _bundle_of_one("batch")),
    "invalid create": lambda api, pid: api.post("Patient", {"resourceType": "Patient", "x": 1}),
    "missing": lambda api, pid: api.get("Patient/missing"),
    "wrong method": lambda api, pid: api.send("POST", f"Patient/{pid}/_history/1"),
}


# Committed for real: inside a test's transaction the view's COMMIT would be a
# savepoint release that waits in the queue (clinik.lib.pgbackend) and never runs.
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("interaction", list(_KNOWN_KEY_REQUESTS))
def test_every_interaction_by_a_known_key_sees_its_revocation_at_once(
    api, owner, interaction
) -> None:
    """A key this process knows is not looked up again (clinik.keys.recheck): the
    request's first tenant statement checks it in the same transaction as the work, or
    one query after a view that sent none or answered an error. Revoked since: the
    gateway's 401, and nothing written, read or audited."""
    from clinik.fhir.tenancy import tenant_query
    from clinik.gateway.ratelimit import known_keys
    from clinik.keys.actions import do_revoke_key
    from clinik.keys.models import ApiKey

    pid = _create(api)["id"]
    assert api.get(f"Patient/{pid}").status_code == 200  # the key is known now

    def state() -> tuple:
        stored = tenant_query(
            owner.org.pk,
            "SELECT count(*), sum(version_id), count(deleted_at) FROM fhir_resource",
            [],
        )
        return stored, AuditEvent.objects.filter(action__startswith="fhir.").count()

    before = state()
    do_revoke_key(key=ApiKey.objects.get(org=owner.org), actor=owner.user, request=None)
    refused = _KNOWN_KEY_REQUESTS[interaction](api, pid)
    assert refused.status_code == 401, refused.content
    assert refused.json()["issue"][0]["code"] == "login"
    assert "invalid_token" in refused["WWW-Authenticate"]
    assert pid not in refused.content.decode()
    assert state() == before
    assert known_keys.get(refused.wsgi_request.key_digest) is None
