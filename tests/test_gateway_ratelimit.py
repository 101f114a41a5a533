"""Rate limits in Redis (the test database 12 or 15, flushed per test by conftest),
and the per-process fallback when Redis is down."""

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings

from clinik.gateway.ratelimit import KnownKeys, Limiter, Policy, headers, known_keys, limiter
from clinik.keys import tokens
from clinik.keys.actions import do_revoke_key
from clinik.keys.models import ApiKey
from tests.conftest import Persona

pytestmark = pytest.mark.django_db

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
POLICY_ITEM = re.compile(r'"(ip|key|org)";q=\d+;w=\d+')
STATE_ITEM = re.compile(r'"(ip|key|org)";r=\d+;t=\d+')


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    limiter.reset()
    known_keys.clear()
    yield
    limiter.reset()
    known_keys.clear()


def issue(persona: Persona) -> str:
    return ApiKey.issue(
        org=persona.org, name="k", scopes="read-write", expires_at=None, created_by=persona.user
    )[1]


def bearer(plaintext: str) -> dict[str, Any]:
    return {"HTTP_AUTHORIZATION": f"Bearer {plaintext}"}


def assert_structured_lists(response: Any) -> None:
    for item in response["RateLimit-Policy"].split(", "):
        assert POLICY_ITEM.fullmatch(item), item
    for item in response["RateLimit"].split(", "):
        assert STATE_ITEM.fullmatch(item), item


@override_settings(
    RATE_LIMIT_IP_REQUESTS=1200, RATE_LIMIT_KEY_REQUESTS=600, RATE_LIMIT_ORG_REQUESTS=600
)
def test_successful_responses_carry_the_ratelimit_headers(client: Client, owner: Persona) -> None:
    response = client.get("/fhir/R4/Patient", **bearer(issue(owner)))
    assert response.status_code == 200
    assert response["RateLimit-Policy"] == '"ip";q=1200;w=60, "key";q=600;w=60, "org";q=600;w=60'
    assert response["RateLimit"].startswith('"ip";r=1199;t=1, "key";r=599;t=1, "org";r=599;t=')
    assert_structured_lists(response)


@override_settings(RATE_LIMIT_KEY_REQUESTS=3)
def test_a_burst_over_the_key_limit_is_429_with_retry_after(client: Client, owner: Persona) -> None:
    auth = bearer(issue(owner))
    remaining = [
        re.search(r'"key";r=(\d+)', client.get("/fhir/R4/Patient", **auth)["RateLimit"])
        for _ in range(3)
    ]
    assert [int(m.group(1)) for m in remaining if m] == [2, 1, 0]
    response = client.get("/fhir/R4/Patient", **auth)
    assert response.status_code == 429
    body = json.loads(response.content)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "throttled"
    assert 1 <= int(response["Retry-After"]) <= 20  # one request every 20 s
    assert '"key";r=0;' in response["RateLimit"]
    assert_structured_lists(response)


@override_settings(RATE_LIMIT_ORG_REQUESTS=4)
def test_the_organization_limit_spans_its_keys(
    client: Client, owner: Persona, outsider: Persona
) -> None:
    first, second, other = bearer(issue(owner)), bearer(issue(owner)), bearer(issue(outsider))
    statuses = [client.get("/fhir/R4/Patient", **auth).status_code for auth in [first, second] * 2]
    assert statuses == [200] * 4
    assert client.get("/fhir/R4/Patient", **second).status_code == 429
    assert client.get("/fhir/R4/Patient", **other).status_code == 200  # another tenant


@override_settings(RATE_LIMIT_IP_REQUESTS=3)
def test_unauthenticated_traffic_is_limited_per_ip_before_any_query(
    client: Client, django_assert_num_queries: Any
) -> None:
    for _ in range(3):
        assert client.get("/fhir/R4/Patient", **bearer("ck_live_guess")).status_code == 401
    with django_assert_num_queries(0):
        response = client.get("/fhir/R4/Patient", **bearer("ck_live_guess"))
    assert response.status_code == 429
    assert response["RateLimit"].startswith('"ip";r=0;')
    other_ip = client.get("/fhir/R4/metadata", REMOTE_ADDR="10.9.8.7")
    assert other_ip.status_code == 200


@override_settings(RATE_LIMIT_IP_REQUESTS=2)
def test_ipv6_clients_are_limited_per_64(client: Client) -> None:
    for suffix in ("1", "2"):
        response = client.get("/fhir/R4/metadata", REMOTE_ADDR=f"2001:db8:1:2::{suffix}")
        assert response.status_code == 200
    assert client.get("/fhir/R4/metadata", REMOTE_ADDR="2001:db8:1:2::3").status_code == 429
    assert client.get("/fhir/R4/metadata", REMOTE_ADDR="2001:db8:1:3::1").status_code == 200


