"""clinik.fhir.validation against the R4 examples and hand-made invalid resources."""

import copy
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from clinik.fhir import spec
from clinik.fhir.validation import MAX_DEPTH, MAX_ISSUES, Issue, validate_resource

Resource = dict[str, Any]

# Examples shipped in hl7.fhir.r4.examples@4.0.1 that are genuinely not valid R4; the
# official validator reports the same problems.
KNOWN_INVALID_EXAMPLES: dict[str, str] = {
    "ImplementationGuide-fhir.json": "lacks the required name and status",
    "Questionnaire-qs1.json": "32 nested items lack the required linkId",
    "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json": (
        "its id has 67 characters; an id has at most 64"
    ),
    **{
        f"SearchParameter-{kind}-extensions-{type_}-{code}.json": "lacks the required base"
        for kind, type_ in (("codesystem", "CodeSystem"), ("valueset", "ValueSet"))
        for code in ("author", "effective", "end", "keyword", "workflow")
    },
}


def test_resource_types_are_the_concrete_r4_resources() -> None:
    assert len(spec.RESOURCE_TYPES) == 146
    assert {"Patient", "Observation", "Bundle", "Parameters", "Binary"} <= spec.RESOURCE_TYPES
    assert not {"Resource", "DomainResource", "MetadataResource"} & spec.RESOURCE_TYPES
    assert not {"HumanName", "Extension", "BackboneElement", "string"} & spec.RESOURCE_TYPES


def test_element_table_describes_elements() -> None:
    birth_date = spec.element_at("Patient.birthDate")
    assert birth_date is not None
    assert (birth_date.type, birth_date.min, birth_date.many) == ("date", 0, False)
    family = spec.element_at("Patient.contact.name.family")
    assert family is not None and family.type == "string"
    value = spec.element_at("Observation.valueQuantity")
    assert value is not None and (value.type, value.choice) == ("Quantity", "value")
    assert spec.element_at("Observation.value") is None
    assert spec.element_at("Patient.nope") is None
    assert spec.VALUE_SETS["http://hl7.org/fhir/ValueSet/administrative-gender"] == {
        "male",
        "female",
        "other",
        "unknown",
    }


def test_every_r4_example_is_valid_but_the_known_broken_ones() -> None:
    invalid: dict[str, list[Issue]] = {}
    total = 0
    for path, resource in spec.example_resources():
        total += 1
        issues = validate_resource(resource, resource_type=path.name.split("-", 1)[0])
        if issues:
            invalid[path.name] = issues
    report = {name: [(i.code, i.expression) for i in issues] for name, issues in invalid.items()}
    assert set(invalid) == set(KNOWN_INVALID_EXAMPLES), json.dumps(report, indent=1)
    assert total > 5000
    assert 1 - len(invalid) / total >= 0.99


def test_clinical_examples_skip_conformance_resources() -> None:
    files = spec.example_files(include_conformance=False)
    names = {path.name for path in files}
    assert "Patient-example.json" in names
    assert "Bundle-bundle-transaction.json" in names
    assert not any(name.startswith(("StructureDefinition-", "ValueSet-")) for name in names)
    assert "Bundle-searchParams.json" not in names
    assert (spec.package_path() / "Bundle-searchParams.json").is_file()


def patient() -> Resource:
    return {
        "resourceType": "Patient",
        "id": "pat-1",
        "meta": {"lastUpdated": "2024-05-01T10:00:00Z"},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">P</div>'},
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "active": True,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "multipleBirthInteger": 2,
        "contact": [{"name": {"family": "du Marché"}, "gender": "female"}],
        "managingOrganization": {"reference": "Organization/1"},
    }


def observation() -> Resource:
    return {
        "resourceType": "Observation",
        "id": "obs-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/pat-1"},
        "effectiveDateTime": "2024-05-01T09:30:00+02:00",
        "issued": "2024-05-01T09:35:00.123Z",
        "valueQuantity": {
            "value": 72.5,
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
    }


def test_the_base_resources_are_valid() -> None:
    assert validate_resource(patient()) == []
    assert validate_resource(observation(), resource_type="Observation", resource_id="obs-1") == []


def with_patient(change: Callable[[Resource], object]) -> Resource:
    resource = patient()
    change(resource)
    return resource


