from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseBase, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST, require_safe
from django.views.decorators.vary import vary_on_headers

from clinik.accounts.access import dashboard_context, get_membership
from clinik.accounts.models import Membership
from clinik.audit import export_actions, exports
from clinik.audit.forms import AuditFilterForm, ExportForm
from clinik.audit.models import AuditEvent, AuditExport
from clinik.audit.query import AuditFilter, events_of, iterate, page
from clinik.keys.models import ApiKey
from clinik.lib.http import AuthedHttpRequest
from clinik.privacy import analytics
from clinik.usage.views import format_cursor, parse_cursor


def _exporting_membership(request: AuthedHttpRequest, org_id: UUID) -> Membership:
    """Exports carry teammates' IP addresses: owners and admins only."""
    membership = get_membership(request, org_id)
    if not membership.can_manage:
        raise PermissionDenied
    return membership


def _query(params: QueryDict, **changes: str) -> str:
    kept = {k: v for k, v in params.items() if k not in ("before", "after", "format") and v}
    kept.update({k: v for k, v in changes.items() if v})
    return urlencode(kept)


def _actors(membership: Membership) -> list[tuple[str, str]]:
    org = membership.org
    members = org.memberships.select_related("user").order_by("user__email")
    keys = ApiKey.objects.filter(org=org).order_by("name")
    return [
        *((f"user:{m.user_id}", m.user.email) for m in members),
        *((f"key:{k.pk}", f"Key {k.name} ({k.display})") for k in keys),
        ("system", "ClinikAPI (system jobs)"),
        ("anonymous", "Anonymous"),
    ]


@login_required
@require_safe
@vary_on_headers("HX-Request")
def audit_log(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_membership(request, org_id)
    form = AuditFilterForm(request.GET)
    flt = form.to_filter()
    analytics.capture(request.user, "audit_log_viewed")
    result = page(
        events_of(org_id, flt),
        before=parse_cursor(request.GET.get("before")),
        after=parse_cursor(request.GET.get("after")),
    )
    names = exports.ActorNames(org_id)
    for event in result.rows:
        event.actor_name = names(event)  # type: ignore[attr-defined]
    ctx = dashboard_context(
        request,
        membership,
        "audit",
        form=form,
        flt=flt,
        page=result,
        actors=_actors(membership),
        newer_query=_query(request.GET, after=format_cursor(result.newer)),
        older_query=_query(request.GET, before=format_cursor(result.older)),
        filter_query=_query(request.GET),
        formats=AuditExport.Format.choices,
        recent_exports=AuditExport.objects.filter(org_id=org_id).order_by("-created_at")[:5],
    )
    template = "audit/log.html#results" if request.htmx else "audit/log.html"
    return render(request, template, ctx)


@login_required
@require_safe
def audit_event(request: AuthedHttpRequest, org_id: UUID, event_id: int) -> HttpResponse:
    membership = get_membership(request, org_id)
    event = get_object_or_404(AuditEvent, org_id=org_id, pk=event_id)
    event.actor_name = exports.ActorNames(org_id)(event)  # type: ignore[attr-defined]
    ctx = dashboard_context(request, membership, "audit", event=event)
    return render(request, "audit/event.html", ctx)


@login_required
@require_safe
def audit_export(request: AuthedHttpRequest, org_id: UUID) -> HttpResponseBase:
    """The current filter as a file: streamed when small, else offered as a job."""
    membership = _exporting_membership(request, org_id)
    fmt_form = ExportForm(request.GET)
    if not fmt_form.is_valid():
        raise Http404
    fmt = fmt_form.cleaned_data["format"]
    flt = AuditFilterForm(request.GET).to_filter()
    events = events_of(org_id, flt)
    limit = settings.AUDIT_EXPORT_INLINE_MAX
    count = events[: limit + 1].count()
    if count > limit:
        ctx = dashboard_context(
            request,
            membership,
            "audit",
            fmt=fmt,
            fmt_label=dict(AuditExport.Format.choices)[fmt],
            filter_query=_query(request.GET),
            limit=limit,
            params=[(k, v) for k, v in request.GET.items() if k != "format" and v],
        )
        return render(request, "audit/export_confirm.html", ctx)
    exports.record_export(membership.org, request.user, request)
    body = exports.serialize(fmt, iterate(events), exports.ActorNames(org_id))
    response = StreamingHttpResponse(body, content_type=exports.CONTENT_TYPES[fmt])
    ext = {"csv": "csv", "ndjson": "ndjson", "fhir": "json"}[fmt]
    response["Content-Disposition"] = f'attachment; filename="audit-log.{ext}"'
    return response


@login_required
@require_POST
def audit_export_start(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = _exporting_membership(request, org_id)
    fmt_form = ExportForm(request.POST)
    if not fmt_form.is_valid():
        return HttpResponse("Choose a format.", status=400)
    flt = AuditFilterForm(request.POST).to_filter()
    export = export_actions.start_export(
        org=membership.org,
        actor=request.user,
        fmt=fmt_form.cleaned_data["format"],
        flt=flt,
        request=request,
    )
    return redirect("audit_export_status", org_id, export.pk)


def _export_of(membership: Membership, export_id: int) -> AuditExport:
    return get_object_or_404(AuditExport, org_id=membership.org_id, pk=export_id)


@login_required
@require_safe
@vary_on_headers("HX-Request")
def audit_export_status(request: AuthedHttpRequest, org_id: UUID, export_id: int) -> HttpResponse:
    membership = _exporting_membership(request, org_id)
    export = _export_of(membership, export_id)
    ctx: dict[str, Any] = dashboard_context(
        request, membership, "audit", export=export, filters=AuditFilter.from_json(export.filters)
    )
    template = "audit/export.html#progress" if request.htmx else "audit/export.html"
    return render(request, template, ctx)


@login_required
@require_safe
def audit_export_download(
    request: AuthedHttpRequest, org_id: UUID, export_id: int
) -> StreamingHttpResponse:
    membership = _exporting_membership(request, org_id)
    export = _export_of(membership, export_id)
    opened = exports.open_export(export) if export.status == AuditExport.Status.DONE else None
    if opened is None:
        raise Http404
    chunks, size = opened
    response = StreamingHttpResponse(chunks, content_type=exports.CONTENT_TYPES[export.format])
    response["Content-Length"] = str(size)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response
