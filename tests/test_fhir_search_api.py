"""FHIR search over HTTP, through the whole middleware stack: GET and POST _search,
system-level search, the searchset Bundle (links, total, outcome entries,
_summary/_elements), handling=strict, audit, and the CapabilityStatement."""

from typing import Any
from urllib.parse import urlsplit

import pytest

from clinik.audit.models import AuditEvent
from tests.search_data import PATIENTS, RESOURCES

pytestmark = pytest.mark.django_db


@pytest.fixture
def stored(api) -> Any:
    for resource in RESOURCES:
        response = api.put(f"{resource['resourceType']}/{resource['id']}", resource)
        assert response.status_code == 201, response.content
    return api


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        e["fullUrl"].rsplit("/", 1)[1]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def _follow(api, url: str) -> Any:
    parts = urlsplit(url)
    assert parts.path.startswith("/fhir/R4/")
    return api.get(f"{parts.path.removeprefix('/fhir/R4/')}?{parts.query}")


def test_get_search_answers_a_searchset_bundle(stored) -> None:
    response = stored.get("Patient?family=muller&_sort=_id")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 2
    assert _ids(bundle) == ["pat-muller", "pat-muller2"]
    entry = bundle["entry"][0]
    assert entry["fullUrl"] == "http://testserver/fhir/R4/Patient/pat-muller"
    assert entry["resource"]["name"][0]["family"] == "Müller"
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links == {"self": "http://testserver/fhir/R4/Patient?family=muller&_sort=_id"}


def test_next_and_previous_links_walk_the_pages(stored) -> None:
    bundle = stored.get("Patient?_count=2").json()
    seen = _ids(bundle)
    pages = [bundle]
    while next_link := {x["relation"]: x["url"] for x in bundle["link"]}.get("next"):
        bundle = _follow(stored, next_link).json()
        assert bundle["total"] == 6
        seen += _ids(bundle)
        pages.append(bundle)
    assert seen == sorted(PATIENTS) and len(pages) == 3
    previous = {x["relation"]: x["url"] for x in pages[-1]["link"]}["previous"]
    assert _ids(_follow(stored, previous).json()) == sorted(PATIENTS)[2:4]


