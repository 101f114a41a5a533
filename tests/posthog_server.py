"""A local HTTP server standing in for PostHog's capture endpoints.

It answers every POST (the Python SDK's /batch/, posthog-js's /e/ and /i/v0/e/) with
PostHog's `{"status": 1}`, answers CORS preflights like PostHog does, and keeps every
request: method, path, headers and the decoded body, so tests can read exactly what
left the application."""

import contextlib
import gzip
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Captured:
    method: str
    path: str
    headers: dict[str, str]
    body: str
    events: list[dict[str, Any]] = field(default_factory=list)


def _events(payload: Any) -> list[dict[str, Any]]:
    if isinstance(payload, list):
        return [e for e in payload if isinstance(e, dict)]
    if isinstance(payload, dict):
        if "batch" in payload:
            return _events(payload["batch"])
        if "event" in payload:
            return [payload]
    return []


class PostHogServer:
    def __init__(self) -> None:
        self.requests: list[Captured] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _cors(self) -> None:
                origin = self.headers.get("Origin") or "*"
                self.send_header("Access-Control-Allow-Origin", origin)
                self.send_header("Access-Control-Allow-Credentials", "true")
                self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
                self.send_header("Access-Control-Allow-Headers", "*")

            def _answer(self, body: bytes = b'{"status": 1}') -> None:
                self.send_response(200)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self, body: bytes) -> None:
                if body[:2] == b"\x1f\x8b":
                    body = gzip.decompress(body)
                text = body.decode("utf-8", "replace")
                events: list[dict[str, Any]] = []
                with contextlib.suppress(ValueError):
                    events = _events(json.loads(text))
                item = Captured(self.command, self.path, dict(self.headers), text, events)
                with owner._lock:
                    owner.requests.append(item)

            def do_OPTIONS(self) -> None:
                self._record(b"")
                self.send_response(204)
                self._cors()
                self.end_headers()

            def do_GET(self) -> None:
                self._record(b"")
                self._answer(b"{}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._record(self.rfile.read(length))
                self._answer()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> "PostHogServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for r in self.requests for e in r.events]

    def raw(self) -> str:
        with self._lock:
            return "\n".join(f"{r.path}\n{r.headers}\n{r.body}" for r in self.requests)
