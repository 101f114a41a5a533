"""The gateway under a real gunicorn (clinik/gunicorn_conf.py) serving the real FHIR
views, spoken to over raw sockets: raw request targets (RAW_URI) instead of the test
client's decoded paths, declared lengths that lie, chunked bodies. The key used is
committed for the module so the server's own database connection can see it."""

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connections

from clinik.accounts.models import Organization
from clinik.keys import tokens
from clinik.keys.models import ApiKey
from tests.test_gateway_paths import TRAVERSALS

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _database_url() -> str:
    parts = urlsplit(settings.DATABASE_URL)
    name = connections["default"].settings_dict["NAME"]
    return urlunsplit(parts._replace(path=f"/{name}"))


class Server:
    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log

    def exchange(self, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        """Send bytes as they are; read one response (status, headers, body)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
        return status, headers, body[:length]


@pytest.fixture(scope="module")
def server(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = _free_port()
    log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "4",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "clinik.wsgi",
                "--config",
                "clinik/gunicorn_conf.py",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield Server(port, log)
    finally:
        process.terminate()
        process.wait(timeout=10)


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


def _expunge(server: Server, key: str, resource_id: str) -> tuple[int, dict[str, Any]]:
    """`$expunge` sent as `%24expunge`: the one escape the path guard lets through."""
    status, _headers, body = server.exchange(
        _post(f"/fhir/R4/Patient/{resource_id}/%24expunge", key, b"")
    )
    return status, json.loads(body)


def test_metadata_is_served_without_a_key(server: Server) -> None:
    status, headers, body = server.exchange(_get("/fhir/R4/metadata"))
    assert status == 200, body
    assert json.loads(body)["resourceType"] == "CapabilityStatement"
    assert headers["x-request-id"]


def test_an_authenticated_request_is_served(server: Server, live_key: str) -> None:
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


def test_an_unknown_id_is_a_404_outcome(server: Server, live_key: str) -> None:
    auth = f"Authorization: Bearer {live_key}\r\n"
    status, headers, body = server.exchange(_get("/fhir/R4/Patient/no-such-patient", auth))
    assert status == 404
    assert headers["content-type"].startswith("application/fhir+json")
    assert json.loads(body)["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("target", "status"), TRAVERSALS)
def test_traversal_payloads_on_the_wire(server: Server, target: str, status: int) -> None:
    got, _headers, body = server.exchange(_get(target))
    assert got == status, (target, body)
    assert json.loads(body)["resourceType"] == "OperationOutcome"


def test_a_large_declared_length_is_refused_before_the_body_is_sent(server: Server) -> None:
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


def test_a_body_longer_than_its_length_is_not_read_past_it(server: Server, live_key: str) -> None:
    """The first Content-Length bytes are a valid Patient; what follows is not JSON,
    so a server that read past the declared length would answer 400, not 201."""
    patient = b'{"resourceType": "Patient"}'
    request = _post("/fhir/R4/Patient", live_key, patient + b"x" * 100_000, len(patient))
    status, _headers, body = server.exchange(request)
    assert status == 201, body
    created = json.loads(body)
    assert created["resourceType"] == "Patient"
    assert _expunge(server, live_key, created["id"])[0] == 200


def test_a_chunked_body_is_411(server: Server, live_key: str) -> None:
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


def test_a_key_in_the_url_is_refused_and_not_in_the_access_log(
    server: Server, live_key: str
) -> None:
    status, _headers, _body = server.exchange(_get(f"/fhir/R4/Patient?api_key={live_key}"))
    assert status == 400
    time.sleep(0.2)  # the access log line is written after the response
    log = server.log.read_text()
    assert "/fhir/R4/Patient" in log
    assert live_key not in log and tokens.random_part(live_key) not in log


def test_a_malformed_request_id_is_not_echoed(server: Server) -> None:
    status, headers, _body = server.exchange(_get("/fhir/R4/metadata", "X-Request-ID: a<b>c\r\n"))
    assert status == 200
    assert headers["x-request-id"] != "a<b>c" and len(headers["x-request-id"]) == 32
