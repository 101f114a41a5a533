"""Authentication and scopes through the whole middleware stack, in front of the
trivial endpoints of tests/gateway_probe_urls.py: what is counted here (queries,
sessions) is the gateway's alone. tests/test_gateway_live.py uses the real views."""

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client, override_settings
from django.utils import timezone

from clinik.gateway.limits import limits_for
from clinik.gateway.ratelimit import known_keys
from clinik.keys import tokens
from clinik.keys.actions import do_revoke_key
from clinik.keys.models import ApiKey
from tests.conftest import Persona

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.gateway_probe_urls")]

OUTCOME = "OperationOutcome"


def issue(persona: Persona, scopes: str = "read-write", **kwargs: Any) -> tuple[ApiKey, str]:
    return ApiKey.issue(
        org=persona.org,
        name="test key",
        scopes=scopes,
        expires_at=kwargs.get("expires_at"),
        created_by=persona.user,
    )


def bearer(plaintext: str) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


@pytest.fixture
def key(owner: Persona) -> tuple[ApiKey, str]:
    return issue(owner)


def assert_outcome(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/fhir+json")
    body: dict[str, Any] = json.loads(response.content)
    assert body["resourceType"] == OUTCOME
    if code:
        assert body["issue"][0]["code"] == code
    return body


def test_metadata_needs_no_key(client: Client) -> None:
    response = client.get("/fhir/R4/metadata")
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"


def test_a_missing_key_is_401_with_the_bearer_challenge(client: Client) -> None:
    response = client.get("/fhir/R4/Patient")
    assert_outcome(response, 401, "login")
    assert response["WWW-Authenticate"] == 'Bearer realm="ClinikAPI"'


def test_a_valid_key_is_served_and_sets_the_request_key_and_org(
    client: Client, key: tuple[ApiKey, str]
) -> None:
    response = client.get("/fhir/R4/Patient/123", **bearer(key[1]))
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert response.wsgi_request.api_key == key[0]  # type: ignore[attr-defined]
    assert response.wsgi_request.org == key[0].org  # type: ignore[attr-defined]
    assert response.wsgi_request.fhir_route == "/fhir/R4/Patient/{id}"  # type: ignore[attr-defined]
    assert response.wsgi_request.fhir_resource_type == "Patient"  # type: ignore[attr-defined]


def test_every_wrong_key_gets_the_same_401(
    client: Client, owner: Persona, key: tuple[ApiKey, str]
) -> None:
    _expired, expired_plain = issue(owner, expires_at=timezone.now() - timedelta(seconds=1))
    revoked, revoked_plain = issue(owner)
    do_revoke_key(key=revoked, actor=owner.user, request=None)
    plaintext = key[1]
    wrong_checksum = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    unknown = tokens.generate()
    bodies = set()
    for header in [
        f"Bearer {wrong_checksum}",
        f"Bearer {unknown}",
        f"Bearer {expired_plain}",
        f"Bearer {revoked_plain}",
        f"Bearer {plaintext.upper()}",
        f"Bearer {plaintext}x",
        f"Bearer {plaintext[:-1]}",
        "Bearer " + "x" * 10_000,
        "Bearer ck_live_ünïcödé",
        f"Basic {plaintext}",
        "Bearer",
    ]:
        response = client.get("/fhir/R4/Patient", HTTP_AUTHORIZATION=header)
        assert_outcome(response, 401, "login")
        assert response["WWW-Authenticate"] == 'Bearer realm="ClinikAPI", error="invalid_token"'
        bodies.add(response.content)
    assert len(bodies) == 1


def test_a_checksum_invalid_key_costs_no_query(
    client: Client, key: tuple[ApiKey, str], django_assert_num_queries: Any
) -> None:
    typo = key[1][:-2] + ("zz" if key[1][-2:] != "zz" else "yy")
    with django_assert_num_queries(0):
        response = client.get("/fhir/R4/Patient", **bearer(typo))
    assert response.status_code == 401


def test_an_authenticated_request_costs_one_query(
    client: Client, key: tuple[ApiKey, str], django_assert_num_queries: Any
) -> None:
    client.get("/fhir/R4/Patient", **bearer(key[1]))  # sets last_used_at
    known_keys.clear()  # a key this process has not seen: looked up
    with django_assert_num_queries(1) as queries:
        response = client.get("/fhir/R4/Patient", **bearer(key[1]))
    assert response.status_code == 200
    assert "key_hash = " in queries.captured_queries[0]["sql"]
    # Known now: not looked up again; this probe view ran no tenant statement to
    # carry the check (clinik.keys.recheck), so it runs alone after the view.
    with django_assert_num_queries(1) as queries:
        response = client.get("/fhir/R4/Patient", **bearer(key[1]))
    assert response.status_code == 200
    assert queries.captured_queries[0]["sql"].startswith("SELECT EXISTS (SELECT 1 FROM")


@override_settings(API_KEY_PREPARED_LOOKUP=True)
def test_with_the_prepared_lookup_a_request_costs_one_query_and_sees_revocation(
    client: Client, owner: Persona, key: tuple[ApiKey, str], django_assert_num_queries: Any
) -> None:
    client.get("/fhir/R4/Patient", **bearer(key[1]))  # prepares, sets last_used_at
    known_keys.clear()  # a key this process has not seen: looked up
    with django_assert_num_queries(1) as queries:
        response = client.get("/fhir/R4/Patient", **bearer(key[1]))
    assert response.status_code == 200
    assert queries.captured_queries[0]["sql"].startswith("EXECUTE clinik_api_key_lookup(")
    do_revoke_key(key=key[0], actor=owner.user, request=None)
    assert_outcome(client.get("/fhir/R4/Patient", **bearer(key[1])), 401)


def test_revocation_takes_effect_on_the_next_request(
    client: Client, owner: Persona, key: tuple[ApiKey, str]
) -> None:
    assert client.get("/fhir/R4/Patient", **bearer(key[1])).status_code == 200
    do_revoke_key(key=key[0], actor=owner.user, request=None)
    assert_outcome(client.get("/fhir/R4/Patient", **bearer(key[1])), 401)


def test_a_key_expires_at_its_time(client: Client, owner: Persona) -> None:
    expires = timezone.now() + timedelta(days=30)
    _key, plaintext = issue(owner, expires_at=expires)
    with time_machine.travel(expires - timedelta(seconds=1)):
        assert client.get("/fhir/R4/Patient", **bearer(plaintext)).status_code == 200
    with time_machine.travel(expires):
        assert_outcome(client.get("/fhir/R4/Patient", **bearer(plaintext)), 401)


def test_last_used_is_written_at_most_once_per_interval(
    client: Client, key: tuple[ApiKey, str], django_assert_num_queries: Any
) -> None:
    start = timezone.now()
    limits_for(key[0].org_id)  # the plan, read once and cached in Redis (not counted here)
    with time_machine.travel(start, tick=False), django_assert_num_queries(2):
        client.get("/fhir/R4/Patient", **bearer(key[1]))  # lookup + conditional UPDATE
    key[0].refresh_from_db()
    assert key[0].last_used_at == start
    with (
        time_machine.travel(start + timedelta(minutes=4), tick=False),
        django_assert_num_queries(1),
    ):
        client.get("/fhir/R4/Patient", **bearer(key[1]))
    key[0].refresh_from_db()
    assert key[0].last_used_at == start
    with time_machine.travel(start + timedelta(minutes=6), tick=False):
        client.get("/fhir/R4/Patient", **bearer(key[1]))
    key[0].refresh_from_db()
    assert key[0].last_used_at == start + timedelta(minutes=6)


def test_the_conditional_update_changes_no_row_when_another_process_wrote(
    key: tuple[ApiKey, str],
) -> None:
    api_key = key[0]
    stale_copy = ApiKey.objects.get(pk=api_key.pk)
    assert api_key.note_use() is True
    assert stale_copy.last_used_at is None
    assert stale_copy.note_use() is False  # the row is fresh: no second write


def test_read_keys_read_and_search_but_cannot_write(client: Client, owner: Persona) -> None:
    _key, plaintext = issue(owner, scopes="read")
    auth = bearer(plaintext)
    assert client.get("/fhir/R4/Patient/1", **auth).status_code == 200
    assert client.head("/fhir/R4/Patient/1", **auth).status_code == 200
    search = client.post(
        "/fhir/R4/Patient/_search", "name=x", "application/x-www-form-urlencoded", **auth
    )
    assert search.status_code == 200
    for method in ("post", "put", "patch"):
        response = getattr(client, method)("/fhir/R4/Patient/1", b"{}", "application/json", **auth)
        assert_outcome(response, 403, "forbidden")
    assert_outcome(client.delete("/fhir/R4/Patient/1", **auth), 403, "forbidden")
    assert_outcome(client.post("/fhir/R4/", b"{}", "application/json", **auth), 403)


def test_read_write_keys_write(client: Client, key: tuple[ApiKey, str]) -> None:
    response = client.put("/fhir/R4/Patient/1", b'{"a": 1}', "application/json", **bearer(key[1]))
    assert response.json() == {"ok": True, "received": 8}
    assert client.delete("/fhir/R4/Patient/1", **bearer(key[1])).status_code == 200


def test_a_closing_organization_is_read_only(
    client: Client, owner: Persona, key: tuple[ApiKey, str]
) -> None:
    owner.org.status = "closing"
    owner.org.save(update_fields=["status"])
    assert client.get("/fhir/R4/Patient", **bearer(key[1])).status_code == 200
    response = client.post("/fhir/R4/Patient", b"{}", "application/json", **bearer(key[1]))
    assert_outcome(response, 403, "forbidden")


def test_a_closed_organization_gets_401(
    client: Client, owner: Persona, key: tuple[ApiKey, str]
) -> None:
    owner.org.status = "closed"
    owner.org.save(update_fields=["status"])
    assert_outcome(client.get("/fhir/R4/Patient", **bearer(key[1])), 401)


def test_a_key_in_the_query_string_is_refused_and_never_logged(
    client: Client, key: tuple[ApiKey, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for url in (
        f"/fhir/R4/Patient?api_key={key[1]}",
        f"/fhir/R4/Patient?name={key[1]}",
        f"/fhir/R4/metadata?access_token={key[1]}",
    ):
        response = client.get(url, **bearer(key[1]))
        body = assert_outcome(response, 400, "security")
        assert key[1] not in json.dumps(body)
    assert key[1] not in caplog.text
    assert tokens.random_part(key[1]) not in caplog.text


def test_api_posts_need_no_csrf_token_and_carry_no_session(
    owner: Persona, key: tuple[ApiKey, str], django_assert_num_queries: Any
) -> None:
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner.user)  # a dashboard session cookie rides along
    browser.get("/fhir/R4/Patient", **bearer(key[1]))  # sets last_used_at
    with django_assert_num_queries(1):  # the key lookup: no session is loaded or saved
        response = browser.post("/fhir/R4/Patient", b"{}", "application/json", **bearer(key[1]))
    assert response.status_code == 200
    assert not response.cookies


def test_other_paths_are_left_alone(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert "X-Request-ID" not in response
    assert "RateLimit" not in response


def test_request_ids_are_returned_on_every_response(
    client: Client, key: tuple[ApiKey, str]
) -> None:
    ok = client.get("/fhir/R4/Patient", HTTP_X_REQUEST_ID="client-req-0001", **bearer(key[1]))
    assert ok["X-Request-ID"] == "client-req-0001"
    assert ok.wsgi_request.request_id == "client-req-0001"  # type: ignore[attr-defined]
    refused = client.get("/fhir/R4/Patient", HTTP_X_REQUEST_ID="bad\r\nSet-Cookie: a=b")
    assert refused.status_code == 401
    assert len(refused["X-Request-ID"]) == 32 and "Set-Cookie" not in refused
    guarded = client.get("/fhir/R4/Patient/..", HTTP_X_REQUEST_ID="client-req-0002")
    assert guarded.status_code == 400 and guarded["X-Request-ID"] == "client-req-0002"


@pytest.mark.parametrize("path", ["metadata", "Patient", "Patient?family=x"])
def test_a_host_outside_allowed_hosts_is_a_400_outcome(api: Any, path: str) -> None:
    response = api.get(path, HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/fhir+json")
    assert "Host header" in response.json()["issue"][0]["diagnostics"]
