"""A small pooled HTTP/1.1 client for one origin: keep-alive connections with connect
and read timeouts, Content-Length and chunked bodies, TLS with the system's CAs.

For hot paths where urllib3 and http.client's per-request work (header objects, the
email parser on every response) costs more CPU than the call itself: the HealthLake
store spent about 0.6 ms of CPU per call there, this client about a tenth of it.
Nothing here logs: URLs and bodies may carry PHI."""

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
_NO_BODY = frozenset({204, 304})


class HttpFailure(Exception):
    """The call failed at the connection: refused, reset, timed out or a malformed
    answer. Whether the server acted on it is unknown."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    data: bytes


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.received = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise HttpFailure("the connection closed before the answer was complete")
        self.received += len(chunk)
        self.buffer += chunk

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise HttpFailure("an answer line is too long")
            self._more()
        line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self._line().split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._exactly(size))
            if self._exactly(2) != b"\r\n":
                raise HttpFailure("a malformed chunk")

    def _until_closed(self) -> bytes:
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                data, self.buffer = self.buffer, b""
                return data
            self.received += len(chunk)
            self.buffer += chunk

    def response(self, method: str) -> tuple[Response, bool]:
        """The answer and whether the connection may be used again."""
        while True:
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if len(self.buffer) > _MAX_HEAD:
                    raise HttpFailure("the answer's head is too long")
                self._more()
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            lines = head.split(b"\r\n")
            version, _, rest = lines[0].partition(b" ")
            try:
                status = int(rest[:3])
            except ValueError:
                raise HttpFailure("a malformed status line") from None
            if status >= 200 or status == 101:
                break  # 1xx interim answers (100 Continue) are skipped
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode("latin-1")
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        reusable = version == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if method == "HEAD" or status in _NO_BODY or status < 200:
            data = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            data = self._chunked()
        elif "content-length" in headers:
            try:
                data = self._exactly(int(headers["content-length"]))
            except ValueError:
                raise HttpFailure("a malformed Content-Length") from None
        else:
            data, reusable = self._until_closed(), False
        return Response(status, headers, data), reusable


class Origin:
    """Requests to one origin (`https://host[:port]`) over pooled keep-alive
    connections. Thread-safe: a connection serves one request at a time."""

    def __init__(
        self,
        origin: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        pool_size: int = 10,
        context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http or https origin is needed")
        self.hostname = parts.hostname
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        default = self.port == (443 if self.tls else 80)
        self.host = self.hostname if default else f"{self.hostname}:{self.port}"
        """The Host header (as botocore signs it: the port only when not the default)."""
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_size = pool_size
        self.context = context or (ssl.create_default_context() if self.tls else None)
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> _Connection:
        try:
            sock = socket.create_connection(
                (self.hostname, self.port), timeout=self.connect_timeout
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.hostname)
            sock.settimeout(self.read_timeout)
        except OSError as error:
            raise HttpFailure(f"cannot connect: {type(error).__name__}") from None
        return _Connection(sock)

    def _take(self) -> _Connection | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _give(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | None = None,
        *,
        reuse: bool = True,
    ) -> Response:
        """One request (`target`: path and query). With `reuse`, a pooled connection
        the server closed meanwhile is replaced once by a new one when nothing came
        back on it; without, the request goes on a new connection (a request that must
        not be sent twice)."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = "\r\n".join(lines)
        if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
            raise ValueError("a request line or header holds a line break")
        message = (head + "\r\n\r\n").encode("latin-1") + (body or b"")
        for attempt in range(2):
            connection = self._take() if reuse and attempt == 0 else None
            stale_possible = connection is not None
            connection = connection or self._connect()
            connection.received = 0
            try:
                connection.sock.sendall(message)
                answer, reusable = connection.response(method)
            except (OSError, HttpFailure) as error:
                connection.close()
                if stale_possible and not connection.received and _stale(error):
                    continue  # the server closed an idle connection: once more, anew
                if isinstance(error, TimeoutError | socket.timeout):
                    raise HttpFailure("timed out") from None
                raise HttpFailure(f"the connection failed: {type(error).__name__}") from None
            if reusable and not connection.buffer:
                self._give(connection)
            else:
                connection.close()
            return answer
        raise HttpFailure("the connection failed")  # unreachable: the 2nd try raises


def _stale(error: BaseException) -> bool:
    """An idle keep-alive connection the server had closed (no answer at all)."""
    if isinstance(error, HttpFailure):
        return "closed before" in str(error)
    return isinstance(error, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)
