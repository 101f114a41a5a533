"""gunicorn's error log (clinik/gunicorn_conf.py) never carries a query string or
the bytes of a request it could not parse: FHIR search values are PHI. The same
requests against gunicorn's own logger show that each of them would leak."""

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Doe-Secret-4711"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _send(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


REQUESTS = [
    # The WSGI call raises while gunicorn iterates the body: "Error handling request".
    f"GET /fhir/R4/metadata?family={SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "X-Fail-While-Streaming: 1\r\nConnection: close\r\n\r\n",
    # gunicorn cannot parse these: "Invalid request from ip=...: <what it read>".
    f"GET /fhir/R4/Patient?family={SECRET}\r\n\r\n",
    f"GET /fhir/R4/Patient?name=Jane {SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
]


def _gunicorn_output(*extra: str) -> str:
    """Start gunicorn with our configuration, send REQUESTS, stop it; all it wrote."""
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "tests.gunicorn_failing_app",
            "--config",
            "clinik/gunicorn_conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("gunicorn did not start") from None
                time.sleep(0.1)
        statuses = [_send(port, request.encode()).split(b" ", 2)[1] for request in REQUESTS]
        assert statuses == [b"500", b"400", b"400"]
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    return output


def test_the_error_log_keeps_paths_and_error_kinds_but_no_query_or_request_bytes() -> None:
    output = _gunicorn_output()
    assert "Error handling request GET /fhir/R4/metadata\n" in output
    assert "RuntimeError" in output  # the traceback, without its message
    assert "Invalid request from ip=127.0.0.1: Invalid HTTP request line" in output
    assert "Invalid request from ip=127.0.0.1: Invalid HTTP Version" in output
    assert '"GET /fhir/R4/metadata"' in output  # the access log line
    assert SECRET not in output
    assert "family=" not in output and "name=" not in output


def test_gunicorns_own_logger_would_leak_each_of_them() -> None:
    output = _gunicorn_output("--logger-class", "gunicorn.glogging.Logger")
    leaks = [line for line in output.splitlines() if SECRET in line]
    assert any(
        line.endswith(f"Error handling request GET /fhir/R4/metadata?family={SECRET}")
        for line in leaks
    ), output
    assert any("Invalid HTTP request line" in line for line in leaks)
    assert any("Invalid HTTP Version" in line for line in leaks)
    assert any(line.startswith("RuntimeError: the stream failed for") for line in leaks)
