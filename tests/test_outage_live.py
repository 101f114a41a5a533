"""PostgreSQL out of reach, through the real server (issue 13, defect 6): every API
path — read, write, search, bundle, and the gateway's key lookup — answers 503 with an
OperationOutcome and Retry-After, /healthz names the dependency that is down, the log
says so once, and the API recovers without a restart when the database is back.

The database is taken away by cutting a TCP proxy between the server and PostgreSQL
(tests/tcpproxy.py), never by stopping PostgreSQL."""

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connections

from clinik.accounts.models import Organization
from clinik.keys.models import ApiKey
from tests.liveserver import serve
from tests.tcpproxy import TcpProxy


def _call(
    base: str, method: str, path: str, key: str | None, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/fhir+json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, dict(error.headers), error.read()
    headers = {name.lower(): value for name, value in headers.items()}
    return status, headers, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def keys(django_db_setup: None, django_db_blocker: Any) -> Iterator[tuple[str, str]]:
    """Two committed keys: one the server will have looked up, one it never saw."""
    with django_db_blocker.unblock():
        org = Organization.objects.create(name="Outage org")
        _k1, used = ApiKey.issue(
            org=org, name="used", scopes="read-write", expires_at=None, created_by=None
        )
        _k2, fresh = ApiKey.issue(
            org=org, name="fresh", scopes="read-write", expires_at=None, created_by=None
        )
    yield used, fresh
    with django_db_blocker.unblock():
        org.delete()


@pytest.fixture(scope="module")
def proxy() -> Iterator[TcpProxy]:
    db = connections["default"].settings_dict
    proxy = TcpProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def redis_proxy() -> Iterator[TcpProxy]:
    parts = urlsplit(settings.REDIS_URL)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def server(
    django_db_setup: None,
    proxy: TcpProxy,
    redis_proxy: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Path]]:
    parts = urlsplit(settings.DATABASE_URL)
    name = connections["default"].settings_dict["NAME"]
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0] + "@" if len(netloc) == 2 else ""
    url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}", path=f"/{name}"))
    log_dir = tmp_path_factory.mktemp("server")
    redis = urlsplit(settings.REDIS_URL)
    redis_url = urlunsplit(redis._replace(netloc=f"127.0.0.1:{redis_proxy.port}"))
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "API_RETRY_AFTER_SECONDS": "7"}
    with serve(log_dir, env=env) as live:
        yield live.base, live.log


def _is_unavailable(answer: tuple[int, dict[str, str], Any], what: str) -> None:
    status, headers, body = answer
    assert status == 503, (what, status, body)
    assert headers.get("content-type", "").startswith("application/fhir+json"), what
    assert body["resourceType"] == "OperationOutcome", what
    assert body["issue"][0]["code"] == "transient", what
    assert headers.get("retry-after") == "7", what


def test_postgres_out_of_reach_answers_503_everywhere_then_recovers(
    server: tuple[str, Path], proxy: TcpProxy, keys: tuple[str, str]
) -> None:
    base, log = server
    used, fresh = keys
    status, _, created = _call(base, "POST", "/fhir/R4/Patient", used, {"resourceType": "Patient"})
    assert status == 201
    patient = f"/fhir/R4/Patient/{created['id']}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient"},
            }
        ],
    }
    assert _call(base, "GET", patient, used)[0] == 200
    assert _call(base, "GET", "/healthz", None)[0] == 200

    proxy.cut()
    try:
        for _ in range(2):  # the second time too: no connection left half-broken
            _is_unavailable(_call(base, "GET", patient, used), "read")
            _is_unavailable(
                _call(base, "POST", "/fhir/R4/Patient", used, {"resourceType": "Patient"}), "write"
            )
            _is_unavailable(_call(base, "GET", "/fhir/R4/Patient?family=x", used), "search")
            _is_unavailable(_call(base, "POST", "/fhir/R4/", used, bundle), "bundle")
            _is_unavailable(_call(base, "GET", patient, fresh), "key lookup")
            _is_unavailable(
                _call(
                    base, "PUT", patient, fresh, {"resourceType": "Patient", "id": created["id"]}
                ),
                "key lookup before a write",
            )
        status, _, health = _call(base, "GET", "/healthz", None)
        assert status == 503 and health["postgres"] == "unreachable" and health["redis"] == "ok"
    finally:
        proxy.restore()

    status, _, _ = _call(base, "GET", patient, used)
    assert status == 200  # the same server, not restarted
    assert _call(base, "POST", "/fhir/R4/Patient", fresh, {"resourceType": "Patient"})[0] == 201
    assert _call(base, "GET", "/fhir/R4/Patient?family=x", used)[0] == 200
    assert _call(base, "POST", "/fhir/R4/", used, bundle)[0] == 200
    assert _call(base, "GET", "/healthz", None)[0] == 200
    text = log.read_text()
    assert text.count("postgres unreachable") == 1, text[-3000:]
    assert text.count("postgres reachable again") == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


def test_redis_out_of_reach_degrades_as_designed(
    server: tuple[str, Path], redis_proxy: TcpProxy, keys: tuple[str, str]
) -> None:
    """Redis holds rate-limit buckets (the limiter falls back to per-process memory),
    the request log's buffer (it falls back to PostgreSQL) and the task queue: reads,
    writes and searches go on; /healthz says Redis is down."""
    base, _log = server
    used, _fresh = keys
    redis_proxy.cut()
    try:
        status, _, created = _call(
            base, "POST", "/fhir/R4/Patient", used, {"resourceType": "Patient"}
        )
        assert status == 201
        assert _call(base, "GET", f"/fhir/R4/Patient/{created['id']}", used)[0] == 200
        assert _call(base, "GET", "/fhir/R4/Patient?_id=" + created["id"], used)[0] == 200
        status, _, health = _call(base, "GET", "/healthz", None)
        assert status == 503 and health["redis"] == "unreachable" and health["postgres"] == "ok"
        status, headers, body = _call(base, "GET", "/fhir/R4/Patient/$export", used)
        assert status < 500 or (status == 503 and "retry-after" in headers), (status, body)
    finally:
        redis_proxy.restore()
    assert _call(base, "GET", "/healthz", None)[0] == 200