def with_observation(change: Callable[[Resource], object]) -> Resource:
    resource = observation()
    change(resource)
    return resource


def without(resource: Resource, *keys: str) -> Resource:
    for key in keys:
        del resource[key]
    return resource


def deep_extension(levels: int) -> Resource:
    extension: Resource = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(levels):
        extension = {"url": "http://example.org/branch", "extension": [extension]}
    return with_patient(lambda r: r.update(extension=[extension]))


def case(
    name: str,
    body: object,
    code: str,
    expression: str,
    *,
    url_type: str | None = None,
    url_id: str | None = None,
) -> Any:
    return pytest.param(body, url_type, url_id, code, expression, id=name)


def extension(**value: object) -> list[Resource]:
    return [{"url": "http://example.org/x", **value}]


def endpoint() -> Resource:
    return {
        "resourceType": "Endpoint",
        "id": "e",
        "status": "active",
        "connectionType": {"code": "hl7-fhir-rest"},
        "payloadType": [{"text": "any"}],
        "address": "http://example.org/fhir",
    }


def questionnaire(child: Resource) -> Resource:
    group = {"linkId": "1", "type": "group", "item": [child]}
    return {"resourceType": "Questionnaire", "status": "draft", "item": [group]}


def bundle_of(resource: Resource) -> Resource:
    entry = {"fullUrl": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "resource": resource}
    return {"resourceType": "Bundle", "type": "collection", "entry": [entry]}


DATA_ABSENT = {
    "extension": [
        {
            "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
            "valueCode": "unknown",
        }
    ]
}

