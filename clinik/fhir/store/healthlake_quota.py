"""HealthLake's per-datastore request quotas (about 3,000 CRUD requests/s and 100
searches/s), kept by every worker together: one counter per datastore, kind and
second in Redis. A worker over the limit waits for the next second while its
request's deadline allows, else the request gets 503 + Retry-After (never a hang).

Adaptive: when the datastore throttles us anyway (other clients share it, or the
quota is lower than configured), every worker halves its share for a few seconds.
"""

import time
from typing import Any

import redis

from clinik.fhir.http import FhirError

SLOW_SECONDS = 5
_TAKE = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('EXISTS', KEYS[2])}
"""


class Quota:
    def __init__(self, client: Any, datastore_id: str, limits: dict[str, int]) -> None:
        self.redis = client
        self.datastore_id = datastore_id
        self.limits = limits
        self._take = client.register_script(_TAKE)

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
            # One round trip: count this request in its second, and say whether the
            # datastore throttled us lately (then the share is halved).
            count, slow = self._take(
                keys=[self._key(kind, str(second)), self._key(kind, "slow")], args=[3]
            )
            allowed = max(1, limit // 2) if slow else limit
            if int(count) <= allowed:
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
