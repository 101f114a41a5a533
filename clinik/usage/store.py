"""Writing request records to PostgreSQL: COPY into the day-partitioned logs and
upserts into the hourly and daily rollups, in one transaction. `drain()` moves
the Redis buffer here exactly once; `purge()` is the 90-day retention."""

import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from clinik.usage import histogram
from clinik.usage.queue import BUFFER_KEY, Record, redis_client

DRAINING_KEY = "clinik:usage:draining"
TOKEN_KEY = "clinik:usage:draining:token"  # noqa: S105 (a Redis key name)
CHUNK = 5000

_LOG_COLUMNS = (
    "time, org_id, key_id, method, route, resource_type, status, latency_us,"
    " response_bytes, request_id"
)
_ERROR_COLUMNS = "time, org_id, key_id, method, route, status, error_class, message, request_id"
_ROLLUP_COLUMNS = (
    "org_id, dim, bucket, key_id, route, method, status, requests, client_errors,"
    " server_errors, throttled, response_bytes, latency_us_sum, hist"
)
_ROLLUP_SQL = f"""
INSERT INTO {{table}} ({_ROLLUP_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (org_id, dim, bucket, key_id, route, method, status) DO UPDATE SET
  requests = {{table}}.requests + EXCLUDED.requests,
  client_errors = {{table}}.client_errors + EXCLUDED.client_errors,
  server_errors = {{table}}.server_errors + EXCLUDED.server_errors,
  throttled = {{table}}.throttled + EXCLUDED.throttled,
  response_bytes = {{table}}.response_bytes + EXCLUDED.response_bytes,
  latency_us_sum = {{table}}.latency_us_sum + EXCLUDED.latency_us_sum,
  hist = usage_hist_add({{table}}.hist, EXCLUDED.hist)
"""  # noqa: S608 (table names are constants; every value is a parameter)
ROLLUP_TABLES = {"hour": "usage_hourlyusage", "day": "usage_dailyusage"}


def _cutoff(now: datetime | None = None) -> datetime:
    return (now or timezone.now()) - timedelta(days=settings.USAGE_RETENTION_DAYS)


def ensure_partitions(first: date, last: date) -> None:
    """Create the day partitions from first to last if missing: one cheap call per
    batch of records, in the batch's transaction (no cache that a rollback could
    leave wrong)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT usage_ensure_partitions(%s, %s)", [first, last])


Rollups = dict[str, dict[tuple[Any, ...], list[Any]]]


def _accumulate(
    grains: Rollups,
    org_id: Any,
    hour: datetime,
    key_id: int | None,
    route: str,
    method: str,
    status: int,
    n: int,
    size: int,
    latency: int,
    hist: list[int],
) -> None:
    """Add n requests of one kind to the rows of every grain and dimension."""
    counts = (
        n,
        n if 400 <= status < 500 else 0,
        n if status >= 500 else 0,
        n if status == 429 else 0,
        size,
        latency,
    )
    dims = [("all", None, "", "", 0), ("route", None, route, method, 0), ("key", key_id, "", "", 0)]
    if status >= 400:
        dims.append(("error", None, route, method, status))
    for grain, bucket in (("hour", hour), ("day", hour.replace(hour=0))):
        rows = grains[grain]
        for dim, *rest in dims:
            key = (org_id, dim, bucket, *rest)
            entry = rows.get(key)
            if entry is None:
                entry = rows[key] = [0, 0, 0, 0, 0, 0, histogram.empty()]
            for i, value in enumerate(counts):
                entry[i] += value
            histogram.add(entry[6], hist)


def _rollup_keys(rows: Iterable[Record]) -> Rollups:
    grains: Rollups = {"hour": {}, "day": {}}
    for when, org_id, key_id, method, route, _rt, status, latency, size, *_ in rows:
        if org_id is None:
            continue  # not an organization's request: kept in the log, not rolled up
        one = histogram.empty()
        one[histogram.bucket(latency)] = 1
        hour = when.replace(minute=0, second=0, microsecond=0)
        _accumulate(grains, org_id, hour, key_id, route, method, status, 1, size, latency, one)
    return grains


def _write(cursor: Any, records: list[Record]) -> int:
    """Store records exactly once: a request log row is keyed by (time, request id),
    so a batch written twice (a Redis push that timed out after Redis stored it, then
    the PostgreSQL fallback; a drain rerun) adds nothing the second time. Only the rows
    actually inserted reach the error log and the rollups, which billing reads."""
    cutoff = _cutoff()
    rows = []
    for r in records:
        when = datetime.fromtimestamp(r[0], UTC)
        if when >= cutoff:
            rows.append((when, *r[1:]))
    if not rows:
        return 0
    ensure_partitions(min(r[0] for r in rows).date(), max(r[0] for r in rows).date())
    cursor.execute(
        "CREATE TEMP TABLE IF NOT EXISTS usage_incoming"
        " (LIKE usage_requestlog INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    cursor.execute("TRUNCATE usage_incoming")
    with cursor.copy(f"COPY usage_incoming ({_LOG_COLUMNS}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row[:10])
    cursor.execute(
        f"INSERT INTO usage_requestlog ({_LOG_COLUMNS})"  # noqa: S608 (constant columns)
        f" SELECT DISTINCT ON (time, request_id) {_LOG_COLUMNS} FROM usage_incoming"
        " ON CONFLICT (time, request_id) DO NOTHING RETURNING time, request_id"
    )
    fresh = set(cursor.fetchall())
    kept = []
    for r in rows:
        if (r[0], r[9]) in fresh:
            fresh.discard((r[0], r[9]))  # a record twice in one batch counts once
            kept.append(r)
    rows = kept
    errors = [r for r in rows if r[10] is not None]
    if errors:
        with cursor.copy(f"COPY usage_errorlog ({_ERROR_COLUMNS}) FROM STDIN") as copy:
            for r in errors:
                copy.write_row((r[0], r[1], r[2], r[3], r[4], r[6], r[10], r[11], r[9]))
    for grain, entries in _rollup_keys(rows).items():
        # Sorted, so concurrent writers lock rollup rows in the same order.
        params = [
            (*key, *values)
            for key, values in sorted(
                entries.items(), key=lambda item: tuple(str(part) for part in item[0])
            )
        ]
        if params:
            cursor.executemany(_ROLLUP_SQL.format(table=ROLLUP_TABLES[grain]), params)
    return len(rows)


def write_records(records: list[Record]) -> int:
    """Store records now (the fallback when Redis is away, and the drain's step)."""
    with transaction.atomic(), connection.cursor() as cursor:
        return _write(cursor, records)


# --- draining the Redis buffer exactly once ----------------------------------------------

# Claim the buffer: rename it to the draining list under a new token, unless an
# unfinished claim is still there (a killed drain), which is resumed instead.
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.call('GET', KEYS[3]) end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[1])
return ARGV[1]
"""
_READ = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return false end
return redis.call('LRANGE', KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
"""
_RELEASE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


