"""clinik.lib.jwtverify against the local GoTrue server's JWKS, with real RS256/ES256
keys: what is accepted, and every way a token is refused."""

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from clinik.lib.jwtverify import InvalidToken, JwksVerifier
from tests.supabase_fake import FakeGoTrue, new_key


@pytest.fixture
def fake() -> Iterator[FakeGoTrue]:
    server = FakeGoTrue()
    yield server
    server.close()


def _verifier(fake: FakeGoTrue, **kw: Any) -> JwksVerifier:
    return JwksVerifier(f"{fake.issuer}/.well-known/jwks.json", fake.issuer, "authenticated", **kw)


def _claims(fake: FakeGoTrue, **over: Any) -> dict[str, Any]:
    user = fake.add_user("a@b.test", "pw")
    return {**fake.claims_for(user, "password"), **over}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_rs256_and_es256_tokens_verify(fake: FakeGoTrue) -> None:
    verifier = _verifier(fake, refetch_seconds=0)
    claims = _claims(fake)
    assert verifier.verify(fake.sign(claims))["sub"] == claims["sub"]
    fake.rotate("ES256", keep_old=True)
    assert verifier.verify(fake.sign(claims))["sub"] == claims["sub"]


@pytest.mark.parametrize(
    "change",
    [
        {"exp": int(time.time()) - 60},
        {"aud": "anon-other"},
        {"iss": "https://evil.example/auth/v1"},
        {"sub": ""},
    ],
    ids=["expired", "wrong-aud", "wrong-iss", "no-sub"],
)
def test_bad_claims_are_refused(fake: FakeGoTrue, change: dict[str, Any]) -> None:
    token = fake.sign(_claims(fake, **change))
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(token)


def test_missing_exp_is_refused(fake: FakeGoTrue) -> None:
    claims = _claims(fake)
    del claims["exp"]
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(fake.sign(claims))


def test_a_tampered_token_is_refused(fake: FakeGoTrue) -> None:
    token = fake.sign(_claims(fake))
    header, payload, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["sub"] = "someone-else"
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(f"{header}.{_b64(forged)}.{signature}")
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(f"{header}.{payload}.{signature[:-4]}AAAA")


def test_alg_none_is_refused(fake: FakeGoTrue) -> None:
    kid = fake.keys[0].kid
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_b64(_claims(fake))}."
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(token)


def test_hs256_signed_with_the_public_key_is_refused(fake: FakeGoTrue) -> None:
    # HS/RS confusion: the RSA public key (public, in the JWKS) used as an HMAC secret.
    from cryptography.hazmat.primitives import serialization

    public_pem = (
        fake.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT", "kid": fake.keys[0].kid})
    body = _b64(_claims(fake))
    mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
    token = f"{header}.{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(token)  # no HS256 secret configured
    with pytest.raises(InvalidToken):
        _verifier(fake, hs256_secret="the-legacy-secret-of-this-project-123456").verify(token)


def test_legacy_hs256_secret_verifies_only_when_configured(fake: FakeGoTrue) -> None:
    secret = "the-legacy-secret-of-this-project-123456"
    token = jwt.encode(_claims(fake), secret, algorithm="HS256")
    assert _verifier(fake, hs256_secret=secret).verify(token)["aud"] == "authenticated"
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(token)


def test_rs256_header_with_an_ec_key_id_is_refused(fake: FakeGoTrue) -> None:
    ec = fake.rotate("ES256", keep_old=True)
    rsa = fake.keys[1]
    token = jwt.encode(_claims(fake), rsa.private, algorithm="RS256", headers={"kid": ec.kid})
    with pytest.raises(InvalidToken):
        _verifier(fake).verify(token)


def test_a_new_key_is_fetched_and_a_rotated_out_key_is_refused(fake: FakeGoTrue) -> None:
    verifier = _verifier(fake, refetch_seconds=0)
    claims = _claims(fake)
    old = fake.keys[0]
    old_token = fake.sign(claims)
    assert verifier.verify(old_token)
    fetches = fake.calls.count("GET /.well-known/jwks.json")
    assert verifier.verify(fake.sign(claims))  # warm cache: no fetch
    assert fake.calls.count("GET /.well-known/jwks.json") == fetches
    new = fake.rotate()  # the provider drops the old key
    assert verifier.verify(fake.sign(claims, new))  # unknown kid: refetched
    assert fake.calls.count("GET /.well-known/jwks.json") == fetches + 1
    with pytest.raises(InvalidToken):
        verifier.verify(fake.sign(claims, old))


def test_the_cache_expires_so_a_silently_removed_key_stops_verifying(fake: FakeGoTrue) -> None:
    verifier = _verifier(fake, ttl_seconds=0)  # every verification finds the cache stale
    claims = _claims(fake)
    fake.rotate(keep_old=True)
    old = fake.keys[1]
    assert verifier.verify(fake.sign(claims, old))
    fake.keys = fake.keys[:1]  # removed; the verifier is not told
    with pytest.raises(InvalidToken):
        verifier.verify(fake.sign(claims, old))


def test_random_kids_do_not_hammer_the_provider(fake: FakeGoTrue) -> None:
    verifier = _verifier(fake, refetch_seconds=60)
    claims = _claims(fake)
    verifier.verify(fake.sign(claims))
    for _ in range(20):
        with pytest.raises(InvalidToken):
            verifier.verify(fake.sign(claims, new_key()))
    assert fake.calls.count("GET /.well-known/jwks.json") == 1


def test_an_unreachable_jwks_refuses_tokens() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free, and nobody listens once closed
    verifier = JwksVerifier(f"http://127.0.0.1:{port}/jwks.json", "iss", "authenticated")
    with pytest.raises(InvalidToken):
        verifier.verify(jwt.encode({"sub": "x"}, new_key().private, algorithm="RS256"))
