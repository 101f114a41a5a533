"""One record per API request, including the ones the gateway refused.

The gateway calls `note()` once per /fhir/ request, after the response is built.
Recording must not slow the API: `note()` builds a tuple and appends it to this
process's in-memory buffer (no I/O). A daemon thread flushes the buffer every
USAGE_FLUSH_SECONDS (or as soon as USAGE_FLUSH_RECORDS are waiting) to a Redis
list with one RPUSH; the beat job (`store.drain`) moves that list into PostgreSQL.
If Redis cannot be reached the thread writes straight to PostgreSQL; if that fails
too, the records go back into the buffer (at most USAGE_BUFFER_MAX_RECORDS; the
oldest are dropped beyond that, counted and logged). The buffer is flushed at
process exit.

What a record holds: time, organization, key id, method, route template (never a
path with ids, a query string, a body or a header value), resource type, status,
latency, response size, request id; for failures the exception class (or the
OperationOutcome's issue code) and a message built from the status and that code.
"""

import atexit
import collections
import logging
import os
import re
import sys
import threading
import time
from http import HTTPStatus
from typing import Any

import orjson
import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.http import HttpRequest, HttpResponseBase

from clinik.audit.interactions import record_fhir_interaction
from clinik.lib import outage
from clinik.usage import store
from clinik.usage.queue import BUFFER_KEY as BUFFER_KEY  # re-exported for callers
from clinik.usage.queue import Record, push
from clinik.usage.queue import redis_client as redis_client

logger = logging.getLogger("clinik.usage")

UNROUTED = "(no route)"

_METHOD = re.compile(r"[A-Z]{1,10}")
_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,39}")
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,99}")


class Buffer:
    """This process's waiting records. Appends are lock-free (deque); taking the
    whole buffer swaps it under a lock."""

    def __init__(self) -> None:
        self._items: collections.deque[Record] = collections.deque()
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.dropped = 0
        self._warned_at = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, record: Record) -> None:
        self._items.append(record)
        size = len(self._items)
        if size >= settings.USAGE_FLUSH_RECORDS:
            self.wake.set()
        if size > settings.USAGE_BUFFER_MAX_RECORDS:
            self._drop(size - settings.USAGE_BUFFER_MAX_RECORDS)

    def take(self) -> list[Record]:
        with self._lock:
            items, self._items = self._items, collections.deque()
        return list(items)

    def put_back(self, records: list[Record]) -> None:
        with self._lock:
            self._items.extendleft(reversed(records))
        excess = len(self._items) - settings.USAGE_BUFFER_MAX_RECORDS
        if excess > 0:
            self._drop(excess)

    def clear(self) -> None:
        self.take()
        self.dropped = 0

    def _drop(self, count: int) -> None:
        with self._lock:
            for _ in range(min(count, len(self._items))):
                self._items.popleft()
                self.dropped += 1
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            logger.warning(
                "Request log buffer full (Redis and PostgreSQL unreachable): %s records "
                "dropped in this process so far",
                self.dropped,
            )


buffer = Buffer()


# --- building a record -------------------------------------------------------------


