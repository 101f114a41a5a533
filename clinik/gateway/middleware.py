"""The gateway: what guards every request under /fhir/, before any view runs.

In order: request id, URL and header size, body size, path guard, rate limit per
client IP, CORS preflight, authentication (and scope), rate limit per key and per
organization.
Each refusal is an OperationOutcome; every response gets X-Request-ID, the
RateLimit headers of the buckets checked, and CORS headers when allowed.

Placed right after SecurityMiddleware. API requests carry no session: their
cookies are dropped here, and the gateway calls the view itself (`_dispatch`), so
the session, CSRF, auth and message middleware never see them (CSRF does not apply:
the key is in a header a browser never adds by itself).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

from django.conf import settings
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import Resolver404, get_resolver

from clinik.accounts.models import Organization
from clinik.fhir.outcomes import failure_response
from clinik.gateway import checks, cors, ratelimit
from clinik.gateway.limits import cache_key, limits_for
from clinik.gateway.ratelimit import Bucket, BucketState, Policy, known_keys, limiter
from clinik.keys import recheck
from clinik.keys.models import ApiKey
from clinik.lib.db import statement_limits
from clinik.lib.http import ApiHttpRequest
from clinik.usage import requestlog

PREFIX = "/fhir/"


@dataclass
class Passage:
    """What one request collected on its way through, for its response headers."""

    preflight: bool
    public: bool = False
    org: Organization | None = None
    """The key's organization, once the key has authenticated."""
    limits: tuple[BucketState, ...] = ()


class GatewayMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not request.path_info.startswith(PREFIX):
            return self.get_response(request)
        # usage: one request record per API request, refused ones included (clinik/usage)
        started, response = time.perf_counter(), None
        try:
            response = self.handle(cast(ApiHttpRequest, request))
            return response
        finally:
            requestlog.note(request, response, started)

    def handle(self, request: ApiHttpRequest) -> HttpResponseBase:
        meta = request.META
        request.request_id = checks.request_id(meta)
        request.fhir_route = request.fhir_resource_type = ""
        request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]
        meta.pop("HTTP_COOKIE", None)
        passage = Passage(preflight=cors.is_preflight(request.method or "", meta))
        limits = statement_limits.set(
            (settings.API_STATEMENT_TIMEOUT_MS, settings.API_LOCK_TIMEOUT_MS)
        )
        try:
            response = self.admit(request, passage)
        except checks.Refused as refusal:
            response = refusal.response()
        except Exception as error:  # the key lookup or its last-use write
            if (answer := failure_response(error)) is None:
                raise
            response = answer
        finally:
            statement_limits.reset(limits)
        response["X-Request-ID"] = request.request_id
        for name, value in ratelimit.headers(passage.limits).items():
            response[name] = value
        origin = meta.get("HTTP_ORIGIN")
        if origin and not passage.preflight:
            cors.decorate(response, str(origin), passage.org, passage.public)
        return response

    def admit(self, request: ApiHttpRequest, passage: Passage) -> HttpResponseBase:
        """The checks in order; then the preflight's answer or the view's."""
        meta, method = request.META, request.method or "GET"
        checks.check_host(request)
        checks.check_request_head(meta, request.path)
        checks.check_body(method, request.path_info, meta)
        route = checks.guard_path(checks.api_path(meta, request.path))
        request.fhir_route, request.fhir_resource_type = route.template, route.resource_type
        passage.public = route.is_public and method in ("GET", "HEAD", "OPTIONS")
        digest = None if passage.public or passage.preflight else checks.presented_digest(meta)
        known = known_keys.get(digest) if digest else None
        self.limit(passage, [_ip_bucket(request), *(known or [])])  # before any query
        checks.check_text(meta)  # no NUL or broken UTF-8 reaches PostgreSQL
        if passage.preflight:
            return cors.preflight(meta, passage.public)
        checks.check_query_string(str(meta.get("QUERY_STRING", "")))
        request.key_digest = digest
        request.key_recheck = False
        if not passage.public:
            key = (
                known_keys.key(digest)
                if digest and known and route.kind in _RECHECKED_ROUTES
                else None
            )
            if key is not None:
                # Looked up by this process before; the view's first tenant statement
                # checks it again, in its transaction (clinik.keys.recheck).
                request.key_recheck = True
            else:
                try:
                    key = checks.authenticate(meta)
                except checks.Refused:
                    if digest:
                        known_keys.forget(digest)
                    raise
                if known is not None:
                    known_keys.refresh(str(digest), key)
            request.api_key = key
            request.org = passage.org = key.org
            checks.authorize(key, method, route)
            if known is None:
                known_keys.remember(str(digest), self.limit(passage, _key_buckets(key)), key)
            key.note_use()
        return self.dispatch(request)

    def dispatch(self, request: ApiHttpRequest) -> HttpResponseBase:
        """The API view's answer (bench/mechanisms_bench.py overrides this to measure
        the direct call against Django's own middleware chain and URL resolution)."""
        return _dispatch(request, _call_view)

    @staticmethod
    def limit(passage: Passage, buckets: list[Bucket]) -> list[Bucket]:
        verdict = limiter.hit(buckets)
        if verdict.stale:  # the plan changed (or its cache expired): read it, ask again
            org_id = next(ident for policy, ident in buckets if policy.name == "org")
            limits_for(org_id)
            verdict = limiter.hit(buckets)
            if verdict.stale:  # Redis lost it again: the limits known at authentication
                verdict = limiter.hit([(replace(p, source=""), i) for p, i in buckets])
        passage.limits += verdict.states
        checks.check_quota(verdict, buckets)
        checks.check_rate(verdict, buckets)
        return buckets