def _drain_claim(client: Any, token: str, chunk: int, max_chunks: int | None) -> int:
    """Store one claimed batch, chunk by chunk. Each chunk's rows and the batch's new
    offset commit together; the offset row is locked, so concurrent drainers take
    turns instead of storing a chunk twice."""
    read = client.register_script(_READ)
    stored = chunks = 0
    while max_chunks is None or chunks < max_chunks:
        chunks += 1
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                'INSERT INTO usage_drainmark (token, "offset", created_at)'
                " VALUES (%s, 0, now()) ON CONFLICT (token) DO NOTHING",
                [token],
            )
            cursor.execute(
                'SELECT "offset" FROM usage_drainmark WHERE token = %s FOR UPDATE', [token]
            )
            (offset,) = cursor.fetchone()
            items = read(keys=[DRAINING_KEY, TOKEN_KEY], args=[token, offset, offset + chunk - 1])
            if not items:
                return stored
            _write(cursor, [tuple(orjson.loads(item)) for item in items])
            cursor.execute(
                'UPDATE usage_drainmark SET "offset" = %s WHERE token = %s',
                [offset + len(items), token],
            )
        stored += len(items)
    return -stored  # stopped by max_chunks: the claim stays open for the next run


def drain(chunk: int = CHUNK, max_claims: int = 20, max_chunks: int | None = None) -> int:
    """Move the Redis buffer into PostgreSQL; returns how many records were stored.
    Can be killed at any point and rerun: nothing is lost or stored twice.
    max_chunks bounds the work of one call (the rest waits for the next)."""
    client = redis_client()
    claim = client.register_script(_CLAIM)
    release = client.register_script(_RELEASE)
    stored = 0
    for _ in range(max_claims):
        token = claim(keys=[BUFFER_KEY, DRAINING_KEY, TOKEN_KEY], args=[uuid.uuid4().hex])
        if not token:
            break
        token = _text(token)
        done = _drain_claim(client, token, chunk, max_chunks)
        if done < 0:
            return stored - done
        stored += done
        release(keys=[DRAINING_KEY, TOKEN_KEY], args=[token])
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM usage_drainmark WHERE token = %s", [token])
    return stored


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def pending() -> int:
    """Records waiting in Redis (both the buffer and an unfinished claim)."""
    client = redis_client()
    waiting = int(client.llen(BUFFER_KEY)) + int(client.llen(DRAINING_KEY))
    token = client.get(TOKEN_KEY)
    if token:
        with connection.cursor() as cursor:
            cursor.execute('SELECT "offset" FROM usage_drainmark WHERE token = %s', [_text(token)])
            row = cursor.fetchone()
        waiting -= int(row[0]) if row else 0
    return waiting


# --- retention ----------------------------------------------------------------------------


def _delete_batches(sql: str, params: list[Any]) -> int:
    removed = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
            removed += cursor.rowcount
            if cursor.rowcount == 0:
                return removed


