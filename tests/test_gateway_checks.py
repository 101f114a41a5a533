"""The gateway's check functions on their own, without a request going through."""

import pytest
from django.test import override_settings

from clinik.gateway import checks
from clinik.gateway.checks import Refused

# --- request id ---------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abcdefgh", "req-123.ABC_def", "a" * 64, "0123456789abcdef"])
def test_a_well_formed_request_id_is_kept(given: str) -> None:
    assert checks.request_id({"HTTP_X_REQUEST_ID": given}) == given


@pytest.mark.parametrize(
    "given",
    [
        "",
        "short",
        "a" * 65,
        "abc defgh",
        "abcdefgh\r\nSet-Cookie: x=1",
        "abcdefgh\n",
        "abcdefgh;x",
        "ünïcödé-123",
        "<script>alert(1)</script>",
    ],
)
def test_a_malformed_request_id_is_replaced_never_echoed(given: str) -> None:
    made = checks.request_id({"HTTP_X_REQUEST_ID": given})
    assert made != given
    assert len(made) == 32 and made.isalnum()


def test_a_request_id_is_made_when_none_is_given() -> None:
    first, second = checks.request_id({}), checks.request_id({})
    assert first != second and len(first) == 32


# --- body size -------------------------------------------------------------------------


@override_settings(FHIR_MAX_BODY_BYTES=1000, FHIR_MAX_BUNDLE_BYTES=5000)
def test_body_limits_single_resources_and_bundles() -> None:
    meta = {"CONTENT_LENGTH": "1000"}
    assert checks.check_body("PUT", "/fhir/R4/Patient/1", meta) == 1000
    for path in ("/fhir/R4", "/fhir/R4/"):
        assert checks.check_body("POST", path, {"CONTENT_LENGTH": "5000"}) == 5000
    with pytest.raises(Refused) as refused:
        checks.check_body("POST", "/fhir/R4/Patient", {"CONTENT_LENGTH": "1001"})
    assert refused.value.status == 413 and refused.value.code == "too-costly"
    with pytest.raises(Refused):
        checks.check_body("POST", "/fhir/R4/", {"CONTENT_LENGTH": "5001"})
    with pytest.raises(Refused):  # a bundle is a POST to the base, nothing else
        checks.check_body("PUT", "/fhir/R4/", {"CONTENT_LENGTH": "1001"})


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_a_body_without_length_is_refused_not_read_as_empty(method: str) -> None:
    for meta in ({}, {"CONTENT_LENGTH": ""}, {"HTTP_TRANSFER_ENCODING": "chunked"}):
        with pytest.raises(Refused) as refused:
            checks.check_body(method, "/fhir/R4/Patient", meta)
        assert refused.value.status == 411


def test_chunked_is_refused_even_with_a_length_or_on_get() -> None:
    both = {"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": "10"}
    for method in ("POST", "GET"):
        with pytest.raises(Refused) as refused:
            checks.check_body(method, "/fhir/R4/Patient", both)
        assert refused.value.status == 411


@pytest.mark.parametrize("value", ["-1", "1e3", "ten", " 12", "0x10", "9" * 40])
def test_a_content_length_that_is_not_a_number_is_refused(value: str) -> None:
    with pytest.raises(Refused) as refused:
        checks.check_body("POST", "/fhir/R4/Patient", {"CONTENT_LENGTH": value})
    assert refused.value.status == 400


def test_reads_need_no_length() -> None:
    assert checks.check_body("GET", "/fhir/R4/Patient", {}) == 0
    assert checks.check_body("DELETE", "/fhir/R4/Patient/1", {}) == 0


# --- path guard ------------------------------------------------------------------------

ALLOWED = [
    ("/fhir/R4", "/fhir/R4/", "", "base"),
    ("/fhir/R4/", "/fhir/R4/", "", "base"),
    ("/fhir/R4/metadata", "/fhir/R4/metadata", "", "metadata"),
    ("/fhir/R4/_history", "/fhir/R4/_history", "", "history"),
    ("/fhir/R4/$export", "/fhir/R4/$export", "", "operation"),
    ("/fhir/R4/Patient", "/fhir/R4/Patient", "Patient", "type"),
    ("/fhir/R4/Patient/_search", "/fhir/R4/Patient/_search", "Patient", "search"),
    ("/fhir/R4/Observation/_history", "/fhir/R4/Observation/_history", "Observation", "history"),
    ("/fhir/R4/Patient/$match", "/fhir/R4/Patient/$match", "Patient", "operation"),
    ("/fhir/R4/Patient/abc-123.x", "/fhir/R4/Patient/{id}", "Patient", "instance"),
    ("/fhir/R4/Patient/a.b/_history", "/fhir/R4/Patient/{id}/_history", "Patient", "history"),
    (
        "/fhir/R4/Patient/1/_history/2",
        "/fhir/R4/Patient/{id}/_history/{vid}",
        "Patient",
        "vread",
    ),
    (
        "/fhir/R4/Patient/1/$everything",
        "/fhir/R4/Patient/{id}/$everything",
        "Patient",
        "operation",
    ),
    ("/fhir/R4/Bundle/" + "x" * 64, "/fhir/R4/Bundle/{id}", "Bundle", "instance"),
]


@pytest.mark.parametrize(("path", "template", "resource_type", "kind"), ALLOWED)
def test_allowed_shapes_give_their_route_template(
    path: str, template: str, resource_type: str, kind: str
) -> None:
    route = checks.guard_path(path)
    assert (route.template, route.resource_type, route.kind) == (template, resource_type, kind)


