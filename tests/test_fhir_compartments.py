"""Compartment search (`Patient/{id}/Observation`, `Patient/{id}/*`) for the five R4
compartments, over HTTP through the whole stack: membership from the official
CompartmentDefinitions, other parameters, paging and _include inside it, the
CapabilityStatement, and tenant isolation identical to a read."""

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from clinik.audit.models import AuditEvent
from clinik.fhir.search import compartments
from clinik.fhir.spec import package_path

pytestmark = pytest.mark.django_db

LOINC = "http://loinc.org"


def _ref(target: str) -> dict[str, str]:
    return {"reference": target}


RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ames"}]},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Baker"}]},
    # p3 links to p1: in p1's compartment through Patient.link (the definition's param).
    {
        "resourceType": "Patient",
        "id": "p3",
        "link": [{"other": _ref("Patient/p1"), "type": "seealso"}],
    },
    {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Chen"}]},
    # Not in p1's compartment: R4 lists Device in the Patient compartment without a
    # parameter (a device is not the patient's record).
    {"resourceType": "Device", "id": "dev1", "patient": _ref("Patient/p1")},
    {
        "resourceType": "Encounter",
        "id": "enc1",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": _ref("Patient/p1"),
        "participant": [{"individual": _ref("Practitioner/dr1")}],
    },
]
for n, (subject, code, performer) in enumerate(
    [
        ("Patient/p1", "8867-4", "Practitioner/dr1"),
        ("Patient/p1", "8310-5", None),
        ("Patient/p1", "8867-4", None),
        ("Patient/p2", "8867-4", "Practitioner/dr1"),
        ("Device/dev1", "8310-5", None),
    ],
    start=1,
):
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"obs{n}",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": _ref(subject),
    }
    if performer:
        observation["performer"] = [_ref(performer)]
    if n == 3:
        observation["encounter"] = _ref("Encounter/enc1")
    RESOURCES.append(observation)
# p2 performs an observation on p1: the Patient compartment's Observation params are
# subject and performer, so obs6 is in both p1's and p2's compartments.
RESOURCES.append(
    {
        "resourceType": "Observation",
        "id": "obs6",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8310-5"}]},
        "subject": _ref("Patient/p1"),
        "performer": [_ref("Patient/p2")],
    }
)
RESOURCES.append(
    {
        "resourceType": "Condition",
        "id": "cond1",
        "subject": _ref("Patient/p1"),
        "asserter": _ref("Practitioner/dr1"),
    }
)
RESOURCES.append(
    {
        "resourceType": "RelatedPerson",
        "id": "rp1",
        "patient": _ref("Patient/p1"),
    }
)
RESOURCES.append(
    {
        "resourceType": "Observation",
        "id": "obs7",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8310-5"}]},
        "subject": _ref("Patient/p2"),
        "performer": [_ref("RelatedPerson/rp1")],
    }
)


@pytest.fixture
def stored(api) -> Any:
    for resource in RESOURCES:
        response = api.put(f"{resource['resourceType']}/{resource['id']}", resource)
        assert response.status_code == 201, response.content
    return api


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        "/".join(e["fullUrl"].rsplit("/", 2)[1:])
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def _follow(api, url: str) -> Any:
    parts = urlsplit(url)
    return api.get(f"{parts.path.removeprefix('/fhir/R4/')}?{parts.query}")


def test_membership_comes_from_the_official_definitions() -> None:
    definitions = compartments.definitions()
    assert sorted(definitions) == [
        "Device",
        "Encounter",
        "Patient",
        "Practitioner",
        "RelatedPerson",
    ]
    for code, file_name in compartments.DEFINITION_FILES.items():
        official = json.loads((package_path() / file_name).read_text(encoding="utf-8"))
        listed = {r["code"] for r in official["resource"] if r.get("param")}
        assert set(definitions[code].types) == listed, code
        assert definitions[code].skipped == ()  # every parameter named is searchable
    patient = definitions["Patient"]
    assert patient.members["Observation"] == ("subject", "performer")
    assert patient.members["Patient"] == ("link",)
    assert "Patient" not in patient.focal_member  # R4 lists Patient by `link` only
    assert definitions["Encounter"].focal_member == {"Encounter"}


