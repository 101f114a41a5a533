"""HealthLake's per-datastore request quotas (about 3,000 CRUD requests/s and 100
searches/s), kept by every worker together: one counter per datastore, kind and
second in Redis. A worker over the limit waits for the next second while its
request's deadline allows, else the request gets 503 + Retry-After (never a hang).

A worker takes its requests from Redis in batches of 1 % of the limit (one round
trip per batch, not per request), so no worker ever holds much of a second's share.

Adaptive: when the datastore throttles us anyway (other clients share it, or the
quota is lower than configured), every worker halves its share for a few seconds.
"""

import threading
import time
from typing import Any

import redis

from clinik.fhir.http import FhirError

SLOW_SECONDS = 5
_TAKE = """
local count = redis.call('INCRBY', KEYS[1], ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('EXISTS', KEYS[2])}
"""


class Quota:
    def __init__(self, client: Any, datastore_id: str, limits: dict[str, int]) -> None:
        self.redis = client
        self.datastore_id = datastore_id
        self.limits = limits
        self._take = client.register_script(_TAKE)
        self._held: dict[str, tuple[int, int]] = {}  # kind: (second, requests left)
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, datastore_id: str, limits: dict[str, int]) -> "Quota":
        return cls(redis.Redis.from_url(url), datastore_id, limits)

    def _key(self, kind: str, what: str) -> str:
        return f"clinik:healthlake:{self.datastore_id}:{kind}:{what}"

    def acquire(self, kind: str, deadline: float) -> None:
        """Take one request of `kind` from this second's share, waiting for a later
        second while the deadline allows; else 503 + Retry-After."""
        limit = self.limits[kind]
        while True:
            now = time.time()
            second = int(now)
            with self._lock:
                held = self._held.get(kind)
                if held is not None and held[0] == second and held[1] > 0:
                    self._held[kind] = (second, held[1] - 1)  # taken earlier this second
                    return
            # One round trip: take a batch of this second's requests (1 % of the
            # limit, so one worker never holds much of it), and learn whether the
            # datastore throttled us lately (then the share is halved).
            batch = max(1, limit // 100)
            count, slow = self._take(
                keys=[self._key(kind, str(second)), self._key(kind, "slow")], args=[3, batch]
            )
            allowed = max(1, limit // 2) if slow else limit
            granted = min(batch, allowed - (int(count) - batch))
            if granted > 0:
                with self._lock:
                    self._held[kind] = (second, granted - 1)
                return
            wait = second + 1 - now
            if time.monotonic() + wait > deadline:
                raise FhirError(
                    503,
                    "throttled",
                    "The FHIR store is at its request quota; retry after 1 s",
                    headers={"Retry-After": "1"},
                )
            time.sleep(wait)

    def slow_down(self, kind: str) -> None:
        self.redis.set(self._key(kind, "slow"), 1, ex=SLOW_SECONDS)
