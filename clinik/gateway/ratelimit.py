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
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

logger = logging.getLogger("clinik.gateway")

KEY_PREFIX = "clinik:rl:"

# KEYS: one per bucket, then (when a bucket reads its limit from it) the
# organization's limits hash (clinik.gateway.limits). ARGV[1]: the number of buckets;
# then per bucket: kind, limit, window (ms), field.
#   kind 'g': a token bucket (GCRA); 'q': a counter over the billing period (the
#   quota), kept as a hash {p: the period's end (Unix ms), n: the count}: a count of
#   another period is a count of 0. A quota's window is the end of its period (Unix
#   ms), read from the limits hash's period_end when it has one. field: when not '',
#   the limit (and a token bucket's window) comes from the limits hash; a limit below
#   0 means none.
# Returns {-1} when the limits hash is missing, or outlived its billing period (then
# it is deleted): the caller fills it and asks again. Else {allowed, then limit,
# remaining, ms until full, ms until retry per bucket}.
GCRA_LUA = """
local n = tonumber(ARGV[1])
local conf = {}
if #KEYS > n then
  local flat = redis.call('HGETALL', KEYS[n + 1])
  if #flat == 0 then return {-1} end
  for i = 1, #flat, 2 do conf[flat[i]] = tonumber(flat[i + 1]) end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local specs = {}
local allowed = 1
for i = 1, n do
  local base = 4 * (i - 1) + 1
  local kind = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local window = tonumber(ARGV[base + 3])
  local field = ARGV[base + 4]
  if field ~= '' then
    limit = conf[field] or limit
    if kind == 'g' and conf['window'] then window = conf['window'] * 1000 end
  end
  local state
  local fresh = false
  if kind == 'q' then
    local ends = window
    if field ~= '' and (conf['period_end'] or 0) > 0 then
      ends = conf['period_end'] * 1000
      if ends <= now then
        redis.call('DEL', KEYS[n + 1])
        return {-1}
      end
    end
    if ends <= now then
      state, window, fresh = 0, 0, false  -- an outdated fallback period: not counted
    else
      local held = redis.call('HMGET', KEYS[i], 'p', 'n')
      fresh = tonumber(held[1]) ~= ends
      state = 0
      if not fresh then state = tonumber(held[2]) or 0 end
      window = ends
      if limit >= 0 and state >= limit then allowed = 0 end
    end
  else
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    state = tat
    if tat + window / limit - now > window then allowed = 0 end
  end
  specs[i] = {kind, limit, window, state, fresh}
end
local out = {allowed}
for i = 1, n do
  local kind, limit, window, state = specs[i][1], specs[i][2], specs[i][3], specs[i][4]
  local retry = 0
  out[#out + 1] = limit
  if kind == 'q' then
    local count = state
    local ends = window
    local left = math.max(0, ends - now)
    if ends == 0 then
      left = 0
    elseif allowed == 1 then
      if specs[i][5] then
        redis.call('HSET', KEYS[i], 'p', ends, 'n', 1)
        redis.call('PEXPIRE', KEYS[i], left + 86400000)
        count = 1
      else
        count = redis.call('HINCRBY', KEYS[i], 'n', 1)
      end
    elseif limit >= 0 and count >= limit then
      retry = left
    end
    out[#out + 1] = math.max(0, limit - count)
    out[#out + 1] = left
  else
    local interval = window / limit
    local tat = state
    if allowed == 1 then
      tat = tat + interval
      redis.call('SET', KEYS[i], tostring(tat), 'PX', math.max(1, math.ceil(tat - now)))
    elseif tat + interval - now > window then
      retry = math.ceil(tat + interval - window - now)
    end
    out[#out + 1] = math.max(0, math.floor((window - (tat - now)) / interval + 1e-6))
    out[#out + 1] = math.ceil(tat - now)
  end
  out[#out + 1] = retry
end
return out
"""