def test_patient_compartment_of_one_type(stored) -> None:
    response = stored.get("Patient/p1/Observation")
    assert response.status_code == 200, response.content
    bundle = response.json()
    assert bundle["type"] == "searchset" and bundle["total"] == 4
    assert _ids(bundle) == [f"Observation/obs{n}" for n in (1, 2, 3, 6)]
    assert stored.get("Patient/p2/Observation").json()["total"] == 3  # obs4, obs6, obs7
    assert _ids(stored.get("Patient/p2/Observation").json()) == [
        "Observation/obs4",
        "Observation/obs6",
        "Observation/obs7",
    ]
    assert _ids(stored.get("Patient/p1/Patient").json()) == ["Patient/p3"]


def test_other_parameters_narrow_the_compartment(stored) -> None:
    bundle = stored.get(f"Patient/p1/Observation?code={LOINC}|8867-4").json()
    assert _ids(bundle) == ["Observation/obs1", "Observation/obs3"]
    bundle = stored.get("Patient/p1/Observation?performer=Practitioner/dr1").json()
    assert _ids(bundle) == ["Observation/obs1"]
    bundle = stored.get("Patient/p1/Observation?_sort=-_id&_count=2").json()
    assert _ids(bundle) == ["Observation/obs6", "Observation/obs3"]


def test_paging_stays_inside_the_compartment(stored) -> None:
    bundle = stored.get("Patient/p1/Observation?_count=2").json()
    seen = _ids(bundle)
    links = {x["relation"]: x["url"] for x in bundle["link"]}
    assert links["self"] == "http://testserver/fhir/R4/Patient/p1/Observation?_count=2"
    while next_link := {x["relation"]: x["url"] for x in bundle["link"]}.get("next"):
        assert urlsplit(next_link).path == "/fhir/R4/Patient/p1/Observation"
        bundle = _follow(stored, next_link).json()
        seen += _ids(bundle)
    assert seen == [f"Observation/obs{n}" for n in (1, 2, 3, 6)]


def test_include_inside_the_compartment(stored) -> None:
    bundle = stored.get(
        f"Patient/p1/Observation?code={LOINC}|8867-4&_include=Observation:performer"
    ).json()
    assert _ids(bundle) == ["Observation/obs1", "Observation/obs3"]
    assert _ids(bundle, "include") == ["Practitioner/dr1"]


def test_every_type_of_the_compartment(stored) -> None:
    bundle = stored.get("Patient/p1/*?_count=50").json()
    assert _ids(bundle) == [
        "Condition/cond1",
        "Encounter/enc1",
        "Observation/obs1",
        "Observation/obs2",
        "Observation/obs3",
        "Observation/obs6",
        "Patient/p3",
        "RelatedPerson/rp1",
    ]
    narrowed = stored.get("Patient/p1/*?_type=Condition,RelatedPerson").json()
    assert _ids(narrowed) == ["Condition/cond1", "RelatedPerson/rp1"]
    paged = stored.get("Patient/p1/*?_count=4").json()
    assert paged["total"] == 8 and len(_ids(paged)) == 4


def test_the_other_compartments(stored) -> None:
    # Encounter: {def} puts the encounter itself in; Observation by `encounter`.
    assert _ids(stored.get("Encounter/enc1/*").json()) == [
        "Encounter/enc1",
        "Observation/obs3",
    ]
    assert _ids(stored.get("Practitioner/dr1/*").json()) == [
        "Condition/cond1",
        "Encounter/enc1",
        "Observation/obs1",
        "Observation/obs4",
        "Practitioner/dr1",
    ]
    assert _ids(stored.get("Device/dev1/Observation").json()) == ["Observation/obs5"]
    assert _ids(stored.get("RelatedPerson/rp1/*").json()) == [
        "Observation/obs7",
        "RelatedPerson/rp1",
    ]


def test_types_outside_a_compartment_and_non_compartments(stored) -> None:
    response = stored.get("Patient/p1/Organization")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"
    response = stored.get("Observation/obs1/Patient")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    assert stored.get("Patient/p1/Device").status_code == 400
    response = stored.get("Patient/p1/*?_type=Organization")
    assert response.status_code == 400