def _call_view(request: ApiHttpRequest) -> HttpResponseBase:
    """Resolve the path in the FHIR URLconf and call its view, as Django's handler would."""
    try:
        match = get_resolver(getattr(request, "urlconf", None)).resolve(request.path_info)
    except Resolver404:  # a URLconf without the catch-all (tests, benchmarks)
        return checks.Refused(404, "not-found", "No such endpoint").response()
    request.resolver_match = match
    response: HttpResponseBase = match.func(request, *match.args, **match.kwargs)
    return response


def _dispatch(
    request: ApiHttpRequest, view: Callable[[ApiHttpRequest], HttpResponseBase]
) -> HttpResponseBase:
    """The API view, called directly. The middleware after the gateway serves the
    dashboard (static files, CSP for HTML, sessions, CSRF, auth, messages, frame
    options, htmx) and has nothing to do for /fhir/, whose requests carry no cookie
    and whose views answer every error as an OperationOutcome; skipping it saves
    ~0.1-0.2 ms of CPU per request (bench/README.md). SecurityMiddleware, before the
    gateway, still sets its headers; Content-Length is set here as CommonMiddleware
    would. The FHIR URLconf ends in a catch-all, so every path under /fhir/ resolves."""
    # A key not looked up for this request: its tenant statements check it.
    check = recheck.KeyCheck.of(request.api_key) if request.key_recheck else None
    token = recheck.pending.set(check)
    try:
        response = view(request)
        if not recheck.settle(response.status_code):  # (FHIR views settle it themselves)
            raise checks.unauthorized()
    except checks.Refused as refusal:  # a key found no longer usable
        if request.key_digest:
            known_keys.forget(request.key_digest)
        return refusal.response()
    except Exception as error:  # as Django's handler would: signal, log, 500
        if recheck.refused(error):
            known_keys.forget(str(request.key_digest))
            return checks.unauthorized().response()
        answer = failure_response(error)
        response = answer if answer is not None else response_for_exception(request, error)
    finally:
        recheck.pending.reset(token)
    if not response.streaming and not response.has_header("Content-Length"):
        response.headers["Content-Length"] = str(len(cast(HttpResponse, response).content))
    return response


# Routes whose views touch tenant data only through clinik.fhir.tenancy, which checks
# the key in the first statement (clinik.keys.recheck), so a key known to this process need not be
# looked up first. Not operations: an export kick-off starts a job outside any tenant
# transaction.
_RECHECKED_ROUTES = frozenset(
    {"base", "history", "type", "search", "instance", "vread", "compartment"}
)


def _ip_bucket(request: HttpRequest) -> Bucket:
    policy = Policy("ip", settings.RATE_LIMIT_IP_REQUESTS, settings.RATE_LIMIT_WINDOW_SECONDS)
    return policy, checks.client_id(request)


def _key_buckets(key: ApiKey) -> list[Bucket]:
    """The key's, the organization's and the monthly quota's buckets, whose limits the
    rate-limit script reads from the organization's cached limits at every request."""
    limits = limits_for(key.org)
    source = cache_key(key.org_id)
    return [
        (Policy("key", limits.key_requests, limits.window, source=source), str(key.pk)),
        (Policy("org", limits.org_requests, limits.window, source=source), str(key.org_id)),
        (Policy("quota", limits.quota, 0, "q", source, limits.period_end), str(key.org_id)),
    ]