def test_route_templates_never_hold_ids() -> None:
    route = checks.guard_path("/fhir/R4/Patient/secret-id-42/_history/7")
    assert "secret" not in route.template and "7" not in route.template


# Paths as Django routes them, i.e. after the server decoded the request target once.
REFUSED_DECODED = [
    ("/fhir/R4/Patient/..", 400),
    ("/fhir/R4/Patient/.", 400),
    ("/fhir/R4/Patient/...", 400),
    ("/fhir/R4/..", 400),
    ("/fhir/R4/../../staff/", 400),
    ("/fhir/R4/Patient/../Observation", 400),
    ("/fhir/R4/Patient/1/_history/..", 400),
    ("/fhir/R4/Patient/%2e%2e", 400),
    ("/fhir/R4/Patient/%252e", 400),
    ("/fhir/R4/Patient/a\\..\\b", 400),
    ("/fhir/R4/Patient/1\x00", 400),
    ("/fhir/R4/Patient/1;jsessionid=x", 400),
    ("/fhir/R4/Patient;x/1", 400),
    ("/fhir/R4/Patient//1", 400),
    ("/fhir/R4/Patient/", 400),
    ("/fhir/R4/Patient/1 2", 400),
    ("/fhir/R4/Patient/1\r\nX: y", 400),
    ("/fhir/R4/Patient/\u00c0\u00ae", 400),
    ("/fhir/R4/Patient/\uff0e\uff0e", 400),
    ("/fhir/R4/Patient/_foo", 400),
    ("/fhir/R4/Patient/" + "x" * 65, 400),
    ("/fhir/R4/Patient/$", 400),
    ("/fhir/R4/Patient/$1op", 400),
    ("/fhir/R4/Patient/a$b", 400),
    ("/fhir/R4/" + "Patient/" * 40, 400),
    ("/fhir/R4/Patientx", 404),
    ("/fhir/R4/patient/1", 404),
    ("/fhir/R4/Resource/1", 404),
    ("/fhir/R4/staff", 404),
    ("/fhir/R4/metadata/x", 404),
    ("/fhir/R4/Patient/1/_history/2/3", 404),
    ("/fhir/R4/Patient/1/edit", 404),
    ("/fhir/R5/Patient", 404),
    ("/fhir/R4x/Patient", 404),
    ("/fhir/", 404),
]


@pytest.mark.parametrize(("path", "status"), REFUSED_DECODED)
def test_refused_paths(path: str, status: int) -> None:
    with pytest.raises(Refused) as refused:
        checks.guard_path(path)
    assert refused.value.status == status


def test_the_raw_target_must_match_the_routed_path() -> None:
    routed = "/fhir/R4/Patient/1/$everything"
    for raw in (
        routed,
        "/fhir/R4/Patient/1/%24everything?_count=1",
        "http://h/fhir/R4/Patient/1/%24everything",
    ):
        assert checks.api_path({"RAW_URI": raw}, routed) == routed
    for raw, decoded in [
        ("/fhir/R4/Patient/%2e%2e", "/fhir/R4/Patient/.."),
        ("/fhir/R4/%50atient/1", "/fhir/R4/Patient/1"),
        ("/fhir/R4/Patient/a%2fb", "/fhir/R4/Patient/a/b"),
        ("/fhir/R4/Patient/%2524x", "/fhir/R4/Patient/%24x"),
        ("*", "/fhir/R4/Patient"),
        ("ftp://h/fhir/R4/Patient", "/fhir/R4/Patient"),
    ]:
        with pytest.raises(Refused) as refused:
            checks.api_path({"REQUEST_URI": raw}, decoded)
        assert refused.value.status == 400


def test_without_a_raw_target_the_routed_path_is_checked() -> None:
    assert checks.api_path({}, "/fhir/R4/Patient") == "/fhir/R4/Patient"


# --- keys in the URL ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "api_key=abc",
        "name=x&API_KEY=abc",
        "access_token=abc",
        "key=abc",
        "apikey=",
        "q=ck_live_abc",
        "q=xck_test_abc",
        "q=ck%5Flive%5Fabc",
    ],
)
def test_keys_in_the_query_string_are_refused(query: str) -> None:
    with pytest.raises(Refused) as refused:
        checks.check_query_string(query)
    assert refused.value.status == 400
    assert "abc" not in refused.value.diagnostics


@pytest.mark.parametrize("query", ["", "name=smith", "_count=10&_sort=-date", "identifier=ck"])
def test_ordinary_query_strings_pass(query: str) -> None:
    checks.check_query_string(query)


# --- bearer header -----------------------------------------------------------------------


def test_missing_authorization_gets_the_bare_challenge() -> None:
    with pytest.raises(Refused) as refused:
        checks.bearer_token({})
    assert refused.value.status == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Bearer realm="ClinikAPI"'


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", "Bearer ", "Token x", "bearerx y"])
def test_a_malformed_authorization_header_is_401(header: str) -> None:
    with pytest.raises(Refused) as refused:
        checks.bearer_token({"HTTP_AUTHORIZATION": header})
    assert refused.value.status == 401
    assert 'error="invalid_token"' in refused.value.headers["WWW-Authenticate"]


def test_the_bearer_scheme_is_case_insensitive() -> None:
    assert checks.bearer_token({"HTTP_AUTHORIZATION": "bearer tok"}) == "tok"