# The field of the limits hash (clinik.gateway.limits.Limits) each policy reads.
LIMIT_FIELDS = {"key": "key_requests", "org": "org_requests", "quota": "quota"}


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    limit: int
    window: int
    """Seconds."""
    kind: str = "g"
    """"g": a token bucket over `window`; "q": a quota (a counter per billing
    period, clinik.billing.periods), identified by the organization."""
    source: str = ""
    """The Redis hash (clinik.gateway.limits) the limit is read from at every check,
    so a plan change applies on the next request; `limit` and `window` are then the
    values when the key authenticated, used only when Redis is away."""
    ends: int = 0
    """A quota's period end (Unix seconds) when the key authenticated, used only
    when the limits hash is away (0 or past: the calendar month's end)."""


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
    stale: bool = False
    """The limits hash of a bucket's source is missing: fill it and check again."""

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
        """The monthly quota is not counted per process: without Redis it is not
        enforced (billing counts from the request log anyway)."""
        buckets = [bucket for bucket in buckets if bucket[0].kind == "g"]
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
        self._local = threading.local()

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

    def _eval(self, url: str, keys: list[str], args: list[int | str]) -> Any:
        """The script's answer, on a connection this thread keeps (no pool checkout).

        What `Script.__call__` does (EVALSHA, loading the script when Redis lacks it,
        one retry on a connection error, as the client's `Retry(NoBackoff(), 1)`),
        without redis-py's per-command layers (retry wrapper, pool checkout and
        health probe, metrics hooks): about a third of the limiter's CPU per
        request (bench/README.md, "Python per request")."""
        script = self._script(url)
        conns = self._local.__dict__.setdefault("conns", {})
        pid = os.getpid()
        held = conns.get(url)
        if held is None or held[0] != pid:  # new thread, or a forked child
            client = cast(redis.Redis, script.registered_client)
            held = conns[url] = (pid, client.connection_pool.make_connection())
        conn = held[1]
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        for attempt in (0, 1):
            # A failed connect has had its own retry (the connection's Retry), as in
            # the pool's checkout; a failure on an open connection is retried once.
            connected = getattr(conn, "_sock", None) is not None
            try:
                try:
                    conn.send_packed_command(conn.pack_command(*command), check_health=False)
                    return conn.read_response()
                except NoScriptError:
                    script.sha = script.registered_client.script_load(script.script)
                    command = ("EVALSHA", script.sha, *command[2:])
                    conn.send_packed_command(conn.pack_command(*command), check_health=False)
                    return conn.read_response()
            except (redis.ConnectionError, redis.TimeoutError):
                conn.disconnect()
                if attempt or not connected:
                    raise
        raise AssertionError("unreachable")

    def is_down(self, url: str) -> bool:
        """Redis at url failed recently: not tried again before the retry time."""
        return time.monotonic() < self._down_until.get(url, 0.0)

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
        keys: list[str] = []
        args: list[int | str] = [len(buckets)]
        source = ""
        for policy, ident in buckets:
            if policy.kind == "q":
                keys.append(f"{KEY_PREFIX}{policy.name}:{ident}")
                args += ["q", policy.limit, _period_end_ms(policy.ends)]
            else:
                keys.append(f"{KEY_PREFIX}{policy.name}:{ident}")
                args += ["g", policy.limit, policy.window * 1000]
            args.append(LIMIT_FIELDS.get(policy.name, policy.name) if policy.source else "")
            source = source or policy.source
        if source:
            keys.append(source)
        out = self._eval(url, keys, args)
        if out[0] == -1:
            return Verdict(True, (), stale=True)
        states = []
        for i, (policy, _) in enumerate(buckets):
            limit, remaining, until_full, retry = out[1 + 4 * i : 5 + 4 * i]
            if policy.kind == "q":
                effective = Policy(policy.name, int(limit), math.ceil(until_full / 1000), "q")
            elif policy.source:
                effective = Policy(policy.name, int(limit), policy.window)
            else:
                effective = policy
            states.append(_state(effective, remaining, until_full, retry))
        return Verdict(bool(out[0]), tuple(states))

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


def _period_end_ms(ends: int, now: float | None = None) -> int:
    """A quota's period end in Unix ms: `ends` (seconds) if still ahead, else the end
    of the calendar month (UTC)."""
    now = time.time() if now is None else now
    if ends > now:
        return ends * 1000
    start = datetime.fromtimestamp(now, UTC).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return int((start + timedelta(days=32)).replace(day=1).timestamp() * 1000)


def headers(states: tuple[BucketState, ...]) -> dict[str, str]:
    # a quota without a limit (a plan billed by overage) is counted, not announced
    states = tuple(s for s in states if s.policy.limit >= 0)
    if not states:
        return {}
    return {
        "RateLimit-Policy": ", ".join(
            f'"{s.policy.name}";q={s.policy.limit};w={s.policy.window}' for s in states
        ),
        "RateLimit": ", ".join(f'"{s.policy.name}";r={s.remaining};t={s.reset}' for s in states),
    }
