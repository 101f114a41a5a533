"""Supabase Auth as the dashboard's identity provider (when SUPABASE_URL is set).

We talk to Supabase Auth (GoTrue) through `supabase_auth.SyncGoTrueClient`, the auth
client that the pinned `supabase` package builds on, rather than `supabase.Client`:
the full client is a per-user object (its auth listener rewrites the headers of its
PostgREST, Storage and Realtime clients with the signed-in user's token) meant to
live in one user's process. A web process serves many users, so each request gets
its own short-lived auth client: PKCE flow, no session persistence, no refresh
timer thread, and a storage that keeps the PKCE verifier in the Django session.

After sign-in, Supabase is never asked again by a dashboard request: the server
verifies the access token once (clinik.lib.jwtverify), starts an ordinary Django
session, and keeps the Supabase tokens in that server-side session only (never in
a cookie, a page or a log line) to revoke the refresh token at sign-out.
"""

import logging
import time
from functools import cache
from typing import Any

import httpx
import jwt
from django.conf import settings
from django.contrib.sessions.backends.base import SessionBase
from supabase_auth import SyncGoTrueClient
from supabase_auth._sync.storage import SyncSupportedStorage
from supabase_auth.errors import AuthError
from supabase_auth.types import AuthResponse

from clinik.lib.jwtverify import InvalidToken, JwksVerifier

log = logging.getLogger(__name__)

TOKENS = "supabase_tokens"
_STORE = "supabase_store"
ERRORS = (AuthError, httpx.HTTPError)

__all__ = ["ERRORS", "TOKENS", "AuthResponse", "InvalidToken"]


def enabled() -> bool:
    return bool(settings.SUPABASE_URL)


class SessionStorage(SyncSupportedStorage):
    """The auth client's storage, kept in the Django session (the PKCE verifier)."""

    def __init__(self, session: SessionBase) -> None:
        self.session = session

    def get_item(self, key: str) -> str | None:
        value = self.session.get(_STORE, {}).get(key)
        return str(value) if value is not None else None

    def set_item(self, key: str, value: str) -> None:
        self.session[_STORE] = {**self.session.get(_STORE, {}), key: value}

    def remove_item(self, key: str) -> None:
        store = dict(self.session.get(_STORE, {}))
        if store.pop(key, None) is not None:
            self.session[_STORE] = store


@cache
def _http(base_url: str) -> httpx.Client:
    # One pooled HTTP client per process (and per configured project).
    return httpx.Client(timeout=10.0, follow_redirects=False)


def client(session: SessionBase | None = None, *, service: bool = False) -> SyncGoTrueClient:
    """A GoTrue client for one request: the anon key, or the service-role key for
    admin calls (server only)."""
    key = settings.SUPABASE_SERVICE_ROLE_KEY if service else settings.SUPABASE_ANON_KEY
    return SyncGoTrueClient(
        url=f"{settings.SUPABASE_URL}/auth/v1",
        headers={"apikey": key, "Authorization": f"Bearer {key}"},
        auto_refresh_token=False,
        persist_session=False,
        storage=SessionStorage(session) if session is not None else None,
        flow_type="pkce",
        http_client=_http(settings.SUPABASE_URL),
    )


@cache
def _verifier(jwks_url: str, issuer: str, audience: str, secret: str, ttl: int) -> JwksVerifier:
    return JwksVerifier(jwks_url, issuer, audience, hs256_secret=secret, ttl_seconds=ttl)


def verifier() -> JwksVerifier:
    return _verifier(
        settings.SUPABASE_JWKS_URL,
        settings.SUPABASE_JWT_ISSUER,
        settings.SUPABASE_JWT_AUDIENCE,
        settings.SUPABASE_JWT_SECRET,
        settings.SUPABASE_JWKS_CACHE_SECONDS,
    )


def verify(access_token: str) -> dict[str, Any]:
    """The access token's claims once its signature, iss, aud, exp and sub hold."""
    return verifier().verify(access_token)


# Sessions started by following a link sent to the address (GoTrue's `amr` methods).
_EMAIL_LINK_METHODS = {"otp", "magiclink", "email/signup", "recovery", "email_change", "invite"}


def proves_email(claims: dict[str, Any]) -> bool:
    """This session was started through a link sent to the token's email address."""
    amr = claims.get("amr") or []
    entry = amr[0] if amr and isinstance(amr[0], dict) else {}
    return str(entry.get("method") or "") in _EMAIL_LINK_METHODS


def sign_in_methods(claims: dict[str, Any]) -> list[str]:
    """The identities linked to the user at Supabase (email, github, google...)."""
    meta = claims.get("app_metadata") or {}
    providers = meta.get("providers") or [meta.get("provider")]
    return sorted({str(p) for p in providers if p})


def confirmed_email(user_id: str) -> str | None:
    """The user's email if Supabase says they proved it (admin API, service key)."""
    try:
        found = client(service=True).admin.get_user_by_id(user_id).user
    except ERRORS:
        log.warning("Supabase Auth admin lookup failed")
        return None
    if found is None or not found.email or not found.email_confirmed_at:
        return None
    return str(found.email).strip().lower()


def keep_tokens(session: SessionBase, access_token: str, refresh_token: str) -> None:
    session[TOKENS] = {"access": access_token, "refresh": refresh_token}


def revoke(session: SessionBase) -> None:
    """Revoke the Supabase refresh token of this session (sign-out). An access token
    that has expired is refreshed first: /logout needs a live one."""
    tokens = session.pop(TOKENS, None)
    if tokens and enabled():
        revoke_tokens(tokens.get("access", ""), tokens.get("refresh", ""))


def revoke_tokens(access: str, refresh: str) -> None:
    auth = client()
    try:
        exp = jwt.decode(access, options={"verify_signature": False}).get("exp", 0)
    except jwt.PyJWTError:
        exp = 0
    try:
        if exp <= time.time() + 10:
            access = auth.refresh_session(refresh).session.access_token  # type: ignore[union-attr]
        auth.admin.sign_out(access, "local")
    except ERRORS:
        log.warning("Supabase Auth sign-out did not confirm the revocation")


def user_client(session: SessionBase) -> SyncGoTrueClient:
    """An auth client holding the signed-in user's Supabase session (for changes to
    their own password or email). Raises AuthError when there is none."""
    tokens = session.get(TOKENS) or {}
    auth = client(session)
    response = auth.set_session(tokens.get("access", ""), tokens.get("refresh", ""))
    if response.session is not None:
        keep_tokens(session, response.session.access_token, response.session.refresh_token)
    return auth
