"""A local Supabase Auth (GoTrue) server for tests: the endpoints `supabase_auth`
calls, real PKCE (S256) checks, real refresh-token rotation and revocation, and
access tokens signed with RS256 or ES256 keys it can rotate. Emails it would send
(confirmation, magic link, recovery, email change) land in `outbox` as links.

`fake_supabase` (a fixture) starts one on a free port and points the settings at it.
"""

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ANON_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.anon-test-key"
SERVICE_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.service-test-key"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_key(alg: str = "RS256") -> SigningKey:
    if alg == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    return SigningKey(kid=uuid.uuid4().hex[:12], alg=alg, private=private)


@dataclass
class FakeUser:
    email: str
    password: str | None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    confirmed: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    providers: list[str] = field(default_factory=lambda: ["email"])
    new_email: str | None = None

    def as_json(self) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        return {
            "id": self.id,
            "aud": "authenticated",
            "role": "authenticated",
            "email": self.email,
            "email_confirmed_at": now if self.confirmed else None,
            "new_email": self.new_email,
            "app_metadata": {"provider": self.providers[0], "providers": self.providers},
            "user_metadata": self.metadata,
            "created_at": now,
        }


class FakeGoTrue:
    def __init__(self, alg: str = "RS256") -> None:
        self.keys = [new_key(alg)]
        self.users: dict[str, FakeUser] = {}
        self.flows: dict[str, dict[str, Any]] = {}  # auth code -> PKCE flow
        self.refresh: dict[str, dict[str, Any]] = {}  # refresh token -> session
        self.outbox: list[tuple[str, str, str]] = []  # (to, kind, link)
        self.calls: list[str] = []  # "METHOD /path" of every request
        self.autoconfirm = False
        self.oauth_identity: dict[str, str] = {"email": "octo@github.test", "name": "Octo Cat"}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.issuer = f"{self.url}/auth/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- keys and tokens -------------------------------------------------------

    def rotate(self, alg: str = "RS256", keep_old: bool = False) -> SigningKey:
        key = new_key(alg)
        self.keys = [key, *self.keys] if keep_old else [key]
        return key

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys]}

    def sign(self, claims: dict[str, Any], key: SigningKey | None = None, **header: Any) -> str:
        key = key or self.keys[0]
        return jwt.encode(
            claims, key.private, algorithm=key.alg, headers={"kid": key.kid, **header}
        )

    def claims_for(self, user: FakeUser, method: str, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "aud": "authenticated",
            "sub": user.id,
            "exp": now + 3600,
            "iat": now,
            "email": user.email,
            "role": "authenticated",
            "aal": "aal1",
            "amr": [{"method": method, "timestamp": now}],
            "session_id": str(uuid.uuid4()),
            "app_metadata": {"provider": user.providers[0], "providers": user.providers},
            "user_metadata": user.metadata,
            **extra,
        }

    def session_for(self, user: FakeUser, method: str) -> dict[str, Any]:
        claims = self.claims_for(user, method)
        refresh = secrets.token_urlsafe(16)
        self.refresh[refresh] = {"user": user.id, "session_id": claims["session_id"], "m": method}
        return {
            "access_token": self.sign(claims),
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": 3600,
            "expires_at": claims["exp"],
            "user": user.as_json(),
        }

    # --- users and links -------------------------------------------------------

    def add_user(self, email: str, password: str | None = None, confirmed: bool = True) -> FakeUser:
        user = FakeUser(email=email, password=password, confirmed=confirmed)
        self.users[user.id] = user
        return user

    def by_email(self, email: str) -> FakeUser | None:
        return next((u for u in self.users.values() if u.email == email.lower()), None)

    def _flow(self, user: FakeUser, kind: str, body: dict[str, Any], redirect_to: str) -> str:
        code = str(uuid.uuid4())
        self.flows[code] = {
            "user": user.id,
            "kind": kind,
            "challenge": body.get("code_challenge"),
            "method": body.get("code_challenge_method"),
            "token_hash": secrets.token_hex(28),  # for email templates that link with it
        }
        return f"{redirect_to}?{urlencode({'code': code})}"

    def token_hash_link(self, link: str, kind: str) -> str:
        """The same email, as a template using {{ .TokenHash }} would link it."""
        flow = self.flows[parse_qs(urlsplit(link).query)["code"][0]]
        base = link.split("?", 1)[0]
        return f"{base}?{urlencode({'token_hash': flow['token_hash'], 'type': kind})}"

    def last_link(self, to: str, kind: str) -> str:
        return next(link for rcpt, k, link in reversed(self.outbox) if rcpt == to and k == kind)

    def user_from_bearer(self, auth: str) -> FakeUser | None:
        token = auth.removeprefix("Bearer ").strip()
        try:
            key = next(k for k in self.keys if k.kid == jwt.get_unverified_header(token)["kid"])
            claims = jwt.decode(
                token, key.private.public_key(), algorithms=[key.alg], audience="authenticated"
            )
        except (StopIteration, jwt.PyJWTError, KeyError):
            return None
        return self.users.get(claims["sub"])


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _handler(fake: FakeGoTrue) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(
            self, status: int, body: Any = None, headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Supabase-Api-Version", "2024-01-01")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: str, msg: str) -> None:
            self._send(status, {"code": status, "error_code": code, "msg": msg})

        def _route(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path.removeprefix("/auth/v1")
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            fake.calls.append(f"{method} {path}")
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            if path == "/.well-known/jwks.json":
                return self._send(200, fake.jwks())
            if path == "/authorize" and method == "GET":
                return self._authorize(query)
            apikey = self.headers.get("apikey")
            if apikey not in (ANON_KEY, SERVICE_KEY):
                return self._error(401, "no_api_key", "Invalid API key")
            handler = getattr(self, f"_{method.lower()}_{path.strip('/').replace('/', '_')}", None)
            if path.startswith("/admin/users/") and method == "GET":
                if self.headers.get("Authorization") != f"Bearer {SERVICE_KEY}":
                    return self._error(403, "not_admin", "User not allowed")
                user = fake.users.get(path.rsplit("/", 1)[1])
                if user is None:
                    return self._error(404, "user_not_found", "User not found")
                return self._send(200, user.as_json())
            if handler is None:
                return self._error(404, "not_found", "no such endpoint")
            return handler(query, body)

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        # --- endpoints ---------------------------------------------------------

        def _authorize(self, query: dict[str, str]) -> None:
            # The provider's consent screen, approved at once.
            identity = fake.oauth_identity
            user = fake.by_email(identity["email"])
            if user is None:
                user = fake.add_user(identity["email"], None, confirmed=True)
                user.metadata = {"full_name": identity["name"], "email_verified": True}
                user.providers = [query["provider"]]
            elif query["provider"] not in user.providers:
                user.providers.append(query["provider"])
            location = fake._flow(user, f"oauth:{query['provider']}", query, query["redirect_to"])
            self._send(302, None, {"Location": location})

        def _post_signup(self, query: dict[str, str], body: dict[str, Any]) -> None:
            existing = fake.by_email(body["email"])
            if existing is not None and existing.confirmed:
                # GoTrue answers an existing address with an obfuscated user.
                return self._send(200, FakeUser(email=body["email"], password=None).as_json())
            user = existing or fake.add_user(body["email"], body["password"], confirmed=False)
            user.password, user.metadata = body["password"], body.get("data") or {}
            if fake.autoconfirm:
                user.confirmed = True
                return self._send(200, fake.session_for(user, "password"))
            link = fake._flow(user, "signup", body, query["redirect_to"])
            fake.outbox.append((user.email, "signup", link))
            self._send(200, user.as_json())

        def _post_token(self, query: dict[str, str], body: dict[str, Any]) -> None:
            grant = query.get("grant_type")
            if grant == "password":
                user = fake.by_email(body.get("email", ""))
                if user is None or user.password != body.get("password") or not user.confirmed:
                    return self._error(400, "invalid_credentials", "Invalid login credentials")
                return self._send(200, fake.session_for(user, "password"))
            if grant == "pkce":
                flow = fake.flows.pop(body.get("auth_code") or "", None)
                verifier = body.get("code_verifier") or ""
                if flow is None or _s256(verifier) != flow["challenge"]:
                    return self._error(400, "flow_state_not_found", "invalid flow state")
                user = fake.users[flow["user"]]
                user.confirmed = True  # following the link proved the address
                if flow["kind"] == "email_change" and user.new_email:
                    user.email, user.new_email = user.new_email, None
                method = flow["kind"] if flow["kind"].startswith("oauth") else "otp"
                return self._send(200, fake.session_for(user, method.split(":")[0]))
            if grant == "refresh_token":
                found = fake.refresh.pop(body.get("refresh_token") or "", None)
                if found is None:
                    return self._error(400, "refresh_token_not_found", "Invalid Refresh Token")
                return self._send(200, fake.session_for(fake.users[found["user"]], found["m"]))
            return self._error(400, "unsupported_grant_type", "unsupported grant")

        def _post_verify(self, query: dict[str, str], body: dict[str, Any]) -> None:
            code = next(
                (c for c, f in fake.flows.items() if f["token_hash"] == body.get("token_hash")),
                None,
            )
            if code is None or fake.flows[code]["kind"] != body.get("type"):
                return self._error(403, "otp_expired", "Email link is invalid or has expired")
            flow = fake.flows.pop(code)
            user = fake.users[flow["user"]]
            user.confirmed = True
            return self._send(200, fake.session_for(user, "otp"))

        def _post_otp(self, query: dict[str, str], body: dict[str, Any]) -> None:
            user = fake.by_email(body["email"])
            if user is None and body.get("create_user", True):
                user = fake.add_user(body["email"], None, confirmed=False)
            if user is not None:
                link = fake._flow(user, "magiclink", body, query["redirect_to"])
                fake.outbox.append((user.email, "magiclink", link))
            self._send(200, {})

        def _post_recover(self, query: dict[str, str], body: dict[str, Any]) -> None:
            user = fake.by_email(body["email"])
            if user is not None:
                link = fake._flow(user, "recovery", body, query["redirect_to"])
                fake.outbox.append((user.email, "recovery", link))
            self._send(200, {})

        def _post_logout(self, query: dict[str, str], body: dict[str, Any]) -> None:
            user = fake.user_from_bearer(self.headers.get("Authorization", ""))
            if user is None:
                return self._error(401, "bad_jwt", "invalid JWT")
            token = self.headers["Authorization"].removeprefix("Bearer ")
            session_id = jwt.decode(token, options={"verify_signature": False})["session_id"]
            for refresh, found in list(fake.refresh.items()):
                if found["user"] == user.id and (
                    query.get("scope") == "global" or found["session_id"] == session_id
                ):
                    del fake.refresh[refresh]
            self._send(204)

        def _get_user(self, query: dict[str, str], body: dict[str, Any]) -> None:
            user = fake.user_from_bearer(self.headers.get("Authorization", ""))
            if user is None:
                return self._error(401, "bad_jwt", "invalid JWT")
            return self._send(200, user.as_json())

        def _put_user(self, query: dict[str, str], body: dict[str, Any]) -> None:
            user = fake.user_from_bearer(self.headers.get("Authorization", ""))
            if user is None:
                return self._error(401, "bad_jwt", "invalid JWT")
            if "password" in body:
                user.password = body["password"]
            if "email" in body:
                user.new_email = body["email"].lower()
                link = fake._flow(user, "email_change", body, query["redirect_to"])
                fake.outbox.append((user.new_email, "email_change", link))
            self._send(200, user.as_json())

    return Handler


@pytest.fixture
def fake_supabase(settings: Any) -> Iterator[FakeGoTrue]:
    from clinik.accounts import supabase

    fake = FakeGoTrue()
    settings.SUPABASE_URL = fake.url
    settings.SUPABASE_ANON_KEY = ANON_KEY
    settings.SUPABASE_SERVICE_ROLE_KEY = SERVICE_KEY
    settings.SUPABASE_JWKS_URL = f"{fake.issuer}/.well-known/jwks.json"
    settings.SUPABASE_JWT_ISSUER = fake.issuer
    supabase._verifier.cache_clear()
    yield fake
    supabase._verifier.cache_clear()
    fake.close()