@override_settings(RATE_LIMIT_IP_REQUESTS=2, TRUSTED_PROXY_COUNT=1)
def test_behind_a_load_balancer_each_client_address_has_its_own_bucket(client: Client) -> None:
    def get(forwarded: str) -> int:
        response = client.get(
            "/fhir/R4/metadata", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR=forwarded
        )
        return response.status_code

    # Rotating the entries the client writes itself (left of ours) changes nothing.
    assert [get(f"192.0.2.{n}, 203.0.113.9") for n in range(3)] == [200, 200, 429]
    assert get("203.0.113.10") == 200  # another client behind the same balancer


@override_settings(RATE_LIMIT_KEY_REQUESTS=1, RATE_LIMIT_ORG_REQUESTS=600)
def test_a_refused_request_does_not_consume_the_other_buckets(
    client: Client, owner: Persona
) -> None:
    auth = bearer(issue(owner))
    client.get("/fhir/R4/Patient", **auth)
    for _ in range(5):
        assert client.get("/fhir/R4/Patient", **auth).status_code == 429
    org_state = re.search(r'"org";r=(\d+)', client.get("/fhir/R4/Patient", **auth)["RateLimit"])
    assert org_state and int(org_state.group(1)) == 599


@override_settings(GATEWAY_REDIS_URL=DEAD_REDIS, RATE_LIMIT_KEY_REQUESTS=3)
def test_with_redis_down_requests_are_authenticated_served_and_still_limited(
    client: Client, owner: Persona, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="clinik.gateway")
    auth = bearer(issue(owner))
    assert [client.get("/fhir/R4/Patient", **auth).status_code for _ in range(3)] == [200] * 3
    assert client.get("/fhir/R4/Patient", **auth).status_code == 429
    assert client.get("/fhir/R4/Patient", **bearer("ck_live_wrong")).status_code == 401
    warnings = [r for r in caplog.records if r.name == "clinik.gateway"]
    assert len(warnings) == 1  # once per interval, not per request
    assert "Redis is unreachable or failing (ConnectionError)" in warnings[0].getMessage()


def test_the_limiter_uses_redis_again_when_the_setting_points_back(
    client: Client, owner: Persona
) -> None:
    auth = bearer(issue(owner))
    with override_settings(GATEWAY_REDIS_URL=DEAD_REDIS, RATE_LIMIT_KEY_REQUESTS=1):
        assert client.get("/fhir/R4/Patient", **auth).status_code == 200
        assert client.get("/fhir/R4/Patient", **auth).status_code == 429
    with override_settings(RATE_LIMIT_KEY_REQUESTS=1):
        assert client.get("/fhir/R4/Patient", **auth).status_code == 200  # fresh Redis bucket
        assert client.get("/fhir/R4/Patient", **auth).status_code == 429


def test_memory_and_redis_buckets_agree() -> None:
    policy = Policy("key", 5, 10)
    fresh = Limiter()
    redis_side = [fresh.hit([(policy, "agree")]) for _ in range(6)]
    memory_side = [fresh.memory.hit([(policy, "agree")]) for _ in range(6)]
    assert [v.allowed for v in redis_side] == [v.allowed for v in memory_side]
    assert [v.states[0].remaining for v in redis_side] == [4, 3, 2, 1, 0, 0]
    assert [v.states[0].remaining for v in memory_side] == [4, 3, 2, 1, 0, 0]
    assert redis_side[-1].retry_after == memory_side[-1].retry_after == 2


def test_header_format() -> None:
    limiter_states = Limiter().memory.hit([(Policy("org", 600, 60), "x")]).states
    assert headers(limiter_states) == {
        "RateLimit-Policy": '"org";q=600;w=60',
        "RateLimit": '"org";r=599;t=1',
    }


@override_settings(RATE_LIMIT_ORG_REQUESTS=10)
def test_known_keys_check_every_bucket_before_the_lookup_and_are_forgotten_on_failure(
    client: Client, owner: Persona
) -> None:
    key, plaintext = ApiKey.issue(
        org=owner.org, name="k", scopes="read", expires_at=None, created_by=None
    )
    digest = tokens.digest(plaintext)
    first = client.get("/fhir/R4/Patient", **bearer(plaintext))  # learns the buckets
    assert known_keys.get(digest) is not None
    second = client.get("/fhir/R4/Patient", **bearer(plaintext))  # one limiter call
    assert first.status_code == second.status_code == 200
    assert '"org";r=8;' in second["RateLimit"]
    assert second["RateLimit-Policy"] == first["RateLimit-Policy"]
    do_revoke_key(key=key, actor=None, request=None)
    for _ in range(5):
        assert client.get("/fhir/R4/Patient", **bearer(plaintext)).status_code == 401
    assert known_keys.get(digest) is None
    # Only the first request after the revocation still counted for the organization.
    other = client.get("/fhir/R4/Patient", **bearer(issue(owner)))
    assert '"org";r=6;' in other["RateLimit"]


def test_known_keys_expire() -> None:
    known = KnownKeys()
    known.remember("abc", [(Policy("key", 1, 60), "1")])
    assert known.get("abc") == [(Policy("key", 1, 60), "1")]
    known.TTL = -1.0
    known.remember("abc", [(Policy("key", 1, 60), "1")])
    assert known.get("abc") is None
