"""How much an organization may call the API. The gateway asks only `limits_for(org)`.

An organization's limits are its plan's (clinik.billing): the plan it subscribed to,
Free after a payment failure's grace period, or the default plan. With billing off
(no Stripe settings) an organization without an assigned plan gets the environment's
defaults (settings.RATE_LIMIT_*, no monthly quota).

The answer is cached in Redis as a hash, which is also what the gateway's rate-limit
script reads at every request (clinik.gateway.ratelimit): a plan change deletes it
(`forget`, after commit), and the next request sees the new plan without a restart
and still makes one Redis call. The key carries a fingerprint of the settings the
answer depends on, so a configuration change cannot serve stale limits either.
"""

import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from uuid import UUID

import redis
from django.conf import settings

from clinik.gateway.ratelimit import limiter

logger = logging.getLogger("clinik.gateway")

KEY_PREFIX = "clinik:limits:"
TTL_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Limits:
    org_requests: int
    """Requests per window for the whole organization, all keys together."""
    key_requests: int
    """Requests per window for any one key of the organization."""
    window: int
    """The window, in seconds."""
    quota: int = -1
    """Requests per billing period refused beyond (429); -1: none (a paid plan bills
    requests beyond its included amount as overage instead)."""
    included: int = -1
    """Requests per billing period included in the plan; -1: unlimited."""
    max_keys: int = -1
    max_members: int = -1
    max_exports: int = -1
    """Usable API keys, members and concurrent bulk exports; -1: unlimited."""
    plan: str = ""
    """The plan's slug ("" for the environment's defaults)."""
    period_start: int = 0
    period_end: int = 0
    """The billing period the quota counts over (clinik.billing.periods), as Unix
    seconds; the cached limits expire when it ends (and the rate-limit script drops
    them if they outlive it), so the next request counts in the next period."""


class PlanLimitReached(Exception):
    """One more key, member or concurrent bulk export would exceed the organization's
    plan. `str()` is the dashboard's form error; `api_message(org_id)` adds the
    Billing page's URL for an API answer (an OperationOutcome)."""

    def __init__(self, what: str, limit: int, plan: str, hint: str = "remove one") -> None:
        self.what, self.limit, self.plan, self.hint = what, limit, plan, hint
        super().__init__(f"{self._allows()}: {hint}, or upgrade the plan on the Billing page.")

    def _allows(self) -> str:
        if not self.plan:  # billing is off: the environment's defaults
            return f"This installation allows {self.limit} {self.what}"
        return f"The {self.plan.capitalize()} plan allows {self.limit} {self.what}"

    def api_message(self, org_id: Any) -> str:
        return f"{self._allows()}: {self.hint}, or upgrade the plan: {upgrade_url(org_id)}"


def upgrade_url(org_id: Any) -> str:
    """The organization's Billing page, where a plan is upgraded."""
    return f"{settings.SITE_URL}/o/{org_id}/billing/"


def check_room(org: Any, what: str, used: int) -> None:
    """Raise PlanLimitReached if the plan has no room for one more `what`
    ("API keys" or "members")."""
    limits = limits_for(org)
    limit = limits.max_keys if what == "API keys" else limits.max_members
    if 0 <= limit <= used:
        raise PlanLimitReached(what, limit, limits.plan)


def environment_defaults() -> Limits:
    return Limits(
        org_requests=settings.RATE_LIMIT_ORG_REQUESTS,
        key_requests=settings.RATE_LIMIT_KEY_REQUESTS,
        window=settings.RATE_LIMIT_WINDOW_SECONDS,
        max_exports=1,  # as before plans existed: one export at a time per organization
    )


def _fingerprint() -> str:
    parts = (
        settings.RATE_LIMIT_ORG_REQUESTS,
        settings.RATE_LIMIT_KEY_REQUESTS,
        settings.RATE_LIMIT_WINDOW_SECONDS,
        settings.BILLING_ENABLED,
        settings.BILLING_DEFAULT_PLAN,
        settings.BILLING_GRACE_DAYS,
        2,  # the layout of the hash: 2 added the billing period
    )
    return format(zlib.crc32(repr(parts).encode()), "08x")


def cache_key(org_id: Any) -> str:
    return f"{KEY_PREFIX}{_fingerprint()}:{org_id}"


_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    url = settings.GATEWAY_REDIS_URL
    client = _clients.get(url)
    if client is None:
        timeout = settings.GATEWAY_REDIS_TIMEOUT_MS / 1000
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout, decode_responses=True
        )
        _clients[url] = client
    return client


def _org_id(org: Any) -> UUID | str:
    return getattr(org, "pk", org)


def limits_for(org: Any) -> Limits:
    """The organization's current limits (an Organization or its id)."""
    org_id = _org_id(org)
    key = cache_key(org_id)
    if limiter.is_down(settings.GATEWAY_REDIS_URL):  # the limiter warns about it
        return load(org_id)[0]
    try:
        cached: dict[str, str] | None = _redis().hgetall(key)  # type: ignore[assignment]
    except redis.RedisError:
        cached = None
    if cached:
        types = {f.name: f.type for f in fields(Limits)}
        values: dict[str, Any] = {k: v if types[k] is str else int(v) for k, v in cached.items()}
        return Limits(**values)
    limits, ttl = load(org_id)
    try:
        pipe = _redis().pipeline()
        mapping: Any = asdict(limits)
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, ttl)
        pipe.execute()
    except redis.RedisError as error:
        logger.debug("Organization limits not cached: Redis failed (%s)", type(error).__name__)
    return limits


def load(org_id: Any) -> tuple[Limits, int]:
    """The limits from the database, and how long they hold (seconds): until the
    plan may change by itself (a grace period's end) or the billing period ends."""
    # (billing imports no gateway module)
    from clinik.billing.periods import current_period
    from clinik.billing.plans import effective_plan

    plan, holds_for = effective_plan(org_id)
    now = time.time()
    start, end = current_period(org_id)
    holds_for = min(holds_for, math.ceil(end.timestamp() - now))
    limits = environment_defaults() if plan is None else _of_plan(plan)
    limits = replace(limits, period_start=int(start.timestamp()), period_end=int(end.timestamp()))
    return limits, max(1, min(TTL_SECONDS, holds_for))


def _of_plan(plan: Any) -> Limits:
    def unlimited(value: int | None) -> int:
        return -1 if value is None else value

    return Limits(
        org_requests=plan.org_requests_per_minute,
        key_requests=plan.key_requests_per_minute,
        window=60,
        quota=plan.included_requests if plan.hard_quota else -1,
        included=unlimited(plan.included_requests),
        max_keys=unlimited(plan.max_keys),
        max_members=unlimited(plan.max_members),
        max_exports=unlimited(plan.max_exports),
        plan=plan.slug,
    )


def forget(org_id: Any) -> None:
    """Drop the cached limits (of every organization when org_id is None, after staff
    edited a plan): the next request reads the plan again."""
    try:
        if org_id is None:
            for key in _redis().scan_iter(match=f"{KEY_PREFIX}*", count=1000):
                _redis().delete(key)
            return
        _redis().delete(cache_key(org_id))
    except redis.RedisError as error:
        logger.warning("Organization limits not forgotten: Redis failed (%s)", type(error).__name__)