def test_a_deleted_focal_resource_is_gone_as_for_a_read(stored) -> None:
    assert stored.delete("Patient/p2").status_code == 204
    assert stored.get("Patient/p2").status_code == 410
    response = stored.get("Patient/p2/Observation")
    assert response.status_code == 410
    assert response.json()["resourceType"] == "OperationOutcome"


def test_another_tenants_compartment_is_exactly_an_unknown_id(stored, outsider_api) -> None:
    # The outsider stores a patient with the same id and its own observation.
    own = {"resourceType": "Patient", "id": "p9"}
    assert outsider_api.put("Patient/p9", own).status_code == 201
    mine = {**RESOURCES[6], "id": "mine", "subject": _ref("Patient/p9")}
    assert outsider_api.put("Observation/mine", mine).status_code == 201
    for path in ("Patient/p1/Observation", "Patient/p1/*", "Practitioner/dr1/*"):
        theirs = outsider_api.get(path)
        unknown = outsider_api.get(path.replace("/p1/", "/nobody/").replace("dr1", "nobody"))
        read = outsider_api.get(path.rsplit("/", 1)[0])
        assert theirs.status_code == unknown.status_code == read.status_code == 404
        assert theirs.json()["issue"][0]["code"] == unknown.json()["issue"][0]["code"]
    # Their own patient's compartment holds only their own data, and the owner's
    # resources referencing a same-named id stay out of it.
    assert _ids(outsider_api.get("Patient/p9/*").json()) == ["Observation/mine"]
    assert stored.get("Patient/p9/Observation").status_code == 404


def test_compartment_searches_are_audited_with_the_focal_resource(stored) -> None:
    stored.get("Patient/p1/Observation")
    stored.get("Patient/nobody/Observation")
    rows = list(
        AuditEvent.objects.filter(action="fhir.search", target_type="Patient")
        .order_by("id")
        .values_list("target_id", "outcome")
    )
    assert rows == [("p1", "success"), ("nobody", "failure")]


def test_capability_statement_declares_the_compartments(client) -> None:
    statement = client.get("/fhir/R4/metadata").json()
    assert statement["rest"][0]["compartment"] == [
        "http://hl7.org/fhir/CompartmentDefinition/device",
        "http://hl7.org/fhir/CompartmentDefinition/encounter",
        "http://hl7.org/fhir/CompartmentDefinition/patient",
        "http://hl7.org/fhir/CompartmentDefinition/practitioner",
        "http://hl7.org/fhir/CompartmentDefinition/relatedPerson",
    ]


# --- POST [compartment]/[id]/[type]/_search and [compartment]/[id]/_search ------------
# (R4 http.html, search: the compartment variants have a form-body POST form too)

FORM = "application/x-www-form-urlencoded"


def _post(api, path: str, body: str, **kw: Any) -> Any:
    return api.post(path, body, content_type=FORM, **kw)


def test_compartment_search_by_post_answers_as_get(stored) -> None:
    for get, post, body in [
        (
            f"Patient/p1/Observation?code={LOINC}|8867-4",
            "Patient/p1/Observation/_search",
            f"code={LOINC}|8867-4",
        ),
        (
            "Patient/p1/Observation?_sort=-_id&_count=2",
            "Patient/p1/Observation/_search",
            "_sort=-_id&_count=2",
        ),
        ("Patient/p1/*?_count=50", "Patient/p1/_search", "_count=50"),
        (
            "Patient/p1/*?_type=Condition,RelatedPerson",
            "Patient/p1/_search",
            "_type=Condition,RelatedPerson",
        ),
        ("Encounter/enc1/*", "Encounter/enc1/_search", ""),
    ]:
        expected = stored.get(get)
        response = _post(stored, post, body)
        assert response.status_code == expected.status_code == 200, response.content
        bundle = response.json()
        assert _ids(bundle) == _ids(expected.json()) != []
        assert bundle["total"] == expected.json()["total"]
        # The links are the GET form of the same search.
        assert bundle["link"][0]["url"] == expected.json()["link"][0]["url"]
    # Parameters in the query string and in the body both count.
    both = _post(stored, "Patient/p1/Observation/_search?_count=1", f"code={LOINC}|8867-4")
    assert _ids(both.json()) == ["Observation/obs1"]
    assert both.json()["total"] == 2


