"""The Redis list between the web processes and PostgreSQL: its key, the record
format and the client. Both `requestlog` (which pushes) and `store` (which drains)
import it; it imports neither, so the two stay one-way (requestlog → store → queue)."""

import os
from typing import Any

import orjson
import redis
from django.conf import settings

BUFFER_KEY = "clinik:usage:buffer"
PUSH_CHUNK = 5000

# (time, org_id, key_id, method, route, resource_type, status, latency_us,
#  response_bytes, request_id, error_class, message)
Record = tuple[Any, ...]

_clients: dict[tuple[int, str], redis.Redis] = {}


def redis_client() -> redis.Redis:
    url = settings.USAGE_REDIS_URL
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2)
        _clients[key] = client
    return client


def push(records: list[Record]) -> None:
    pipe = redis_client().pipeline(transaction=False)
    for start in range(0, len(records), PUSH_CHUNK):
        pipe.rpush(BUFFER_KEY, *(orjson.dumps(r) for r in records[start : start + PUSH_CHUNK]))
    pipe.execute()
