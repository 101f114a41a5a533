"""clinik.lib.keepalive against a local raw-socket server: Content-Length, chunked and
close-delimited bodies, keep-alive reuse, an idle connection the server closed,
timeouts, and headers that would split the request."""

import socket
import threading
from collections.abc import Iterator

import pytest

from clinik.lib.keepalive import HttpFailure, Origin


class RawServer:
    """Answers each request with the next scripted bytes; None closes at once."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        0,
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + body)
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    conn.sendall(answer)
                    if b"Connection: close" in answer or (
                        b"Content-Length" not in answer and (b"chunked" not in answer)
                    ):
                        break

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture
def server(request) -> Iterator[RawServer]:
    raw = RawServer(list(request.param))
    yield raw
    raw.stop()


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
CHUNKED = (
    b'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nETag: W/"1"\r\n\r\n'
    b'4\r\n{"a"\r\n3;x=y\r\n:1}\r\n0\r\nTrailer: t\r\n\r\n'
)
CLOSED = b"HTTP/1.0 200 OK\r\n\r\nuntil close"


@pytest.mark.parametrize("server", [[OK, CHUNKED, OK]], indirect=True)
def test_bodies_and_keep_alive(server: RawServer) -> None:
    origin = Origin(server.origin, connect_timeout=2, read_timeout=2)
    first = origin.request("GET", "/a?x=1", {"Accept": "application/fhir+json"})
    assert (first.status, first.data) == (200, b"{}")
    second = origin.request("PUT", "/b", {"Content-Type": "application/json"}, b'{"x":1}')
    assert (second.status, second.data, second.headers["etag"]) == (201, b'{"a":1}', 'W/"1"')
    third = origin.request("DELETE", "/c", {})
    assert third.status == 200
    assert server.connections == 1  # one connection kept alive for all three
    assert server.requests[0].startswith(b"GET /a?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert server.requests[1].endswith(b'Content-Length: 7\r\n\r\n{"x":1}')


@pytest.mark.parametrize("server", [[CLOSED, OK]], indirect=True)
def test_a_body_until_close_is_read_and_the_connection_not_reused(server: RawServer) -> None:
    origin = Origin(server.origin, connect_timeout=2, read_timeout=2)
    assert origin.request("GET", "/", {}).data == b"until close"
    assert origin.request("GET", "/", {}).data == b"{}"
    assert server.connections == 2


@pytest.mark.parametrize("server", [[OK, None, OK]], indirect=True)
def test_an_idle_connection_the_server_closed_is_replaced_once(server: RawServer) -> None:
    origin = Origin(server.origin, connect_timeout=2, read_timeout=2)
    assert origin.request("GET", "/", {}).status == 200
    # The server drops the kept connection without answering: sent again, anew.
    assert origin.request("GET", "/", {}).status == 200
    assert server.connections == 2


@pytest.mark.parametrize("server", [[None]], indirect=True)
def test_a_request_that_must_not_repeat_is_sent_once(server: RawServer) -> None:
    origin = Origin(server.origin, connect_timeout=2, read_timeout=2)
    with pytest.raises(HttpFailure):  # the server reads it and closes without answering
        origin.request("POST", "/", {}, b"{}", reuse=False)
    assert len(server.requests) == 1 and server.connections == 1


def test_timeouts_and_refused_connections_fail_cleanly() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        origin = Origin(
            f"http://127.0.0.1:{silent.getsockname()[1]}", connect_timeout=1, read_timeout=0.2
        )
        with pytest.raises(HttpFailure, match="timed out"):
            origin.request("GET", "/", {})
    finally:
        silent.close()
    with pytest.raises(HttpFailure, match="cannot connect"):  # port 1: nothing listens
        Origin("http://127.0.0.1:1", connect_timeout=1, read_timeout=1).request("GET", "/", {})


def test_a_header_cannot_split_the_request() -> None:
    origin = Origin("http://127.0.0.1:1", connect_timeout=1, read_timeout=1)
    with pytest.raises(ValueError):
        origin.request("GET", "/", {"X-Evil": "a\r\nInjected: 1"})
    with pytest.raises(ValueError):
        origin.request("GET", "/ HTTP/1.1\nX: y", {})
    assert Origin("https://example.test", connect_timeout=1, read_timeout=1).host == "example.test"
