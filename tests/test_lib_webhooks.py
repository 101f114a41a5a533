"""clinik.lib.webhooks: signatures, and the SSRF guard with production settings
(allow_private=False). Nothing here sends traffic off the machine: refused endpoints
are refused before any connection, and the receivers listen on 127.0.0.1."""

from collections.abc import Iterator
from typing import Any

import pytest

from clinik.lib import webhooks
from tests.webhook_receiver import Receiver, serving

PRODUCTION: dict[str, Any] = {"allow_private": False, "connect_timeout": 2, "read_timeout": 2}
DEVELOPMENT: dict[str, Any] = {"allow_private": True, "connect_timeout": 2, "read_timeout": 2}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


def test_the_signature_is_stripes_scheme_and_verifies():
    header = webhooks.sign("whsec_x", b'{"a":1}', 1700000000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert webhooks.verify("whsec_x", b'{"a":1}', header, now=1700000010)
    assert not webhooks.verify("whsec_x", b'{"a":2}', header, now=1700000010)
    assert not webhooks.verify("whsec_y", b'{"a":1}', header, now=1700000010)
    assert not webhooks.verify("whsec_x", b'{"a":1}', header, now=1700000000 + 3600)
    assert not webhooks.verify("whsec_x", b"", "garbage")


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://[fd00::1]/hook",
        "https://[::ffff:10.0.0.1]/hook",
        "https://0.0.0.0/hook",
        "http://example.org/hook",  # not https
        "http://127.0.0.1:9/hook",  # http to loopback: development only
        "https://user:pw@example.org/hook",
        "ftp://example.org/",
        "not a url",
    ],
)
def test_production_refuses_non_public_or_non_https_endpoints(url):
    with pytest.raises(webhooks.EndpointRefused):
        webhooks.check_url(url, allow_private=False)


def test_a_public_https_endpoint_passes_the_static_check():
    assert webhooks.check_url("https://hooks.example.org/x?y=1", allow_private=False) == (
        "https",
        "hooks.example.org",
        443,
    )


def test_a_name_resolving_to_a_private_address_is_refused():
    with pytest.raises(webhooks.EndpointRefused):
        webhooks.resolve("localhost", 443, allow_private=False)
    assert webhooks.resolve("localhost", 443, allow_private=True) in ("127.0.0.1", "::1")


def test_post_refuses_a_private_name_before_connecting(receiver):
    port = receiver.url.split(":")[2].split("/")[0]
    with pytest.raises(webhooks.EndpointRefused):
        webhooks.post(f"https://localhost:{port}/hook", b"{}", {}, **PRODUCTION)
    with pytest.raises(webhooks.EndpointRefused):
        webhooks.post(receiver.url, b"{}", {}, **PRODUCTION)  # http://127.0.0.1
    assert receiver.requests == []


def test_redirects_are_never_followed(receiver, second_receiver):
    receiver.statuses = [302]
    receiver.location = second_receiver.url
    result = webhooks.post(receiver.url, b"{}", {"Content-Type": "application/json"}, **DEVELOPMENT)
    assert result.status == 302
    assert len(receiver.requests) == 1
    assert second_receiver.requests == []


def test_the_answer_is_read_only_up_to_a_limit_and_timeouts_hold():
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    done = threading.Event()

    def silent() -> None:
        conn, _ = listener.accept()
        done.wait(10)  # never answers
        conn.close()

    thread = threading.Thread(target=silent, daemon=True)
    thread.start()
    result = webhooks.post(
        f"http://127.0.0.1:{port}/",
        b"{}",
        {},
        allow_private=True,
        connect_timeout=1,
        read_timeout=1,
    )
    assert (result.status, result.error) == (None, "timeout")
    done.set()
    thread.join(5)
    listener.close()


def test_a_closed_port_is_a_network_error():
    probe = socket_port()
    result = webhooks.post(f"http://127.0.0.1:{probe}/", b"{}", {}, **DEVELOPMENT)
    assert (result.status, result.error) == (None, "network")


def socket_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for `localhost` (and 127.0.0.1), written as PEM files."""
    from datetime import UTC, datetime, timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_https_checks_the_certificate_against_the_name_on_the_pinned_address(receiver, tmp_path):
    """TLS to a local HTTPS receiver: connected to the resolved address, the
    certificate verified for the URL's host name (SNI); an untrusted one fails."""
    import socket
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    cert, key = _self_signed(tmp_path)
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers["Host"])
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    address = webhooks.resolve("localhost", 443, allow_private=True)  # where post connects

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = Server((address, 0), Handler)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        trusted = ssl.create_default_context(cafile=cert)
        url = f"https://localhost:{port}/hook"
        ok = webhooks.post(url, b"{}", {}, ssl_context=trusted, **DEVELOPMENT)
        assert ok.status == 200
        assert seen == [f"localhost:{port}"]
        untrusted = webhooks.post(
            url, b"{}", {}, ssl_context=ssl.create_default_context(), **DEVELOPMENT
        )
        assert (untrusted.status, untrusted.error) == (None, "tls")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