# fmt: off
INVALID = [
    # The body and its resourceType
    case("body-is-array", [patient()], "structure", ""),
    case("body-is-string", "Patient", "structure", ""),
    case("missing-resourceType", without(patient(), "resourceType"), "required", "resourceType"),
    case("unknown-resourceType", {**patient(), "resourceType": "Patientt"}, "code-invalid",
         "resourceType"),
    case("abstract-resourceType", {**patient(), "resourceType": "DomainResource"},
         "code-invalid", "resourceType"),
    case("resourceType-not-string", {**patient(), "resourceType": 7}, "code-invalid",
         "resourceType"),
    case("resourceType-differs-from-url", observation(), "invalid", "resourceType",
         url_type="Patient"),
    # The id
    case("id-differs-from-url", patient(), "invalid", "Patient.id", url_type="Patient",
         url_id="pat-2"),
    case("id-missing-on-update", without(patient(), "id"), "required", "Patient.id",
         url_type="Patient", url_id="pat-1"),
    case("id-bad-character", {**patient(), "id": "pat_1"}, "value", "Patient.id"),
    case("id-too-long", {**patient(), "id": "a" * 65}, "value", "Patient.id"),
    # Unknown elements
    case("unknown-element", {**patient(), "nickname": "Jim"}, "structure", "Patient.nickname"),
    case("unknown-element-in-datatype", with_patient(lambda r: r["name"][0].update(nick="J")),
         "structure", "Patient.name[0].nick"),
    case("unknown-element-in-backbone", with_patient(lambda r: r["contact"][0].update(age=3)),
         "structure", "Patient.contact[0].age"),
    case("resourceType-inside-datatype",
         with_patient(lambda r: r["name"][0].update(resourceType="HumanName")), "structure",
         "Patient.name[0].resourceType"),
    case("reference-unknown-element",
         with_patient(lambda r: r["managingOrganization"].update(ref="Organization/1")),
         "structure", "Patient.managingOrganization.ref"),
    case("extension-of-complex-element", {**patient(), "_name": [{"id": "n"}]}, "structure",
         "Patient._name"),
    case("unknown-element-in-primitive-extension", {**patient(), "_birthDate": {"foo": "x"}},
         "structure", "Patient.birthDate.foo"),
    # Primitive types and formats
    case("date-bad-month", {**patient(), "birthDate": "1974-13-01"}, "value",
         "Patient.birthDate"),
    case("date-not-on-calendar", {**patient(), "birthDate": "1974-02-30"}, "value",
         "Patient.birthDate"),
    case("date-with-time", {**patient(), "birthDate": "1974-12-25T10:00:00Z"}, "value",
         "Patient.birthDate"),
    case("date-as-number", {**patient(), "birthDate": 1974}, "structure", "Patient.birthDate"),
    case("dateTime-without-zone", {**observation(), "effectiveDateTime": "2024-05-01T09:30:00"},
         "value", "Observation.effectiveDateTime"),
    case("instant-without-time", {**observation(), "issued": "2024-05-01"}, "value",
         "Observation.issued"),
    case("meta-lastUpdated-bad", with_patient(lambda r: r["meta"].update(lastUpdated="May")),
         "value", "Patient.meta.lastUpdated"),
    case("boolean-as-string", {**patient(), "active": "true"}, "structure", "Patient.active"),
    case("boolean-as-number", {**patient(), "active": 1}, "structure", "Patient.active"),
    case("integer-as-float", {**patient(), "multipleBirthInteger": 1.5}, "structure",
         "Patient.multipleBirthInteger"),
    case("integer-as-boolean", {**patient(), "multipleBirthInteger": True}, "structure",
         "Patient.multipleBirthInteger"),
    case("integer-out-of-32-bits", {**patient(), "multipleBirthInteger": 2**31}, "value",
         "Patient.multipleBirthInteger"),
    case("positiveInt-zero",
         with_patient(lambda r: r["identifier"][0].update(extension=extension(valuePositiveInt=0))),
         "value", "Patient.identifier[0].extension[0].valuePositiveInt"),
    case("unsignedInt-negative", {**patient(), "photo": [{"size": -1}]}, "value",
         "Patient.photo[0].size"),
    case("decimal-as-string", with_observation(lambda r: r["valueQuantity"].update(value="72.5")),
         "structure", "Observation.valueQuantity.value"),
    case("decimal-not-finite",
         with_observation(lambda r: r["valueQuantity"].update(value=float("nan"))), "value",
         "Observation.valueQuantity.value"),
    case("code-with-leading-space", {**observation(), "status": " final"}, "value",
         "Observation.status"),
    case("uri-with-space", {**patient(), "implicitRules": "http://example.org/a rule"}, "value",
         "Patient.implicitRules"),
    case("oid-malformed", {**patient(), "extension": extension(valueOid="1.2")}, "value",
         "Patient.extension[0].valueOid"),
    case("uuid-uppercase",
         {**patient(), "extension": extension(
             valueUuid="urn:uuid:C757873D-EC9A-4326-A141-556F43239520")},
         "value", "Patient.extension[0].valueUuid"),
    case("time-out-of-range", {**patient(), "extension": extension(valueTime="25:00:00")},
         "value", "Patient.extension[0].valueTime"),
    case("base64-truncated", {**patient(), "photo": [{"data": "iVBOR"}]}, "value",
         "Patient.photo[0].data"),
    case("string-with-control-character",
         with_patient(lambda r: r["name"][0].update(family="Chal\x00mers")), "value",
         "Patient.name[0].family"),
    case("empty-string", with_patient(lambda r: r["name"][0].update(family="")), "value",
         "Patient.name[0].family"),
    case("narrative-div-not-div", with_patient(lambda r: r["text"].update(div="<p>P</p>")),
         "value", "Patient.text.div"),
    # Required bindings
    case("code-outside-required-binding", {**patient(), "gender": "mal"}, "code-invalid",
         "Patient.gender"),
    case("code-outside-binding-in-backbone",
         with_patient(lambda r: r["contact"][0].update(gender="F")), "code-invalid",
         "Patient.contact[0].gender"),
    # Cardinality: arrays, single values, required elements
    case("array-element-given-once", {**patient(), "name": {"family": "Chalmers"}}, "structure",
         "Patient.name"),
    case("primitive-array-given-once", with_patient(lambda r: r["name"][0].update(given="P")),
         "structure", "Patient.name[0].given"),
    case("single-element-given-array", {**patient(), "gender": ["male"]}, "structure",
         "Patient.gender"),
    case("single-datatype-given-array",
         {**patient(), "managingOrganization": [{"reference": "Organization/1"}]}, "structure",
         "Patient.managingOrganization"),
    case("missing-required-code", without(observation(), "status"), "required",
         "Observation.status"),
    case("missing-required-datatype", without(observation(), "code"), "required",
         "Observation.code"),
    case("missing-required-in-backbone", {**patient(), "link": [{"type": "seealso"}]},
         "required", "Patient.link[0].other"),
    case("extension-without-url", {**patient(), "extension": [{"valueString": "x"}]},
         "required", "Patient.extension[0].url"),
    case("narrative-without-status", with_patient(lambda r: r["text"].pop("status")),
         "required", "Patient.text.status"),
    case("missing-required-choice",
         {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
          "subject": {"reference": "Patient/pat-1"}},
         "required", "MedicationRequest.medication[x]"),
    # Choice elements
    case("unknown-choice-type", {**without(observation(), "valueQuantity"), "valueFoo": "x"},
         "structure", "Observation.valueFoo"),
    case("two-choice-types", {**observation(), "valueString": "heavy"}, "structure",
         "Observation.valueString"),
    case("choice-types-via-primitive-extension", {**observation(), "_valueBoolean": DATA_ABSENT},
         "structure", "Observation.valueBoolean"),
    case("wrong-type-in-choice", {**without(observation(), "valueQuantity"), "valueInteger": "7"},
         "structure", "Observation.valueInteger"),
    case("bad-value-in-extension-choice",
         {**patient(), "extension": extension(valueDateTime="tomorrow")}, "value",
         "Patient.extension[0].valueDateTime"),
    case("nested-extension-unknown-choice",
         {**patient(), "extension": extension(extension=extension(valueFoo=1))}, "structure",
         "Patient.extension[0].extension[0].valueFoo"),
    case("codeable-concept-coding-not-array",
         with_observation(lambda r: r["code"].update(coding={"code": "29463-7"})), "structure",
         "Observation.code.coding"),
    # Empty values and nulls
    case("empty-object", with_patient(lambda r: r["name"].__setitem__(0, {})), "structure",
         "Patient.name[0]"),
    case("empty-array", {**patient(), "identifier": []}, "structure", "Patient.identifier"),
    case("empty-primitive-extension", {**patient(), "_birthDate": {}}, "structure",
         "Patient.birthDate"),
    case("null-single", {**patient(), "birthDate": None}, "structure", "Patient.birthDate"),
    case("null-datatype", {**patient(), "managingOrganization": None}, "structure",
         "Patient.managingOrganization"),
    case("null-in-datatype-array", {**patient(), "identifier": [None]}, "structure",
         "Patient.identifier[0]"),
    case("null-in-array-without-extension",
         with_patient(lambda r: r["name"][0].update(given=["Peter", None])), "structure",
         "Patient.name[0].given[1]"),
    case("null-extension-without-value", {**patient(), "name": [{"family": "C", "_given": [None]}]},
         "structure", "Patient.name[0].given[0]"),
    case("primitive-extension-array-misaligned",
         with_patient(lambda r: r["name"][0].update(_given=[{"id": "g"}])), "structure",
         "Patient.name[0].given"),
    case("primitive-extension-both-null",
         with_patient(lambda r: r["name"][0].update(given=["P", None], _given=[{"id": "g"}, None])),
         "structure", "Patient.name[0].given[1]"),
    # Contained, bundled and nested resources
    case("contained-without-id",
         {**patient(), "contained": [{"resourceType": "Organization", "name": "Acme"}]},
         "required", "Patient.contained[0].id"),
    case("contained-contains",
         {**patient(), "contained": [{"resourceType": "Organization", "id": "o",
                                      "contained": [endpoint()]}]},
         "structure", "Patient.contained[0].contained"),
    case("contained-unknown-element",
         {**patient(), "contained": [{"resourceType": "Organization", "id": "o", "size": 3}]},
         "structure", "Patient.contained[0].size"),
    case("contained-without-resourceType", {**patient(), "contained": [{"id": "o"}]},
         "required", "Patient.contained[0].resourceType"),
    case("contained-not-object", {**patient(), "contained": ["Organization/1"]}, "structure",
         "Patient.contained[0]"),
    case("bundle-entry-resource-invalid", bundle_of({**patient(), "gender": "mal"}),
         "code-invalid", "Bundle.entry[0].resource.gender"),
    case("parameters-resource-invalid",
         {"resourceType": "Parameters",
          "parameter": [{"name": "p", "resource": {**patient(), "birthDate": "25/12/1974"}}]},
         "value", "Parameters.parameter[0].resource.birthDate"),
    case("nested-backbone-via-content-reference",
         questionnaire({"linkId": "1.1", "type": "string", "colour": "red"}), "structure",
         "Questionnaire.item[0].item[0].colour"),
    case("nested-backbone-missing-required", questionnaire({"type": "string"}), "required",
         "Questionnaire.item[0].item[0].linkId"),
    case("nested-too-deep", deep_extension(MAX_DEPTH + 5), "structure",
         "Patient.extension[0]" + ".extension[0]" * MAX_DEPTH),
]
# fmt: on


