"""Outgoing webhooks: the signature scheme and an SSRF-safe POST.

Signature (Stripe's scheme): `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

`post` resolves the endpoint's host at every call, refuses private, loopback,
link-local (cloud metadata), unique-local and other non-public addresses unless
`allow_private`, and connects to the very address it checked (no second lookup a
DNS rebinding could answer differently). It never follows a redirect, enforces
connect and read timeouts, and reads at most a few bytes of the answer, which it
discards."""

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

RESPONSE_LIMIT = 4096


class EndpointRefused(Exception):
    """The endpoint may not be called (a message safe to show: it names no address)."""


@dataclass
class PostResult:
    status: int | None  # None: no HTTP answer (network error, timeout, refused)
    latency_ms: int
    error: str = ""  # a short class of failure, never a body or an address


def sign(secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance: int = 300
) -> bool:
    """Check a signature header as a receiver would (the README's samples do the same)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _is_public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_private: bool) -> tuple[str, str, int]:
    """(scheme, host, port) of an endpoint that may be called, as far as the URL alone
    tells: https (http only to loopback, and only when allow_private), no user info,
    and no literal address that is not public (names are checked at every POST)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EndpointRefused("the endpoint is not a valid URL") from None
    host = (parts.hostname or "").lower()
    if not host or parts.scheme not in ("http", "https"):
        raise EndpointRefused("the endpoint must be an https:// URL")
    if parts.username or parts.password:
        raise EndpointRefused("the endpoint must not carry credentials")
    if parts.scheme == "http" and not (allow_private and _is_loopback_host(host)):
        raise EndpointRefused("the endpoint must be https (http only to loopback in development)")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not allow_private and not _is_public(literal):
        raise EndpointRefused("the endpoint's address is not a public address")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to. Every address the name resolves to must be public
    (one private answer among public ones is how rebinding attacks hide)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise EndpointRefused("the endpoint's host name does not resolve") from None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise EndpointRefused("the endpoint's host name does not resolve")
    if not allow_private:
        for address in addresses:
            if not _is_public(ipaddress.ip_address(address.split("%", 1)[0])):
                raise EndpointRefused("the endpoint resolves to an address that is not public")
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # The certificate is checked against the name, the socket goes to the address.
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host)


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    connect_timeout: float,
    read_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> PostResult:
    """POST body to url. Raises EndpointRefused before any connection when the
    endpoint may not be called; otherwise returns the status (or a failure class)."""
    scheme, host, port = check_url(url, allow_private=allow_private)
    address = resolve(host, port, allow_private=allow_private)
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if scheme == "https":
        context = ssl_context or ssl.create_default_context()
        connection = _PinnedHTTPSConnection(host, port, address, connect_timeout, context)
    else:
        connection = _PinnedHTTPConnection(host, port, address, connect_timeout)
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        connection.connect()
        if connection.sock is not None:
            connection.sock.settimeout(read_timeout)
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(RESPONSE_LIMIT)  # read a little so the server sees us finish; dropped
        return PostResult(response.status, elapsed())
    except TimeoutError:
        return PostResult(None, elapsed(), "timeout")
    except ssl.SSLError:
        return PostResult(None, elapsed(), "tls")
    except (OSError, http.client.HTTPException):
        return PostResult(None, elapsed(), "network")
    finally:
        connection.close()
