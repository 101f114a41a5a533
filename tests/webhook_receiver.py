"""A local HTTP receiver for webhook tests: records what it gets and answers the
status codes it is told to, in order (the last one repeats)."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=lambda: [200])
    location: str = ""
    requests: list[Received] = field(default_factory=list)

    def answer(self) -> int:
        index = min(len(self.requests) - 1, len(self.statuses) - 1)
        return self.statuses[index]


def _serve(receiver_box: list[Receiver]) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            receiver = receiver_box[0]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            status = receiver.answer()
            self.send_response(status)
            if receiver.location:
                self.send_header("Location", receiver.location)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@contextmanager
def serving() -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 and a free port, for the test's duration."""
    box: list[Receiver] = []
    server, thread = _serve(box)
    box.append(Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook"))
    try:
        yield box[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
