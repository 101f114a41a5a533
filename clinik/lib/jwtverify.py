"""Verify an identity provider's access tokens ourselves (Supabase Auth).

A token is accepted only when its signature checks against a key of the provider's
JWKS (asymmetric: RS256, ES256, EdDSA) or, for legacy projects, the shared HS256
secret, and its `iss`, `aud`, `exp` and `sub` claims hold. The algorithm family is
decided by the key, never by the token: an RSA key only verifies RS256, the HS256
secret is used only when configured, and `alg: none` never verifies anything.

The JWKS is cached in the process: a token with a `kid` the cache does not know
refetches it (at most once per `refetch_seconds`, so random kids cannot hammer the
provider), and the cache is refetched anyway after `ttl_seconds`, so a key the
provider rotated out stops verifying then.
"""

import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

ASYMMETRIC = {"RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "ES256": "EC", "EdDSA": "OKP"}


class InvalidToken(Exception):
    """The token is not one we accept (its message names the reason, never the token)."""


@dataclass
class JwksVerifier:
    jwks_url: str
    issuer: str
    audience: str
    hs256_secret: str = ""
    ttl_seconds: float = 600.0
    refetch_seconds: float = 5.0
    leeway_seconds: float = 5.0
    fetch_timeout: float = 5.0
    _keys: dict[str, tuple[str, Any]] = field(default_factory=dict, repr=False)
    _fetched_at: float = field(default=float("-inf"), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError("the JWKS URL must be http(s)")

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or InvalidToken."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed") from None
        alg = header.get("alg")
        if alg == "HS256" and self.hs256_secret:
            key: Any = self.hs256_secret
        elif alg in ASYMMETRIC and self.jwks_url:
            key = self._key_for(str(header.get("kid") or ""), ASYMMETRIC[alg])
        else:
            raise InvalidToken("algorithm not accepted")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise InvalidToken("no subject")
        return claims

    def _key_for(self, kid: str, kty: str) -> Any:
        now = time.monotonic()
        age = now - self._fetched_at
        if age > self.ttl_seconds or (kid not in self._keys and age > self.refetch_seconds):
            self._refresh(now)
        found = self._keys.get(kid)
        if found is None or found[0] != kty:
            raise InvalidToken("unknown key")
        return found[1]

    def _refresh(self, now: float) -> None:
        with self._lock:
            if self._fetched_at >= now:
                return  # another thread refreshed meanwhile
            request = urllib.request.Request(self.jwks_url)  # noqa: S310 (http(s) only, checked)
            try:
                with urllib.request.urlopen(request, timeout=self.fetch_timeout) as response:  # noqa: S310
                    document = json.loads(response.read())
            except (OSError, ValueError):
                # Keep what we had for a while rather than refetch on every request.
                self._fetched_at = now - self.ttl_seconds + self.refetch_seconds
                raise InvalidToken("key set unavailable") from None
            self._keys = _parse_jwks(document)
            self._fetched_at = time.monotonic()


def _parse_jwks(document: Any) -> dict[str, tuple[str, Any]]:
    algorithms = get_default_algorithms()
    parsers = {"RSA": algorithms["RS256"], "EC": algorithms["ES256"], "OKP": algorithms["EdDSA"]}
    keys: dict[str, tuple[str, Any]] = {}
    for jwk in document.get("keys", []) if isinstance(document, dict) else []:
        kty, kid = jwk.get("kty"), jwk.get("kid")
        if kty not in parsers or not kid or jwk.get("use", "sig") != "sig":
            continue
        try:
            keys[str(kid)] = (kty, parsers[kty].from_jwk(jwk))
        except (jwt.PyJWTError, ValueError, KeyError):
            continue
    return keys
