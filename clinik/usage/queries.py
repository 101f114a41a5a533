"""What the Usage page shows, read from the rollups (never from the raw log, so the
page costs the same at ten thousand requests or ten million) and, for the request
log table, from the day-partitioned log with keyset paging."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connection
from django.db.models import Q, QuerySet

from clinik.usage import histogram
from clinik.usage.models import ErrorLog, RequestLog
from clinik.usage.store import ROLLUP_TABLES

_HIST = ", ".join(f"sum(hist[{i}])" for i in range(1, histogram.SIZE + 1))
_CLASSES = "sum(requests), sum(client_errors), sum(server_errors), sum(throttled)"
_WHERE = "WHERE org_id = %s AND dim = %s AND bucket >= %s AND bucket < %s"

RANGES: dict[str, tuple[str, timedelta, str]] = {
    "24h": ("24 hours", timedelta(hours=24), "hour"),
    "7d": ("7 days", timedelta(days=7), "hour"),
    "30d": ("30 days", timedelta(days=30), "day"),
    "90d": ("90 days", timedelta(days=90), "day"),
}
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True)
class Range:
    key: str
    label: str
    start: datetime
    end: datetime
    grain: str

    @property
    def buckets(self) -> list[datetime]:
        out, at = [], self.start
        while at < self.end:
            out.append(at)
            at += STEP[self.grain]
        return out


def _floor(moment: datetime, grain: str) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if grain == "day" else moment


def preset(key: str, now: datetime) -> Range:
    label, span, grain = RANGES[key]
    end = _floor(now, grain) + STEP[grain]
    return Range(key, label, end - span, end, grain)


def custom(start: datetime, end: datetime, now: datetime, retention_days: int) -> Range:
    """A custom range, clamped to what is retained; hourly up to 7 days, else daily."""
    earliest = now - timedelta(days=retention_days)
    start, end = max(start, earliest), min(end, now + timedelta(hours=1))
    grain = "hour" if end - start <= timedelta(days=7) else "day"
    start, end = _floor(start, grain), _floor(end, grain) + STEP[grain]
    label = f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
    return Range("custom", label, start, max(end, start + STEP[grain]), grain)


@dataclass
class Bucket:
    start: datetime
    ok: int = 0
    client_errors: int = 0
    server_errors: int = 0
    throttled: int = 0
    hist: list[int] = field(default_factory=histogram.empty)

    @property
    def total(self) -> int:
        return self.ok + self.client_errors + self.server_errors

    def percentile(self, p: float) -> float | None:
        return histogram.percentile(self.hist, p)


@dataclass
class Summary:
    buckets: list[Bucket]
    total: int
    ok: int
    client_errors: int
    server_errors: int
    throttled: int
    response_bytes: int
    p50: float | None
    p95: float | None
    p99: float | None

    @property
    def error_rate(self) -> float:
        return (self.client_errors + self.server_errors) / self.total * 100 if self.total else 0


def _nums(row: tuple[Any, ...]) -> list[int]:
    return [int(v or 0) for v in row]


def summary(org_id: UUID, rng: Range, dim: str = "all") -> Summary:
    """The time series of one dimension without breakdown: `all` (API requests) or
    `hook` (webhook delivery attempts: ok = answered 2xx)."""
    table = ROLLUP_TABLES[rng.grain]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT bucket, requests, client_errors, server_errors, throttled, response_bytes,"  # noqa: S608
            f" hist FROM {table} {_WHERE}",
            [org_id, dim, rng.start, rng.end],
        )
        rows = cursor.fetchall()
    found = {}
    total_hist = histogram.empty()
    size = 0
    for bucket, requests, c4, c5, throttled, response_bytes, hist in rows:
        found[bucket] = Bucket(bucket, requests - c4 - c5, c4, c5, throttled, list(hist))
        histogram.add(total_hist, hist)
        size += response_bytes
    buckets = [found.get(at) or Bucket(at) for at in rng.buckets]
    return Summary(
        buckets=buckets,
        total=sum(b.total for b in buckets),
        ok=sum(b.ok for b in buckets),
        client_errors=sum(b.client_errors for b in buckets),
        server_errors=sum(b.server_errors for b in buckets),
        throttled=sum(b.throttled for b in buckets),
        response_bytes=size,
        p50=histogram.percentile(total_hist, 50),
        p95=histogram.percentile(total_hist, 95),
        p99=histogram.percentile(total_hist, 99),
    )


@dataclass
class RouteRow:
    route: str
    method: str
    requests: int
    errors: int
    p50: float | None
    p95: float | None
    p99: float | None
    share: float = 0.0


def top_routes(org_id: UUID, rng: Range, limit: int = 10) -> list[RouteRow]:
    table = ROLLUP_TABLES[rng.grain]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT route, method, sum(requests), sum(client_errors) + sum(server_errors),"  # noqa: S608
            f" {_HIST} FROM {table} {_WHERE}"
            " GROUP BY route, method ORDER BY 3 DESC, 1, 2 LIMIT %s",
            [org_id, "route", rng.start, rng.end, limit],
        )
        rows = cursor.fetchall()
    out = []
    for route, method, *values in rows:
        requests, errors, *hist = _nums(values)
        out.append(
            RouteRow(
                route,
                method,
                requests,
                errors,
                histogram.percentile(hist, 50),
                histogram.percentile(hist, 95),
                histogram.percentile(hist, 99),
            )
        )
    top = max((r.requests for r in out), default=0)
    for r in out:
        r.share = r.requests / top * 100 if top else 0
    return out


@dataclass
class ErrorGroup:
    status: int
    route: str
    method: str
    requests: int


def error_groups(org_id: UUID, rng: Range, limit: int = 20) -> list[ErrorGroup]:
    table = ROLLUP_TABLES[rng.grain]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT status, route, method, sum(requests) FROM {table} {_WHERE}"  # noqa: S608
            " GROUP BY status, route, method ORDER BY 4 DESC, 1, 2 LIMIT %s",
            [org_id, "error", rng.start, rng.end, limit],
        )
        return [ErrorGroup(int(s), r, m, int(n)) for s, r, m, n in cursor.fetchall()]


@dataclass
class KeyRow:
    key_id: int | None
    requests: int
    client_errors: int
    server_errors: int
    throttled: int
    p95: float | None
    name: str = ""


def per_key(org_id: UUID, rng: Range) -> list[KeyRow]:
    from clinik.keys.models import ApiKey

    table = ROLLUP_TABLES[rng.grain]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT key_id, {_CLASSES}, {_HIST} FROM {table} {_WHERE}"  # noqa: S608
            " GROUP BY key_id ORDER BY 2 DESC",
            [org_id, "key", rng.start, rng.end],
        )
        rows = cursor.fetchall()
    out = []
    for key_id, *values in rows:
        requests, c4, c5, throttled, *hist = _nums(values)
        out.append(KeyRow(key_id, requests, c4, c5, throttled, histogram.percentile(hist, 95)))
    keys = ApiKey.objects.filter(org_id=org_id, pk__in=[r.key_id for r in out if r.key_id])
    names = {k.pk: f"{k.name} ({k.display})" for k in keys}
    for r in out:
        r.name = names.get(r.key_id, "No key identified") if r.key_id else "No key identified"
    return out


# --- the request log table -------------------------------------------------------------

STATUS_CLASSES = {"2xx": (200, 300), "3xx": (300, 400), "4xx": (400, 500), "5xx": (500, 600)}


@dataclass
class LogFilter:
    since: datetime
    until: datetime
    status: str = ""
    method: str = ""
    route: str = ""
    key_id: int | None = None
    request_id: str = ""

    def apply(self, rows: QuerySet[Any]) -> QuerySet[Any]:
        rows = rows.filter(time__gte=self.since, time__lt=self.until)
        if self.status in STATUS_CLASSES:
            low, high = STATUS_CLASSES[self.status]
            rows = rows.filter(status__gte=low, status__lt=high)
        elif self.status.isdigit():
            rows = rows.filter(status=int(self.status))
        if self.method:
            rows = rows.filter(method=self.method)
        if self.route:
            rows = rows.filter(route=self.route)
        if self.key_id is not None:
            rows = rows.filter(key_id=self.key_id)
        if self.request_id:
            rows = rows.filter(request_id=self.request_id)
        return rows


def _after_cursor(cursor: tuple[datetime, int] | None, newest_first: bool) -> Q:
    if cursor is None:
        return Q()
    at, ident = cursor
    if newest_first:
        return Q(time__lte=at) & (Q(time__lt=at) | Q(id__lt=ident))
    return Q(time__gte=at) & (Q(time__gt=at) | Q(id__gt=ident))


@dataclass
class Page:
    rows: list[Any]
    newer: tuple[datetime, int] | None
    older: tuple[datetime, int] | None


def page(
    model: type[RequestLog] | type[ErrorLog],
    org_id: UUID,
    flt: LogFilter,
    *,
    before: tuple[datetime, int] | None = None,
    after: tuple[datetime, int] | None = None,
    size: int = 50,
) -> Page:
    """One page, newest first. `before`: the page older than that row; `after`:
    the page newer than it. Keyset: the cost does not grow with the page number."""
    rows = flt.apply(model.objects.filter(org_id=org_id))
    if after is not None:
        found = list(rows.filter(_after_cursor(after, False)).order_by("time", "id")[: size + 1])
        more_newer = len(found) > size
        found = found[:size][::-1]
        older = (found[-1].time, found[-1].id) if found else None
        newer = (found[0].time, found[0].id) if found and more_newer else None
        return Page(found, newer, older)
    found = list(rows.filter(_after_cursor(before, True)).order_by("-time", "-id")[: size + 1])
    more_older = len(found) > size
    found = found[:size]
    newer = (found[0].time, found[0].id) if found and before is not None else None
    older = (found[-1].time, found[-1].id) if found and more_older else None
    return Page(found, newer, older)


def iterate(org_id: UUID, flt: LogFilter, chunk: int = 5000) -> Any:
    """Every matching request record, newest first, in keyset chunks (CSV export)."""
    cursor = None
    while True:
        rows = flt.apply(RequestLog.objects.filter(org_id=org_id)).filter(
            _after_cursor(cursor, True)
        )
        found = list(rows.order_by("-time", "-id")[:chunk])
        yield from found
        if len(found) < chunk:
            return
        cursor = (found[-1].time, found[-1].id)


def routes_seen(org_id: UUID, rng: Range) -> list[str]:
    table = ROLLUP_TABLES[rng.grain]
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT DISTINCT route FROM {table} {_WHERE} ORDER BY 1 LIMIT 200",  # noqa: S608
            [org_id, "route", rng.start, rng.end],
        )
        return [row[0] for row in cursor.fetchall()]