def note_exception(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """got_request_exception: remember the class (never the message) for the error log."""
    exc_type = sys.exc_info()[0]
    if request is not None and exc_type is not None:
        request._usage_exception = exc_type.__name__  # type: ignore[attr-defined]


def _route(request: Any) -> tuple[str, str]:
    """The route template and resource type; never the path itself."""
    route = getattr(request, "fhir_route", "")
    if route:
        return str(route), str(getattr(request, "fhir_resource_type", "") or "")
    from clinik.gateway import checks  # refused before the gateway parsed the path

    try:
        parsed = checks.guard_path(request.path_info)
    except checks.Refused:
        return UNROUTED, ""
    return parsed.template, parsed.resource_type


def _attribution(request: Any) -> tuple[str | None, int | None]:
    """The organization and key of the request: set by the gateway when the key
    authenticated; for requests refused before that (429 at the IP bucket, 413),
    the key this process has recently seen authenticate, if any. No I/O."""
    org, key = getattr(request, "org", None), getattr(request, "api_key", None)
    if org is not None:
        return str(org.pk), (key.pk if key is not None else None)
    from clinik.gateway import checks
    from clinik.gateway.ratelimit import known_keys

    digest = checks.presented_digest(request.META)
    org_id, key_id = None, None
    for policy, ident in (known_keys.get(digest) if digest else None) or ():
        if policy.name == "org":
            org_id = ident
        elif policy.name == "key":
            key_id = int(ident)
    return org_id, key_id if org_id else None


def _issue_code(response: HttpResponseBase) -> str | None:
    if response.streaming or "json" not in response.get("Content-Type", ""):
        return None
    body = response.content  # type: ignore[attr-defined]
    if len(body) > 65536:
        return None
    try:
        code = orjson.loads(body)["issue"][0]["code"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return code if isinstance(code, str) and _ISSUE_CODE.fullmatch(code) else None


def _error(request: Any, response: HttpResponseBase | None, status: int) -> tuple[str, str]:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    exception = getattr(request, "_usage_exception", None)
    code = _issue_code(response) if response is not None else None
    if exception and _CLASS_NAME.fullmatch(exception):
        error_class = exception
    elif code:
        error_class = f"OperationOutcome:{code}"
    else:
        error_class = f"HTTP {status}"
    message = f"{status} {reason}" + (f" ({code})" if code else "")
    return error_class, message


def build(request: Any, response: HttpResponseBase | None, started: float) -> Record:
    elapsed = time.perf_counter() - started
    status = response.status_code if response is not None else 500
    org_id, key_id = _attribution(request)
    method = str(request.method or "")
    if response is None or response.streaming:
        size = int(response.get("Content-Length") or 0) if response is not None else 0
    else:
        size = len(response.content)  # type: ignore[attr-defined]
    error_class, message = _error(request, response, status) if status >= 400 else (None, None)
    route, resource_type = _route(request)
    return (
        time.time() - elapsed,
        org_id,
        key_id,
        method if _METHOD.fullmatch(method) else "OTHER",
        route,
        resource_type,
        status,
        int(elapsed * 1_000_000),
        size,
        str(getattr(request, "request_id", "") or "")[:64],
        error_class,
        message,
    )


# --- denied and failed FHIR interactions on the audit trail --------------------------

_INSTANCE = {
    "GET": "fhir.read",
    "HEAD": "fhir.read",
    "PUT": "fhir.update",
    "PATCH": "fhir.patch",
    "DELETE": "fhir.delete",
}
_TYPE = {
    "GET": "fhir.search",
    "HEAD": "fhir.search",
    "POST": "fhir.create",
    "PUT": "fhir.update",
    "PATCH": "fhir.patch",
    "DELETE": "fhir.delete",
}


def fhir_action(method: str, route: str) -> str:
    """The audit action of a FHIR request, from its method and route template."""
    if route.endswith("/_history/{vid}"):
        return "fhir.vread"
    if route.endswith("/_history"):
        return "fhir.history"
    if "/$" in route:
        operation = route.rsplit("/$", 1)[1]
        return {"expunge": "fhir.expunge", "export": "export.start"}.get(
            operation, "fhir.operation"
        )
    if route.endswith("/_search"):
        return "fhir.search"
    if route.endswith("/{id}"):
        return _INSTANCE.get(method, "fhir.operation")
    if route == "/fhir/R4/":
        return "fhir.batch" if method == "POST" else "fhir.search"
    return _TYPE.get(method, "fhir.operation")


def _target(request: Any) -> tuple[str, str]:
    route = str(getattr(request, "fhir_route", ""))
    resource_id = ""
    if "{id}" in route:
        parts, path = route.split("/"), request.path_info.split("/")
        if len(parts) == len(path):
            resource_id = path[parts.index("{id}")]
    return str(getattr(request, "fhir_resource_type", "")), resource_id


def _audit_outcome(request: Any, status: int) -> None:
    """403s (scope, closing organization) are denied attempts and 5xx are failed ones;
    both are audited here because no interaction recorded them (a 5xx rolled the
    interaction's transaction back). 401s carry no known organization: the request
    log records them. 429s are left to the request log too, so that a flood of
    throttled requests cannot turn into a flood of database writes."""
    if getattr(request, "org", None) is None or not getattr(request, "fhir_route", ""):
        return
    record_fhir_interaction(
        request,
        fhir_action(str(request.method), request.fhir_route),
        _target(request),
        outcome="denied" if status == 403 else "failure",
    )


def note(request: HttpRequest, response: HttpResponseBase | None, started: float) -> None:
    """Called by the gateway once per API request. Never raises."""
    try:
        record = build(request, response, started)
        buffer.add(record)
        flusher.ensure_started()
    except Exception:
        logger.exception("Could not record an API request")
        return
    status = record[6]
    if status == 403 or (status >= 500 and not outage.is_down("postgres")):
        try:
            _audit_outcome(request, status)
        except DatabaseError as error:
            if (dependency := outage.unreachable(error)) is not None:
                outage.down(dependency)  # logged once per outage, not per request
            else:
                logger.exception("Could not audit a refused API request")


# --- flushing ---------------------------------------------------------------------------


def flush() -> int:
    """Move this process's buffer to Redis, or to PostgreSQL if Redis is away.
    Returns how many records left the buffer."""
    records = buffer.take()
    if not records:
        return 0
    try:
        push(records)
        return len(records)
    except redis.RedisError as error:
        logger.warning(
            "Request logs go to PostgreSQL directly: Redis failed (%s)", type(error).__name__
        )
    try:
        store.write_records(records)
        return len(records)
    except DatabaseError as error:
        buffer.put_back(records)
        logger.warning(
            "Request logs kept in memory: PostgreSQL failed too (%s)", type(error).__name__
        )
        return 0


class Flusher:
    """The per-process background thread; started on the first request of each
    process (after a fork), flushed once more at exit."""

    def __init__(self) -> None:
        self._pid = 0
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        if self._pid == os.getpid() or not settings.USAGE_FLUSH_THREAD:
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="usage-flusher", daemon=True).start()
            atexit.register(flush)

    def _run(self) -> None:
        while True:
            buffer.wake.wait(settings.USAGE_FLUSH_SECONDS)
            buffer.wake.clear()
            try:
                close_old_connections()
                flush()
            except Exception:
                logger.exception("Request log flush failed")


flusher = Flusher()
