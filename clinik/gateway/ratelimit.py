"""Rate limits as token buckets (GCRA: one timestamp per bucket), checked in Redis by
one Lua script, so every check is a single round trip and atomic across web processes.

A request is checked against several buckets at once (the client's IP before
authentication; the key and the organization after it) and consumes from them only
if all of them allow it. Redis's clock is used, so web processes need not agree.

If Redis cannot be reached, limits are enforced per process in memory, a warning is
logged at most once per GATEWAY_REDIS_WARN_SECONDS, and Redis is tried again after
GATEWAY_REDIS_RETRY_SECONDS. Authentication never depends on Redis.

Headers follow draft-ietf-httpapi-ratelimit-headers (-10/-11), in the structured
field form: `RateLimit-Policy: "org";q=600;w=60` (quota per window in seconds) and
`RateLimit: "org";r=599;t=60` (remaining, and seconds until the bucket is full).
"""

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger("clinik.gateway")

KEY_PREFIX = "clinik:rl:"

# KEYS: one bucket each. ARGV: limit and window (ms) per bucket, in KEYS order.
# Returns {allowed, then remaining, ms until full, ms until retry for each bucket}.
GCRA_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tats = {}
local allowed = 1
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
  if tat + window / limit - now > window then allowed = 0 end
end
local out = {allowed}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local interval = window / limit
  local tat = tats[i]
  local retry = 0
  if allowed == 1 then
    tat = tat + interval
    redis.call('SET', KEYS[i], tostring(tat), 'PX', math.max(1, math.ceil(tat - now)))
  elseif tat + interval - now > window then
    retry = math.ceil(tat + interval - window - now)
  end
  out[#out + 1] = math.max(0, math.floor((window - (tat - now)) / interval + 1e-6))
  out[#out + 1] = math.ceil(tat - now)
  out[#out + 1] = retry
end
return out
"""


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    limit: int
    window: int
    """Seconds."""


@dataclass(frozen=True, slots=True)
class BucketState:
    policy: Policy
    remaining: int
    reset: int
    """Seconds until the bucket is full again."""
    retry_after: int
    """Seconds until this bucket allows a request; 0 when it does now."""


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    states: tuple[BucketState, ...]

    @property
    def retry_after(self) -> int:
        return max((state.retry_after for state in self.states), default=0)


Bucket = tuple[Policy, str]


def _state(policy: Policy, remaining: int, until_full_ms: float, retry_ms: float) -> BucketState:
    return BucketState(
        policy,
        remaining=int(remaining),
        reset=math.ceil(until_full_ms / 1000),
        retry_after=math.ceil(retry_ms / 1000),
    )


class MemoryBuckets:
    """The same algorithm per process, for when Redis is away."""

    MAX_BUCKETS = 100_000

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def hit(self, buckets: list[Bucket]) -> Verdict:
        now = time.monotonic() * 1000
        with self._lock:
            if len(self._tats) > self.MAX_BUCKETS:
                self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
            keys = [f"{policy.name}:{ident}" for policy, ident in buckets]
            tats = [max(self._tats.get(key, now), now) for key in keys]
            allowed = all(
                tat + p.window * 1000 / p.limit - now <= p.window * 1000
                for (p, _), tat in zip(buckets, tats, strict=True)
            )
            states = []
            for (policy, _), key, tat in zip(buckets, keys, tats, strict=True):
                window = policy.window * 1000
                interval = window / policy.limit
                retry = 0.0
                if allowed:
                    tat += interval
                    self._tats[key] = tat
                elif tat + interval - now > window:
                    retry = tat + interval - window - now
                remaining = max(0, math.floor((window - (tat - now)) / interval + 1e-6))
                states.append(_state(policy, remaining, tat - now, retry))
        return Verdict(allowed, tuple(states))


class Limiter:
    def __init__(self) -> None:
        self.memory = MemoryBuckets()
        self._scripts: dict[str, redis.commands.core.Script] = {}
        self._down_until: dict[str, float] = {}
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget this process's state: memory buckets, Redis outages, last warning."""
        self.memory = MemoryBuckets()
        self._down_until.clear()
        self._warned_at = -math.inf

    def _script(self, url: str) -> "redis.commands.core.Script":
        script = self._scripts.get(url)
        if script is None:
            timeout = settings.GATEWAY_REDIS_TIMEOUT_MS / 1000
            client = redis.Redis.from_url(
                url,
                socket_connect_timeout=timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 1),
            )
            script = client.register_script(GCRA_LUA)
            with self._lock:
                self._scripts[url] = script
        return script

    def hit(self, buckets: list[Bucket]) -> Verdict:
        """Check and consume one request from every bucket, or from none."""
        url = settings.GATEWAY_REDIS_URL  # read per call: settings may be overridden
        if time.monotonic() >= self._down_until.get(url, 0.0):
            try:
                return self._redis_hit(url, buckets)
            except redis.RedisError as error:
                self._down_until[url] = time.monotonic() + settings.GATEWAY_REDIS_RETRY_SECONDS
                self._warn(type(error).__name__)
        return self.memory.hit(buckets)

    def _redis_hit(self, url: str, buckets: list[Bucket]) -> Verdict:
        keys = [f"{KEY_PREFIX}{policy.name}:{ident}" for policy, ident in buckets]
        args: list[int] = []
        for policy, _ in buckets:
            args += [policy.limit, policy.window * 1000]
        out = self._script(url)(keys=keys, args=args)
        states = tuple(
            _state(policy, *out[1 + 3 * i : 4 + 3 * i]) for i, (policy, _) in enumerate(buckets)
        )
        return Verdict(bool(out[0]), states)

    def _warn(self, error: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < settings.GATEWAY_REDIS_WARN_SECONDS:
                return
            self._warned_at = now
        logger.warning(
            "Rate limiting fell back to per-process memory: Redis is unreachable or "
            "failing (%s); retrying every %ss",
            error,
            settings.GATEWAY_REDIS_RETRY_SECONDS,
        )


class KnownKeys:
    """What this process learned when a key authenticated: the buckets its requests
    use, so that later requests check all their buckets (IP, key, organization) in
    the one call made before the key lookup (one Redis round trip per request instead
    of two), and the key itself.

    The key is used only by requests whose tenant statements check it again in the
    database, in the same transaction as the work (`clinik.keys.recheck`: reads,
    searches, history, writes, bundles); operations look their key up. An entry is
    forgotten when its key fails to authenticate (revoked, expired, closed
    organization), and after TTL seconds, so changed limits apply within a minute."""

    TTL = 60.0
    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, list[Bucket], Any]] = {}

    def _live(self, digest: str) -> tuple[float, list[Bucket], Any] | None:
        entry = self._entries.get(digest)
        return None if entry is None or entry[0] < time.monotonic() else entry

    def get(self, digest: str) -> list[Bucket] | None:
        entry = self._live(digest)
        return entry[1] if entry else None

    def key(self, digest: str) -> Any:
        """The ApiKey (with its organization) as it was when it last authenticated."""
        entry = self._live(digest)
        return entry[2] if entry else None

    def remember(self, digest: str, buckets: list[Bucket], key: Any = None) -> None:
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (time.monotonic() + self.TTL, buckets, key)

    def refresh(self, digest: str, key: Any) -> None:
        entry = self._entries.get(digest)
        if entry is not None:
            self._entries[digest] = (entry[0], entry[1], key)

    def forget(self, digest: str) -> None:
        self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()


limiter = Limiter()
known_keys = KnownKeys()


def headers(states: tuple[BucketState, ...]) -> dict[str, str]:
    if not states:
        return {}
    return {
        "RateLimit-Policy": ", ".join(
            f'"{s.policy.name}";q={s.policy.limit};w={s.policy.window}' for s in states
        ),
        "RateLimit": ", ".join(f'"{s.policy.name}";r={s.remaining};t={s.reset}' for s in states),
    }