def purge(now: datetime | None = None, batch: int = 10_000) -> dict[str, int]:
    """Remove request logs, error logs and rollups older than USAGE_RETENTION_DAYS:
    whole days by dropping their partitions, the boundary day in batches.
    Idempotent; safe to kill and rerun. Also creates the next days' partitions."""
    cutoff = _cutoff(now)
    today = (now or timezone.now()).date()
    with connection.cursor() as cursor:
        cursor.execute("SELECT usage_drop_partitions_before(%s)", [cutoff.date()])
        (partitions,) = cursor.fetchone()
        cursor.execute("SELECT usage_ensure_partitions(%s, %s)", [today, today + timedelta(2)])
    counts = {"partitions": int(partitions)}
    for table in ("usage_requestlog", "usage_errorlog"):
        counts[table] = _delete_batches(
            f"DELETE FROM {table} WHERE (time, id) IN"  # noqa: S608
            f" (SELECT time, id FROM {table} WHERE time < %s ORDER BY time LIMIT %s)",
            [cutoff, batch],
        )
    for table in ROLLUP_TABLES.values():
        counts[table] = _delete_batches(
            f"DELETE FROM {table} WHERE id IN"  # noqa: S608
            f" (SELECT id FROM {table} WHERE bucket < %s ORDER BY bucket LIMIT %s)",
            [cutoff, batch],
        )
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM usage_drainmark WHERE created_at < %s", [timezone.now() - timedelta(1)]
        )
    return counts


def purge_org(org_id: uuid.UUID) -> int:
    """Remove one organization's usage data (account closure)."""
    removed = 0
    for table in ("usage_requestlog", "usage_errorlog"):
        removed += _delete_batches(
            f"DELETE FROM {table} WHERE (time, id) IN"  # noqa: S608
            f" (SELECT time, id FROM {table} WHERE org_id = %s LIMIT 10000)",
            [org_id],
        )
    for table in ROLLUP_TABLES.values():
        removed += _delete_batches(
            f"DELETE FROM {table} WHERE id IN"  # noqa: S608
            f" (SELECT id FROM {table} WHERE org_id = %s LIMIT 10000)",
            [org_id],
        )
    return removed


def count_delivery(
    org_id: uuid.UUID, when: datetime, status: int | None, latency_ms: int | None
) -> None:
    """One webhook delivery attempt of an organization in its hourly and daily rollups
    (dim `hook`), in the caller's transaction: its outcome class and latency, nothing
    else (no endpoint, no resource, no event id). status: the HTTP status, or None
    when no answer came (network error, timeout, an endpoint refused)."""
    failed_answer = status is not None and not 200 <= status < 300 and status < 500
    no_answer = status is None or status >= 500
    latency_us = max(int(latency_ms or 0), 0) * 1000
    hist = histogram.empty()
    hist[histogram.bucket(latency_us)] = 1
    hour = when.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        for grain, bucket in (("hour", hour), ("day", hour.replace(hour=0))):
            cursor.execute(
                _ROLLUP_SQL.format(table=ROLLUP_TABLES[grain]),
                [
                    org_id,
                    "hook",
                    bucket,
                    None,
                    "",
                    "",
                    0,
                    1,
                    int(failed_answer),
                    int(no_answer),
                    int(status == 429),
                    0,
                    latency_us,
                    hist,
                ],
            )


# --- rebuilding rollups from the log -----------------------------------------------------


def rebuild_rollups(org_id: uuid.UUID, start: datetime, end: datetime) -> int:
    """Recompute one organization's hourly and daily rollups for [start, end) (whole
    UTC days) from the request log: for recovery, and for loading benchmark data
    that was written with SQL. Returns the number of rollup rows written. Webhook
    delivery rows (dim `hook`) are not in the request log: they stay as they are."""
    bounds = list(histogram.BOUNDS_US)
    grains: Rollups = {"hour": {}, "day": {}}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT date_trunc('hour', time AT TIME ZONE 'UTC'), key_id, route, method, status,"
            " width_bucket(latency_us - 1, %s::int[]), count(*), sum(response_bytes),"
            " sum(latency_us) FROM usage_requestlog"
            " WHERE org_id = %s AND time >= %s AND time < %s GROUP BY 1, 2, 3, 4, 5, 6",
            [bounds, org_id, start, end],
        )
        for hour, key_id, route, method, status, index, n, size, latency in cursor:
            hist = histogram.empty()
            hist[index] = n
            _accumulate(
                grains,
                org_id,
                hour.replace(tzinfo=UTC),
                key_id,
                route,
                method,
                status,
                n,
                int(size),
                int(latency),
                hist,
            )
    written = 0
    with transaction.atomic(), connection.cursor() as cursor:
        for grain, rows in grains.items():
            table = ROLLUP_TABLES[grain]
            cursor.execute(
                f"DELETE FROM {table} WHERE org_id = %s AND bucket >= %s AND bucket < %s"  # noqa: S608
                " AND dim <> 'hook'",
                [org_id, start, end],
            )
            with cursor.copy(f"COPY {table} ({_ROLLUP_COLUMNS}) FROM STDIN") as copy:
                for key, values in rows.items():
                    copy.write_row((*key, *values))
            written += len(rows)
    return written