@pytest.mark.parametrize(("body", "url_type", "url_id", "code", "expression"), INVALID)
def test_invalid_resource_is_reported_at_the_element(
    body: object, url_type: str | None, url_id: str | None, code: str, expression: str
) -> None:
    issues = validate_resource(copy.deepcopy(body), resource_type=url_type, resource_id=url_id)
    assert [(i.code, i.expression) for i in issues] == [(code, expression)], issues
    assert all(i.severity == "error" and i.diagnostics for i in issues)


def test_there_are_at_least_forty_distinct_invalid_cases() -> None:
    ids = [case.id for case in INVALID]
    assert len(set(ids)) == len(ids) >= 40


PHI = "Zebediah Quuxworth-1974"


@pytest.mark.parametrize(
    "body",
    [
        {**patient(), "birthDate": PHI},
        {**patient(), "gender": PHI},
        {**patient(), "active": PHI},
        {**patient(), "id": PHI},
        {**patient(), "implicitRules": PHI},
        {**patient(), PHI: "x"},
        {**patient(), "resourceType": PHI},
        {**patient(), "contained": [PHI]},
    ],
)
def test_diagnostics_never_echo_the_value(body: Resource) -> None:
    issues = validate_resource(body, resource_id="pat-1")
    assert issues
    for issue in issues:
        assert PHI not in issue.diagnostics
        assert PHI not in issue.expression


