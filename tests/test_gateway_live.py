"""The gateway under the production server (clinik/serve.py, tests/liveserver.py)
serving the real FHIR views, spoken to over raw sockets: request targets as the
client sent them instead of the test client's, declared lengths that lie, chunked
bodies, oversized URLs and headers, a pooled client polling on one keep-alive
connection. The key used is committed for the module so the server's own database
connection can see it."""

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3

from clinik.accounts.models import Organization
from clinik.keys import tokens
from clinik.keys.models import ApiKey
from tests.liveserver import LiveServer, serve
from tests.test_gateway_paths import TRAVERSALS


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    exports = tmp_path_factory.mktemp("exports")
    env = {"EXPORT_DIR": str(exports), "EXPORT_S3_BUCKET": "", "EXPORT_POLL_MIN_SECONDS": "2"}
    with serve(tmp_path_factory.mktemp("server"), env=env) as live:
        yield live


@pytest.fixture(scope="module")
def live_key(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    with django_db_blocker.unblock():
        org = Organization.objects.create(name="Live server org")
        _key, plaintext = ApiKey.issue(
            org=org, name="live", scopes="read-write", expires_at=None, created_by=None
        )
    yield plaintext
    with django_db_blocker.unblock():
        org.delete()


def _get(target: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode(
        "latin-1"
    )


def _post(target: str, key: str, body: bytes, length: int | None = None) -> bytes:
    # Keep-alive when the body is longer than declared: the server then reads the rest
    # as a next request instead of closing on unread bytes (a reset could cut the reply).
    connection = "Connection: close\r\n" if length is None else ""
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/fhir+json\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n{connection}\r\n"
    )
    return head.encode("latin-1") + body


def _expunge(server: LiveServer, key: str, resource_id: str) -> tuple[int, dict[str, Any]]:
    """`$expunge` sent as `%24expunge`: the one escape the path guard lets through."""
    status, _headers, body = server.exchange(
        _post(f"/fhir/R4/Patient/{resource_id}/%24expunge", key, b"")
    )
    return status, json.loads(body)


def test_metadata_is_served_without_a_key(server: LiveServer) -> None:
    status, headers, body = server.exchange(_get("/fhir/R4/metadata"))
    assert status == 200, body
    assert json.loads(body)["resourceType"] == "CapabilityStatement"
    assert headers["x-request-id"]


def test_an_authenticated_request_is_served(server: LiveServer, live_key: str) -> None:
    auth = f"Authorization: Bearer {live_key}\r\n"
    patient = b'{"resourceType": "Patient", "name": [{"family": "Live"}]}'
    status, headers, body = server.exchange(_post("/fhir/R4/Patient", live_key, patient))
    assert status == 201, body
    assert headers["x-request-id"]
    assert headers["ratelimit-policy"].startswith('"ip";q=')
    created = json.loads(body)
    assert headers["location"].endswith(f"/fhir/R4/Patient/{created['id']}/_history/1")

    status, _headers, body = server.exchange(_get(f"/fhir/R4/Patient/{created['id']}", auth))
    assert status == 200, body
    assert json.loads(body)["name"] == [{"family": "Live"}]

    status, outcome = _expunge(server, live_key, created["id"])
    assert status == 200, outcome
    assert outcome["resourceType"] == "OperationOutcome"
    status, _headers, body = server.exchange(_get(f"/fhir/R4/Patient/{created['id']}", auth))
    assert status == 404
    assert json.loads(body)["issue"][0]["code"] == "not-found"


def test_an_unknown_id_is_a_404_outcome(server: LiveServer, live_key: str) -> None:
    auth = f"Authorization: Bearer {live_key}\r\n"
    status, headers, body = server.exchange(_get("/fhir/R4/Patient/no-such-patient", auth))
    assert status == 404
    assert headers["content-type"].startswith("application/fhir+json")
    assert json.loads(body)["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("target", "status"), TRAVERSALS)
def test_traversal_payloads_on_the_wire(server: LiveServer, target: str, status: int) -> None:
    got, _headers, body = server.exchange(_get(target))
    assert got == status, (target, body)
    assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_a_large_declared_length_is_refused_before_the_body_is_sent(server: LiveServer) -> None:
    request = (
        b"POST /fhir/R4/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/fhir+json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )  # 100 MB promised, not one byte sent: a server that reads would wait
    started = time.monotonic()
    status, _headers, body = server.exchange(request, timeout=5)
    assert status == 413
    assert json.loads(body)["issue"][0]["code"] == "too-costly"
    assert time.monotonic() - started < 3


def test_a_body_longer_than_its_length_is_not_read_past_it(
    server: LiveServer, live_key: str
) -> None:
    """The first Content-Length bytes are a valid Patient; what follows is not JSON,
    so a server that read past the declared length would answer 400, not 201."""
    patient = b'{"resourceType": "Patient"}'
    request = _post("/fhir/R4/Patient", live_key, patient + b"x" * 100_000, len(patient))
    status, _headers, body = server.exchange(request)
    assert status == 201, body
    created = json.loads(body)
    assert created["resourceType"] == "Patient"
    assert _expunge(server, live_key, created["id"])[0] == 200


def test_a_chunked_body_is_411(server: LiveServer, live_key: str) -> None:
    request = (
        b"POST /fhir/R4/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {live_key}\r\n".encode()
        + b"Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    status, _headers, body = server.exchange(request)
    assert status == 411
    assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_a_key_in_the_url_is_refused_and_not_in_the_server_log(
    server: LiveServer, live_key: str
) -> None:
    status, _headers, _body = server.exchange(_get(f"/fhir/R4/Patient?api_key={live_key}"))
    assert status == 400
    time.sleep(0.2)  # anything the server would log about it is written by now
    log = server.output()
    assert "Started worker" in log  # the server's log is there, without request lines
    assert live_key not in log and tokens.random_part(live_key) not in log
    assert "api_key" not in log


def test_a_malformed_request_id_is_not_echoed(server: LiveServer) -> None:
    status, headers, _body = server.exchange(_get("/fhir/R4/metadata", "X-Request-ID: a<b>c\r\n"))
    assert status == 200
    assert headers["x-request-id"] != "a<b>c" and len(headers["x-request-id"]) == 32


def _outcome(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert headers["content-type"].startswith("application/fhir+json"), (status, body[:200])
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    return dict(outcome)


def test_a_long_search_url_is_served(server: LiveServer, live_key: str) -> None:
    """Long search URLs are normal in FHIR: 8 KB of query string is served."""
    auth = f"Authorization: Bearer {live_key}\r\n"
    ids = ",".join(f"{n:064d}" for n in range(100))  # 6,499 bytes
    identifiers = ",".join(f"urn:oid:1.2.3|{n:060d}" for n in range(50))  # 3,699 bytes
    target = f"/fhir/R4/Patient?_id={ids}&identifier={identifiers}"
    assert len(target) > 8192
    status, _headers, body = server.exchange(_get(target, auth))
    assert status == 200, body[:300]
    assert json.loads(body)["resourceType"] == "Bundle"


@pytest.mark.parametrize("path", ["/fhir/R4/Patient", "/fhir/R4/metadata"])
def test_an_oversized_url_is_a_414_outcome_pointing_to_post_search(
    server: LiveServer, live_key: str, path: str
) -> None:
    auth = f"Authorization: Bearer {live_key}\r\n"
    target = f"{path}?family=" + "x" * 40_000
    status, headers, body = server.exchange(_get(target, auth))
    assert status == 414
    outcome = _outcome(status, headers, body)
    assert outcome["issue"][0]["code"] == "too-costly"
    assert "POST [type]/_search" in outcome["issue"][0]["diagnostics"]
    assert headers["x-request-id"]


def test_oversized_headers_are_a_431_outcome(server: LiveServer, live_key: str) -> None:
    auth = f"Authorization: Bearer {live_key}\r\n"
    many = "".join(f"X-Filler-{n}: {'y' * 1000}\r\n" for n in range(40))  # 40 KB
    status, headers, body = server.exchange(_get("/fhir/R4/Patient", auth + many))
    assert status == 431
    assert _outcome(status, headers, body)["issue"][0]["code"] == "too-costly"
    one = f"X-Filler: {'y' * 40_000}\r\n"
    status, headers, body = server.exchange(_get("/fhir/R4/Patient", auth + one))
    assert status == 431
    _outcome(status, headers, body)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer " + "k" * 8192,
        "Bearer " + "k" * 60_000,
        "Basic " + "a" * 10_000,
        "Bearer",
        "bearer ck_live_" + "z" * 100,
        "Bearer \xff\xfe",
    ],
    ids=["8KB", "60KB", "basic", "no-token", "bad-checksum", "latin-1"],
)
def test_an_oversized_or_malformed_authorization_is_the_401_of_any_bad_key(
    server: LiveServer, authorization: str
) -> None:
    status, headers, body = server.exchange(
        _get("/fhir/R4/Patient", f"Authorization: {authorization}\r\n")
    )
    assert status == 401, body[:300]
    assert _outcome(status, headers, body)["issue"][0]["code"] == "login"
    assert headers["www-authenticate"].startswith('Bearer realm="ClinikAPI"')


def test_a_pooled_client_polling_at_retry_after_always_gets_an_answer(
    server: LiveServer, live_key: str
) -> None:
    """Issue 13, item 5: a bulk-export client on one pooled keep-alive connection
    kicks off, polls the status URL waiting what Retry-After says (2 s, the poll
    interval) and deletes it. Every request gets an answer (no retries allowed, so a
    connection the server closes under the client raises), on one connection: the
    server keeps an idle connection open longer than any Retry-After."""
    pool = urllib3.HTTPConnectionPool(
        "127.0.0.1", server.port, maxsize=1, block=True, retries=False
    )
    headers = {"Authorization": f"Bearer {live_key}", "Accept": "application/fhir+json"}
    kickoff = pool.request(
        "GET", "/fhir/R4/Patient/$export", headers={**headers, "Prefer": "respond-async"}
    )
    assert kickoff.status == 202, kickoff.data[:300]
    status_url = urlsplit(kickoff.headers["Content-Location"])
    target = f"{status_url.path}?{status_url.query}"
    answers = []
    for _ in range(4):
        response = pool.request("GET", target, headers=headers)
        answers.append(response.status)
        time.sleep(int(response.headers.get("Retry-After", "2")))
    deleted = pool.request("DELETE", target, headers=headers)
    assert deleted.status == 202, deleted.data[:300]
    assert set(answers) <= {200, 202, 429}, answers
    assert pool.num_connections == 1


def _form(target: str, key: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def test_compartment_and_system_search_by_post_on_the_wire(
    server: LiveServer, live_key: str
) -> None:
    """POST [compartment]/[id]/[type]/_search, [compartment]/[id]/_search and _search
    with a form body, through the HTTP server and the gateway: the GET answers."""
    auth = f"Authorization: Bearer {live_key}\r\n"
    patient = b'{"resourceType": "Patient", "name": [{"family": "Wireform"}]}'
    status, _headers, body = server.exchange(_post("/fhir/R4/Patient", live_key, patient))
    assert status == 201, body
    pid = json.loads(body)["id"]
    observation = json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
    ).encode()
    status, _headers, body = server.exchange(_post("/fhir/R4/Observation", live_key, observation))
    assert status == 201, body
    oid = json.loads(body)["id"]
    form = "application/x-www-form-urlencoded"
    for get, post, data in [
        (
            f"/fhir/R4/Patient/{pid}/Observation?code=8867-4",
            f"/fhir/R4/Patient/{pid}/Observation/_search",
            b"code=8867-4",
        ),
        (
            f"/fhir/R4/Patient/{pid}/*?_type=Observation",
            f"/fhir/R4/Patient/{pid}/_search",
            b"_type=Observation",
        ),
        (
            f"/fhir/R4/?_type=Observation&subject=Patient/{pid}",
            "/fhir/R4/_search",
            f"_type=Observation&subject=Patient/{pid}".encode(),
        ),
    ]:
        status, _headers, expected = server.exchange(_get(get, auth))
        assert status == 200, expected
        status, headers, body = server.exchange(_form(post, live_key, data, form))
        assert status == 200, body
        assert headers["content-type"].startswith("application/fhir+json")
        found = [e["resource"]["id"] for e in json.loads(body)["entry"]]
        assert found == [e["resource"]["id"] for e in json.loads(expected)["entry"]] == [oid]
    # A JSON body is 415, a bad value 400, each an OperationOutcome.
    target = f"/fhir/R4/Patient/{pid}/Observation/_search"
    status, headers, body = server.exchange(
        _form(target, live_key, b'{"code": 1}', "application/json")
    )
    assert status == 415
    assert _outcome(status, headers, body)["issue"][0]["code"] == "not-supported"
    status, headers, body = server.exchange(_form(target, live_key, b"date=notadate", form))
    assert status == 400
    _outcome(status, headers, body)
