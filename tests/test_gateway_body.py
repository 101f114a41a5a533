"""Body size limits through the whole stack, in front of the trivial endpoints of
tests/gateway_probe_urls.py (they report how many bytes reached the view). The test
client's input stream fails the test if anything reads past the bytes it holds, so a
413 for a large declared length with a small body also shows the body was not read."""

import json
from typing import Any

import pytest
from django.conf import settings
from django.test import Client, override_settings

from clinik.keys.models import ApiKey
from tests.conftest import Persona

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.gateway_probe_urls")]


@pytest.fixture
def auth(owner: Persona) -> dict[str, Any]:
    _key, plaintext = ApiKey.issue(
        org=owner.org, name="k", scopes="read-write", expires_at=None, created_by=owner.user
    )
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def outcome(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = json.loads(response.content)
    assert body["resourceType"] == "OperationOutcome"
    return body


def test_the_defaults_are_5_mb_and_50_mb_and_django_agrees() -> None:
    assert settings.FHIR_MAX_BODY_BYTES == 5 * 1024 * 1024
    assert settings.FHIR_MAX_BUNDLE_BYTES == 50 * 1024 * 1024
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE >= settings.FHIR_MAX_BUNDLE_BYTES


@override_settings(FHIR_MAX_BODY_BYTES=1024, FHIR_MAX_BUNDLE_BYTES=4096)
def test_a_resource_over_the_limit_is_413(client: Client, auth: dict[str, Any]) -> None:
    ok = client.post("/fhir/R4/Patient", b"x" * 1024, "application/fhir+json", **auth)
    assert ok.json() == {"ok": True, "received": 1024}
    big = client.post("/fhir/R4/Patient", b"x" * 1025, "application/fhir+json", **auth)
    assert outcome(big, 413)["issue"][0]["code"] == "too-costly"


@override_settings(FHIR_MAX_BODY_BYTES=1024, FHIR_MAX_BUNDLE_BYTES=4096)
def test_bundles_to_the_base_have_their_own_limit(client: Client, auth: dict[str, Any]) -> None:
    for base in ("/fhir/R4", "/fhir/R4/"):
        ok = client.post(base, b"x" * 4096, "application/fhir+json", **auth)
        assert ok.json() == {"ok": True, "received": 4096}
        outcome(client.post(base, b"x" * 4097, "application/fhir+json", **auth), 413)


def test_a_huge_declared_length_is_refused_unread(client: Client, auth: dict[str, Any]) -> None:
    response = client.post(
        "/fhir/R4/Patient",
        b"{}",
        "application/fhir+json",
        CONTENT_LENGTH=str(60 * 1024 * 1024),
        **auth,
    )
    outcome(response, 413)


def test_the_limit_applies_before_authentication(client: Client) -> None:
    response = client.post(
        "/fhir/R4/Patient", b"{}", "application/fhir+json", CONTENT_LENGTH=str(10**9)
    )
    outcome(response, 413)


def test_a_body_longer_than_its_content_length_is_read_only_up_to_it(
    client: Client, auth: dict[str, Any]
) -> None:
    response = client.post(
        "/fhir/R4/Patient", b"x" * 5000, "application/fhir+json", CONTENT_LENGTH="10", **auth
    )
    assert response.json() == {"ok": True, "received": 10}


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_chunked_bodies_are_411_never_processed_as_empty(
    client: Client, auth: dict[str, Any], method: str
) -> None:
    response = getattr(client, method)(
        "/fhir/R4/Patient/1",
        b"5\r\nhello\r\n0\r\n\r\n",
        "application/fhir+json",
        HTTP_TRANSFER_ENCODING="chunked",
        **auth,
    )
    outcome(response, 411)


def test_a_write_without_content_length_is_411(client: Client, auth: dict[str, Any]) -> None:
    response = client.generic("POST", "/fhir/R4/Patient", **auth)
    assert "CONTENT_LENGTH" not in response.wsgi_request.META
    outcome(response, 411)


@pytest.mark.parametrize("value", ["abc", "-5", "1,2", "9" * 30])
def test_a_bad_content_length_is_400(client: Client, auth: dict[str, Any], value: str) -> None:
    response = client.post(
        "/fhir/R4/Patient", b"{}", "application/fhir+json", CONTENT_LENGTH=value, **auth
    )
    outcome(response, 400)


def test_a_get_with_a_huge_body_is_413(client: Client, auth: dict[str, Any]) -> None:
    response = client.generic("GET", "/fhir/R4/Patient", b"{}", CONTENT_LENGTH=str(10**9), **auth)
    outcome(response, 413)
