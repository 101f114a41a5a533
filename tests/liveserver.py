"""The production web server (clinik/serve.py: granian) started for a test, on a free
port, against the test database and Redis, and spoken to over raw sockets.

    with serve() as server:                  # clinik.wsgi, 1 worker x 4 threads
        status, headers, body = server.exchange(b"GET /fhir/R4/metadata HTTP/1.1...")

`serve(app=...)` serves another WSGI target the same way; `server.output()` is all
the server wrote (its log), read after the requests. Data a test wants the server to
see must be committed (the server has its own database connections).
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import connections

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """DATABASE_URL naming the test database pytest-django created."""
    parts = urlsplit(settings.DATABASE_URL)
    name = connections["default"].settings_dict["NAME"]
    return urlunsplit(parts._replace(path=f"/{name}"))


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (or none): status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection after {data[:200]!r}")
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


class LiveServer:
    def __init__(self, port: int, log: Path, process: subprocess.Popen[bytes]) -> None:
        self.port, self.log, self.process = port, log, process

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def exchange(self, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        """Send bytes as they are; read one response (status, headers, body)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(request)
            return read_response(sock)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serve(
    log_dir: Path,
    app: str = "clinik.wsgi:application",
    env: dict[str, str] | None = None,
    threads: int = 4,
    command: list[str] | None = None,
) -> Iterator[LiveServer]:
    """The server as production starts it (`python -m clinik.serve`), one worker;
    `command` replaces the command line (with {port} and {app} filled in)."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    environment = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": str(threads),
        **(env or {}),
    }
    argv = (
        [part.format(port=port, app=app) for part in command]
        if command
        else [sys.executable, "-m", "clinik.serve", "--app", app]
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # Ready when a worker answers (the port is bound before the workers start).
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(b"OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    read_response(sock)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield LiveServer(port, log, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
