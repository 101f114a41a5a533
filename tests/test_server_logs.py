"""What the production web server (clinik/serve.py) writes: no line per request (API
requests are in the request log) and nothing from a request's target or values, even
when a response body fails while streaming or a request cannot be parsed. FHIR
search values are PHI. The same requests against granian with its own logging show
what would leak."""

import socket
import sys
from pathlib import Path

import pytest

from tests.liveserver import LiveServer, serve

SECRET = "Doe-Secret-4711"

REQUESTS = [
    # The WSGI body raises while the server iterates it.
    f"GET /fhir/R4/metadata?family={SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "X-Fail-While-Streaming: 1\r\nConnection: close\r\n\r\n",
    # Dashboard and API requests with PHI in the query string.
    f"GET /security?family={SECRET}&birthdate=1970-01-01 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "Connection: close\r\n\r\n",
    f"GET /fhir/R4/Patient?family={SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "Connection: close\r\n\r\n",
    # The server cannot parse these.
    f"GET /fhir/R4/Patient?family={SECRET}\r\n\r\n",
    f"GET /fhir/R4/Patient?name=Jane {SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
]


def _send_all(server: LiveServer) -> list[bytes]:
    statuses = []
    for request in REQUESTS:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(request.encode())
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        statuses.append(data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else b"closed")
    return statuses


def _output(tmp_path: Path, command: list[str] | None = None) -> tuple[list[bytes], str]:
    env = {"LOG_LEVEL": "INFO"}
    with serve(tmp_path, app="tests.failing_app:application", env=env, command=command) as server:
        statuses = _send_all(server)
    return statuses, server.output()


@pytest.mark.django_db
def test_the_server_log_has_no_request_lines_and_no_request_values(tmp_path: Path) -> None:
    statuses, output = _output(tmp_path)
    assert statuses[1:3] == [b"200", b"401"], statuses
    assert all(status in (b"400", b"closed") for status in statuses[3:]), statuses
    assert "Started worker" in output or "Listening" in output  # the log is there
    assert "RuntimeError" in output  # the failed stream is logged, without its message
    assert SECRET not in output
    assert "family=" not in output and "birthdate" not in output and "name=" not in output
    assert "/security" not in output  # no access log line


@pytest.mark.django_db
def test_granians_own_logging_would_leak_the_failed_streams_message(tmp_path: Path) -> None:
    granian = str(Path(sys.executable).parent / "granian")
    command = [granian, "--interface", "wsgi", "--port", "{port}", "--workers", "1", "{app}"]
    _statuses, output = _output(tmp_path, command)
    assert f"the stream failed for family={SECRET}" in output, output
