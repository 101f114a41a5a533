"""Path traversal and odd paths through the whole stack: each is refused with its
status and an OperationOutcome, never a 500 and never a page outside the API.

Every payload is sent three ways: through the test client as a WSGI server decodes it
(PATH_INFO only, as under runserver), with the raw request target gunicorn passes
along (RAW_URI), and to the production server over a socket (tests/test_gateway_live.py).
Accepted shapes reach the trivial endpoints of tests/gateway_probe_urls.py."""

import json
from typing import Any

import pytest
from django.test import Client

from clinik.keys.models import ApiKey
from tests.conftest import Persona

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.gateway_probe_urls")]

# (raw request target, status). At least 30, many from public traversal lists.
TRAVERSALS: list[tuple[str, int]] = [
    ("/fhir/R4/Patient/..", 400),
    ("/fhir/R4/Patient/../Observation", 400),
    ("/fhir/R4/Patient/../../../staff/", 400),
    ("/fhir/R4/../../staff/", 400),
    ("/fhir/R4/Patient/./1", 400),
    ("/fhir/R4/./Patient", 400),
    ("/fhir/R4/Patient/...", 400),
    ("/fhir/R4/Patient/%2e%2e", 400),
    ("/fhir/R4/Patient/%2E%2E/Observation", 400),
    ("/fhir/R4/%2e%2e/%2e%2e/staff/", 400),
    ("/fhir/R4/Patient/..%2f..%2fstaff", 400),
    ("/fhir/R4/Patient/%2e%2e%2f%2e%2e%2fetc%2fpasswd", 400),
    ("/fhir/R4/Patient/1%2f..%2f..%2fstaff", 400),
    ("/fhir/R4/Patient/%252e%252e", 400),
    ("/fhir/R4/Patient/%252e%252e%252fstaff", 400),
    ("/fhir/R4/Patient/%25%32%65%25%32%65", 400),
    ("/fhir/R4/Patient/%c0%ae%c0%ae", 400),
    ("/fhir/R4/Patient/%c0%af", 400),
    ("/fhir/R4/Patient/%e0%80%ae%e0%80%ae", 400),
    ("/fhir/R4/Patient/%ef%bc%8e%ef%bc%8e", 400),
    ("/fhir/R4/Patient/%u002e%u002e", 400),
    ("/fhir/R4/Patient/1%00", 400),
    ("/fhir/R4/Patient/1%00.json", 400),
    ("/fhir/R4/Patient/..%5c..%5cstaff", 400),
    ("/fhir/R4/Patient/%5c%5cserver%5cshare", 400),
    ("/fhir/R4/Patient/1;jsessionid=abc", 400),
    ("/fhir/R4/Patient;type=a/1", 400),
    ("/fhir/R4/Patient/1/..;/..;/staff", 400),
    ("/fhir/R4/Patient//1", 400),
    ("/fhir/R4/Patient/%2f%2f1", 400),
    ("/fhir/R4/Patient/1%0d%0aSet-Cookie:%20a=b", 400),
    ("/fhir/R4/Patient/1%20OR%201=1", 400),
    ("/fhir/R4/Patient/1/_history/..", 400),
    ("/fhir/R4/Patient/1/$everything/..", 400),
    ("/fhir/R4/Patient/$..", 400),
    ("/fhir/R4/Patient/%", 400),
    ("/fhir/R4/Patient/%zz", 400),
    ("/fhir/R4/Patient/" + "a" * 65, 400),
    ("/fhir/R4/staff", 404),
    ("/fhir/R4/Patient/1/_history/1/staff", 404),
    ("/fhir/R4/NotAType/1", 404),
    ("/fhir/R4/patient/1", 404),
    ("/fhir/R5/Patient", 404),
    ("/fhir/R4x", 404),
]


@pytest.fixture
def auth(owner: Persona) -> dict[str, Any]:
    _key, plaintext = ApiKey.issue(
        org=owner.org, name="k", scopes="read-write", expires_at=None, created_by=owner.user
    )
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def assert_refused(response: Any, status: int, target: str) -> None:
    assert response.status_code == status, (target, response.status_code, response.content)
    body = json.loads(response.content)
    assert body["resourceType"] == "OperationOutcome", target
    assert response["X-Request-ID"]


def test_there_are_at_least_30_payloads() -> None:
    assert len(TRAVERSALS) >= 30


@pytest.mark.parametrize(("target", "status"), TRAVERSALS)
def test_traversal_as_a_wsgi_server_decodes_it(
    client: Client, auth: dict[str, Any], target: str, status: int
) -> None:
    assert_refused(client.get(target, **auth), status, target)


# Harmless once decoded, but a raw target with escapes other than %24 is refused:
# what is validated must be exactly what is routed.
ENCODED_ONLY = [("/fhir/R4/%50atient/1", 400), ("/fhir/R4/Patient/%31", 400)]


@pytest.mark.parametrize(("target", "status"), TRAVERSALS + ENCODED_ONLY)
def test_traversal_with_the_raw_target_of_gunicorn(
    client: Client, auth: dict[str, Any], target: str, status: int
) -> None:
    assert_refused(client.get(target, RAW_URI=target, **auth), status, target)


@pytest.mark.parametrize("method", ["post", "put", "delete", "options"])
def test_traversal_is_refused_for_every_method(
    client: Client, auth: dict[str, Any], method: str
) -> None:
    response = getattr(client, method)(
        "/fhir/R4/Patient/%2e%2e/x", b"{}", "application/json", **auth
    )
    assert_refused(response, 400, method)


def test_an_encoded_dollar_reaches_the_operation(client: Client, auth: dict[str, Any]) -> None:
    target = "/fhir/R4/Patient/1/%24everything"
    response = client.get(target, RAW_URI=target, **auth)
    assert response.status_code == 200
    assert response.wsgi_request.fhir_route == "/fhir/R4/Patient/{id}/$everything"  # type: ignore[attr-defined]


def test_the_base_with_and_without_slash_is_served(client: Client, auth: dict[str, Any]) -> None:
    for target in ("/fhir/R4", "/fhir/R4/"):
        response = client.post(target, b"{}", "application/fhir+json", **auth)
        assert response.status_code == 200, target


def test_guarded_refusals_happen_before_authentication(client: Client) -> None:
    response = client.get("/fhir/R4/Patient/%2e%2e")
    assert_refused(response, 400, "no key")