def test_post_search_reads_form_parameters(stored) -> None:
    response = stored.post(
        "Patient/_search",
        "family=chalmers&gender=male",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    bundle = response.json()
    assert _ids(bundle) == ["pat-chalmers"]
    assert bundle["link"][0]["url"].startswith("http://testserver/fhir/R4/Patient?")


def test_post_search_needs_a_form_body(stored) -> None:
    response = stored.post("Patient/_search", {"family": "chalmers"})
    assert response.status_code == 415
    assert response.json()["resourceType"] == "OperationOutcome"


def test_post_search_works_with_a_read_only_key(owner) -> None:
    from tests.conftest import _api_for

    reader = _api_for(owner, scopes="read")
    response = reader.post(
        "Patient/_search", "family=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 200


def test_system_search_with_type(stored) -> None:
    bundle = stored.get("?_type=Patient,Practitioner&name=smith").json()
    assert sorted(_ids(bundle)) == ["pat-smith", "pr-smith"]
    every = stored.get("?_id=o1,vs1").json()
    assert sorted(_ids(every)) == ["o1", "vs1"]


def test_include_and_revinclude_entries_have_include_mode(stored) -> None:
    bundle = stored.get(
        "Observation?_id=o1&_include=Observation:subject&_revinclude=Encounter:subject"
    ).json()
    assert _ids(bundle) == ["o1"]
    assert sorted(_ids(bundle, "include")) == ["pat-chalmers"]
    patients = stored.get("Patient?_id=pat-chalmers&_revinclude=Encounter:subject").json()
    assert _ids(patients, "include") == ["e1"]
    assert patients["total"] == 1  # included resources do not count


def test_unknown_parameters_are_reported_in_an_outcome_entry(stored) -> None:
    bundle = stored.get("Patient?family=chalmers&secret-thing=abc").json()
    assert _ids(bundle) == ["pat-chalmers"]
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1
    issue = outcome[0]["resource"]["issue"][0]
    assert issue["severity"] == "warning"
    assert "secret-thing" in issue["diagnostics"] and "abc" not in issue["diagnostics"]
    lenient = stored.get("Patient?foo=1", headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200


def test_strict_handling_refuses_unknown_parameters(stored) -> None:
    response = stored.get("Patient?foo=1", headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "not-supported"
    fine = stored.get("Patient?family=x", headers={"Prefer": "handling=strict"})
    assert fine.status_code == 200


def test_malformed_values_are_400_and_not_echoed(stored) -> None:
    response = stored.get("Patient?birthdate=1974-13-99xyz")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    assert b"1974-13-99xyz" not in response.content


def test_unknown_resource_type_is_404(stored) -> None:
    assert stored.get("Patientx?name=x").status_code == 404


def test_summary_count(stored) -> None:
    bundle = stored.get("Observation?code=8480-6&_summary=count").json()
    assert bundle["total"] == 3 and "entry" not in bundle


def test_summary_true_keeps_summary_elements_and_marks_the_subset(stored) -> None:
    bundle = stored.get("Patient?_id=pat-chalmers&_summary=true").json()
    resource = bundle["entry"][0]["resource"]
    assert resource["name"] and resource["gender"] == "male" and resource["birthDate"]
    assert {"system": "urn:tags", "code": "vip"} in resource["meta"]["tag"]
    assert resource["meta"]["tag"][-1]["code"] == "SUBSETTED"
    assert "generalPractitioner" not in resource  # not a summary element of Patient


def test_summary_text_data_and_elements(stored) -> None:
    observed = stored.get("Observation?_id=o1&_summary=text").json()["entry"][0]["resource"]
    assert set(observed) == {"resourceType", "id", "meta", "status", "code"}  # + mandatory
    data = stored.get("Observation?_id=o1&_summary=data").json()["entry"][0]["resource"]
    assert "text" not in data and data["valueQuantity"]["value"] == 120
    elements = stored.get("Patient?_id=pat-chalmers&_elements=name,gender").json()
    resource = elements["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "name", "gender"}


def test_total_none_and_format_parameter(stored) -> None:
    bundle = stored.get("Patient?_total=none&_format=json").json()
    assert "total" not in bundle
    assert not [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]


def test_writes_through_the_api_are_searchable_at_once(api) -> None:
    created = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Fresh"}]})
    pid = created.json()["id"]
    assert _ids(api.get("Patient?family=fresh").json()) == [pid]
    api.patch(f"Patient/{pid}", [{"op": "replace", "path": "/name/0/family", "value": "Patched"}])
    assert _ids(api.get("Patient?family=fresh").json()) == []
    assert _ids(api.get("Patient?family=patched").json()) == [pid]
    assert api.delete(f"Patient/{pid}").status_code == 204
    assert api.get("Patient?family=patched").json()["total"] == 0


def test_each_search_writes_one_audit_record_without_values(stored) -> None:
    before = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    stored.get("Patient?family=chalmers&identifier=urn:mrn|12345")
    stored.post(
        "Patient/_search", "family=chalmers", content_type="application/x-www-form-urlencoded"
    )
    stored.get("?_type=Patient&family=chalmers")
    stored.get("Patient?birthdate=notadate")
    events = list(AuditEvent.objects.filter(action="fhir.search", pk__gt=before).order_by("pk"))
    assert [(e.target_type, e.outcome) for e in events] == [
        ("Patient", "success"),
        ("Patient", "success"),
        ("", "success"),
        ("Patient", "failure"),
    ]
    for event in events:
        text = " ".join(str(v) for v in vars(event).values())
        assert "chalmers" not in text.lower() and "12345" not in text and "notadate" not in text


def test_capability_statement_lists_real_search_parameters(client) -> None:
    statement = client.get("/fhir/R4/metadata").json()
    rest = statement["rest"][0]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    params = {p["name"]: p for p in patient["searchParam"]}
    assert {"family", "birthdate", "identifier", "_id", "_lastUpdated", "_tag"} <= set(params)
    assert params["family"]["type"] == "string"
    assert params["family"]["definition"] == "http://hl7.org/fhir/SearchParameter/individual-family"
    assert "_text" not in params and "_content" not in params  # not supported: not listed
    assert {"code": "search-type"} in patient["interaction"]
    assert "Patient:organization" in patient["searchInclude"]
    assert "Observation:subject" in patient["searchRevInclude"]
    assert {"code": "search-system"} in rest["interaction"]
    observation = next(r for r in rest["resource"] if r["type"] == "Observation")
    types = {p["name"]: p["type"] for p in observation["searchParam"]}
    assert types["code-value-quantity"] == "composite" and types["value-quantity"] == "quantity"


def test_system_search_by_post_answers_as_get(stored, owner) -> None:
    from tests.conftest import _api_for

    form = "application/x-www-form-urlencoded"
    for qs in ("_type=Patient,Practitioner&name=smith", "_id=o1,vs1", "_type=Patient&_count=2"):
        expected = stored.get(f"?{qs}").json()
        response = stored.post("_search", qs, content_type=form)
        assert response.status_code == 200, response.content
        assert _ids(response.json()) == _ids(expected) != []
        assert response.json()["link"][0]["url"] == expected["link"][0]["url"]
    for qs in ("_type=Nothing", "_type=Patient,Practitioner&birthdate=x", "_count=x"):
        expected, response = stored.get(f"?{qs}"), stored.post("_search", qs, content_type=form)
        assert response.status_code == expected.status_code == 400, qs
        assert response.json()["issue"] == expected.json()["issue"]
    assert stored.post("_search", {"_type": "Patient"}).status_code == 415
    for method in ("GET", "PUT", "DELETE"):
        assert stored.send(method, "_search", "", content_type=form).status_code == 405
    reader = _api_for(owner, scopes="read")
    assert reader.post("_search", "_type=Patient", content_type=form).status_code == 200
