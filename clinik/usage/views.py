import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe
from django.views.decorators.vary import vary_on_headers

from clinik import audit
from clinik.accounts.access import dashboard_context, get_membership
from clinik.keys.models import ApiKey
from clinik.lib.http import AuthedHttpRequest
from clinik.privacy import analytics
from clinik.usage import charts, queries
from clinik.usage.forms import METHOD_CHOICES, STATUS_CHOICES, LogFilterForm, RangeForm
from clinik.usage.models import ErrorLog, RequestLog


def parse_cursor(value: str | None) -> tuple[datetime, int] | None:
    """`<ISO time>_<id>` → (time, id); None for anything else."""
    if not value or "_" not in value:
        return None
    when, _, ident = value.rpartition("_")
    try:
        moment = datetime.fromisoformat(when)
    except ValueError:
        return None
    if not ident.isdigit():
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), int(ident)


def format_cursor(cursor: tuple[datetime, int] | None) -> str:
    return f"{cursor[0].isoformat()}_{cursor[1]}" if cursor else ""


def _range_query(params: QueryDict) -> str:
    return urlencode({k: params[k] for k in ("range", "start", "end") if params.get(k)})


def _query(params: QueryDict, **changes: str) -> str:
    kept = {k: v for k, v in params.items() if k not in ("before", "after") and v}
    kept.update({k: v for k, v in changes.items() if v})
    return urlencode(kept)


@login_required
@require_safe
@vary_on_headers("HX-Request")
def usage(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_membership(request, org_id)
    range_form = RangeForm(request.GET)
    rng = range_form.resolve()
    analytics.capture(request.user, "usage_page_viewed", range=request.GET.get("range") or "24h")
    summary = queries.summary(org_id, rng)
    hooks = queries.summary(org_id, rng, dim="hook")
    ctx = dashboard_context(
        request,
        membership,
        "usage",
        range_form=range_form,
        rng=rng,
        ranges=[(k, v[0]) for k, v in queries.RANGES.items()],
        summary=summary,
        requests_chart=charts.requests_chart(summary.buckets, rng),
        latency_chart=charts.latency_chart(summary.buckets, rng),
        hooks=hooks,
        hooks_chart=(
            charts.requests_chart(hooks.buckets, rng, deliveries=True) if hooks.total else None
        ),
        routes=queries.top_routes(org_id, rng),
        errors=queries.error_groups(org_id, rng, limit=8),
        keys=queries.per_key(org_id, rng),
        range_query=_range_query(request.GET),
    )
    template = "usage/page.html#panels" if request.htmx else "usage/page.html"
    return render(request, template, ctx)


def _log_context(
    request: AuthedHttpRequest, org_id: UUID, model: type[RequestLog] | type[ErrorLog]
) -> dict[str, Any]:
    rng = RangeForm(request.GET).resolve()
    form = LogFilterForm(request.GET)
    flt = form.to_filter(rng)
    page = queries.page(
        model,
        org_id,
        flt,
        before=parse_cursor(request.GET.get("before")),
        after=parse_cursor(request.GET.get("after")),
    )
    keys = ApiKey.objects.filter(org_id=org_id).order_by("name")
    names = {k.pk: k.name for k in keys}
    for row in page.rows:
        row.key_name = names.get(row.key_id, "")
    return {
        "form": form,
        "flt": flt,
        "rng": rng,
        "page": page,
        "keys": keys,
        "routes": queries.routes_seen(org_id, rng),
        "status_choices": STATUS_CHOICES,
        "method_choices": METHOD_CHOICES,
        "newer_query": _query(request.GET, after=format_cursor(page.newer)),
        "older_query": _query(request.GET, before=format_cursor(page.older)),
        "filter_query": _query(request.GET),
        "range_query": _range_query(request.GET),
    }


@login_required
@require_safe
@vary_on_headers("HX-Request")
def requests_log(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_membership(request, org_id)
    ctx = dashboard_context(
        request, membership, "usage", **_log_context(request, org_id, RequestLog)
    )
    template = "usage/requests.html#results" if request.htmx else "usage/requests.html"
    return render(request, template, ctx)


@login_required
@require_safe
@vary_on_headers("HX-Request")
def errors_log(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_membership(request, org_id)
    ctx = dashboard_context(request, membership, "usage", **_log_context(request, org_id, ErrorLog))
    ctx["groups"] = queries.error_groups(org_id, ctx["rng"])
    template = "usage/errors.html#results" if request.htmx else "usage/errors.html"
    return render(request, template, ctx)


class _Echo:
    def write(self, value: str) -> str:
        return value


CSV_COLUMNS = (
    "time_utc",
    "request_id",
    "method",
    "route",
    "resource_type",
    "status",
    "latency_ms",
    "response_bytes",
    "key_id",
)


def _csv_rows(org_id: UUID, flt: queries.LogFilter) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for row in queries.iterate(org_id, flt):
        yield writer.writerow(
            (
                row.time.astimezone(UTC).isoformat(),
                row.request_id,
                row.method,
                row.route,
                row.resource_type,
                row.status,
                f"{row.latency_us / 1000:.3f}",
                row.response_bytes,
                row.key_id or "",
            )
        )


@login_required
@require_safe
def requests_csv(request: AuthedHttpRequest, org_id: UUID) -> StreamingHttpResponse:
    membership = get_membership(request, org_id)
    flt = LogFilterForm(request.GET).to_filter(RangeForm(request.GET).resolve())
    with transaction.atomic():
        audit.record(
            "usage.export", org=membership.org, actor=request.user, target=None, request=request
        )
    response = StreamingHttpResponse(_csv_rows(org_id, flt), content_type="text/csv")
    name = f"requests-{flt.since:%Y%m%d%H%M}-{flt.until:%Y%m%d%H%M}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