def test_primitive_extensions_may_stand_in_for_values() -> None:
    resource = with_patient(
        lambda r: r["name"][0].update(given=["Peter", None], _given=[None, DATA_ABSENT])
    )
    resource["_birthDate"] = DATA_ABSENT
    del resource["birthDate"]
    assert validate_resource(resource) == []
    observation_without_status = without(observation(), "status")
    observation_without_status["_status"] = DATA_ABSENT
    assert validate_resource(observation_without_status) == []


def test_decimals_parsed_as_decimal_are_accepted() -> None:
    text = json.dumps(observation()).replace("72.5", "72.50000000000000000001e999")
    parsed = json.loads(text, parse_float=Decimal)
    assert parsed["valueQuantity"]["value"] == Decimal("72.50000000000000000001e999")
    assert validate_resource(parsed) == []
    parsed["valueQuantity"]["value"] = Decimal("NaN")
    assert [i.expression for i in validate_resource(parsed)] == ["Observation.valueQuantity.value"]


def test_every_problem_is_reported_up_to_the_limit() -> None:
    resource = patient()
    resource["identifier"] = [{"system": "not a uri"} for _ in range(MAX_ISSUES + 20)]
    issues = validate_resource(resource)
    assert len(issues) == MAX_ISSUES
    assert issues[1].expression == "Patient.identifier[1].system"

    two = with_patient(lambda r: r.update(gender="mal", birthDate="1974-13-01"))
    assert {(i.code, i.expression) for i in validate_resource(two)} == {
        ("code-invalid", "Patient.gender"),
        ("value", "Patient.birthDate"),
    }


def test_issue_converts_to_an_operation_outcome_issue() -> None:
    (issue,) = validate_resource({**patient(), "gender": "mal"})
    assert issue.as_outcome_issue() == {
        "severity": "error",
        "code": "code-invalid",
        "diagnostics": issue.diagnostics,
        "expression": ["Patient.gender"],
    }
    (bare,) = validate_resource([])
    assert "expression" not in bare.as_outcome_issue()
