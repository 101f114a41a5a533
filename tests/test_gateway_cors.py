"""CORS: preflights need no key; actual responses are readable by a browser only on
an origin the key's own organization allows."""

from typing import Any

import pytest
from django.test import Client

from clinik.gateway.models import AllowedOrigin, normalize_origin
from clinik.keys.models import ApiKey
from tests.conftest import Persona

pytestmark = pytest.mark.django_db

APP = "https://app.acme.test"
EVIL = "https://evil.test"


def bearer(persona: Persona) -> dict[str, Any]:
    plaintext = ApiKey.issue(
        org=persona.org, name="k", scopes="read-write", expires_at=None, created_by=persona.user
    )[1]
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


@pytest.fixture
def allowed(owner: Persona) -> AllowedOrigin:
    return AllowedOrigin.objects.create(org=owner.org, origin=APP)


def preflight(client: Client, origin: str, path: str = "/fhir/R4/Patient") -> Any:
    return client.options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="Authorization, Content-Type, If-Match",
    )


def test_a_preflight_from_an_allowed_origin_needs_no_key(
    client: Client, allowed: AllowedOrigin
) -> None:
    response = preflight(client, APP)
    assert response.status_code == 204
    assert response["Access-Control-Allow-Origin"] == APP
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert response["Access-Control-Allow-Headers"] == "authorization, content-type, if-match"
    assert "Origin" in response["Vary"]
    assert "Access-Control-Allow-Credentials" not in response


def test_a_preflight_from_an_unknown_origin_gets_no_allow_headers(
    client: Client, allowed: AllowedOrigin
) -> None:
    response = preflight(client, EVIL)
    assert response.status_code == 204
    assert "Access-Control-Allow-Origin" not in response


def test_a_closed_organization_allows_no_origin(
    client: Client, owner: Persona, allowed: AllowedOrigin
) -> None:
    owner.org.status = "closed"
    owner.org.save(update_fields=["status"])
    assert "Access-Control-Allow-Origin" not in preflight(client, APP)


def test_preflights_are_still_path_guarded(client: Client, allowed: AllowedOrigin) -> None:
    assert preflight(client, APP, "/fhir/R4/Patient/%2e%2e").status_code == 400


def test_the_actual_response_is_shared_only_with_the_keys_own_origins(
    client: Client, owner: Persona, outsider: Persona, allowed: AllowedOrigin
) -> None:
    ours = client.get("/fhir/R4/Patient", HTTP_ORIGIN=APP, **bearer(owner))
    assert ours.status_code == 200
    assert ours["Access-Control-Allow-Origin"] == APP
    exposed = ours["Access-Control-Expose-Headers"]
    for name in ("ETag", "Location", "X-Request-ID", "RateLimit", "RateLimit-Policy"):
        assert name in exposed
    assert "Origin" in ours["Vary"]
    theirs = client.get("/fhir/R4/Patient", HTTP_ORIGIN=APP, **bearer(outsider))
    assert theirs.status_code == 200
    assert "Access-Control-Allow-Origin" not in theirs
    evil = client.get("/fhir/R4/Patient", HTTP_ORIGIN=EVIL, **bearer(owner))
    assert "Access-Control-Allow-Origin" not in evil


def test_refusals_before_authentication_are_readable_and_cost_no_query(
    client: Client, allowed: AllowedOrigin, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(0):
        response = client.get("/fhir/R4/Patient", HTTP_ORIGIN=EVIL)
    assert response.status_code == 401
    assert response["Access-Control-Allow-Origin"] == "*"


def test_metadata_is_public_to_every_origin(client: Client) -> None:
    response = client.get("/fhir/R4/metadata", HTTP_ORIGIN=EVIL)
    assert response["Access-Control-Allow-Origin"] == "*"
    assert preflight(client, EVIL, "/fhir/R4/metadata")["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com/", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:8080", "http://[::1]:8080"),
        ("https://app.example.com/path", None),
        ("https://user@app.example.com", None),
        ("ftp://app.example.com", None),
        ("app.example.com", None),
        ("https://", None),
        ("https://app.example.com:99999", None),
        ("https://app.example.com?x=1", None),
        ("*", None),
    ],
)
def test_origins_are_normalized_as_browsers_send_them(given: str, normalized: str | None) -> None:
    assert normalize_origin(given) == normalized