def test_compartment_search_by_post_refuses_what_get_refuses(stored, owner) -> None:
    from tests.conftest import _api_for

    # Not a form body: 415, for either path.
    for path in ("Patient/p1/Observation/_search", "Patient/p1/_search"):
        response = stored.post(path, {"code": "x"})
        assert response.status_code == 415
        assert response.json()["resourceType"] == "OperationOutcome"
    # The same OperationOutcomes as the GET form.
    for get, post, body in [
        ("Patient/nobody/Observation", "Patient/nobody/Observation/_search", ""),
        ("Observation/obs1/*", "Observation/obs1/_search", ""),
        ("Patient/p1/Device", "Patient/p1/Device/_search", ""),
        ("Patient/p1/*?_type=Device", "Patient/p1/_search", "_type=Device"),
        ("Patient/p1/Observation?date=notadate", "Patient/p1/Observation/_search", "date=notadate"),
        ("Patient/p1/Observation?_count=x", "Patient/p1/Observation/_search", "_count=x"),
    ]:
        expected, response = stored.get(get), _post(stored, post, body)
        assert response.status_code == expected.status_code != 200, (post, body)
        assert response.json()["issue"] == expected.json()["issue"], (post, body)
    # Strict handling refuses an unknown parameter, as for GET.
    strict = {"Prefer": "handling=strict"}
    response = _post(stored, "Patient/p1/Observation/_search", "nonsense=1", headers=strict)
    assert response.status_code == 400
    # Not a FHIR path, wrong methods.
    assert _post(stored, "Patient/p1/Nothing/_search", "").status_code == 404
    assert _post(stored, "Patient/p_1/_search", "").status_code == 400  # not an id
    for method in ("GET", "PUT", "DELETE"):
        for path in ("Patient/p1/Observation/_search", "Patient/p1/_search"):
            assert stored.send(method, path, "", content_type=FORM).status_code == 405
    # A search reads: a read-only key may POST it.
    reader = _api_for(owner, scopes="read")
    assert _post(reader, "Patient/p1/_search", "_count=1").status_code == 200


def test_compartment_search_by_post_of_another_tenant_is_an_unknown_id(
    stored, outsider_api
) -> None:
    for path in ("Patient/p1/Observation/_search", "Patient/p1/_search"):
        theirs = _post(outsider_api, path, "")
        unknown = _post(outsider_api, path.replace("/p1/", "/nobody/"), "")
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["issue"][0]["code"] == unknown.json()["issue"][0]["code"]
        assert "entry" not in theirs.json()


def test_compartment_search_by_post_is_audited_and_logged_without_values(stored) -> None:
    from clinik.usage import requestlog, store
    from clinik.usage.models import RequestLog

    requestlog.buffer.clear()
    requestlog.redis_client().delete(store.BUFFER_KEY, store.DRAINING_KEY, store.TOKEN_KEY)
    _post(
        stored,
        "Patient/p1/Observation/_search",
        "code=Secretcode",
    )
    _post(
        stored,
        "Patient/nobody/_search?family=Secretname",
        "code=Secretcode",
    )
    rows = list(
        AuditEvent.objects.filter(action="fhir.search", target_type="Patient")
        .order_by("id")
        .values_list("target_id", "outcome")
    )
    assert rows == [("p1", "success"), ("nobody", "failure")]
    requestlog.flush()
    store.drain()
    logged = {r.route: r for r in RequestLog.objects.all()}
    assert logged["/fhir/R4/Patient/{id}/Observation/_search"].status == 200
    assert logged["/fhir/R4/Patient/{id}/_search"].status == 404
    for record in logged.values():
        values = json.dumps({f.name: str(getattr(record, f.name)) for f in record._meta.fields})
        assert "Secret" not in values and "nobody" not in values
