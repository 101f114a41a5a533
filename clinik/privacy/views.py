"""The public privacy policy, the organization's "Data & privacy" page (bulk exports,
closure) and the user's own data page (download, analytics objection, deletion).

Nothing here shows clinical data: export jobs are listed with their types, counts
and dates; their files are downloaded only with the organization's API keys."""

import json
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.views.decorators.http import require_POST, require_safe

from clinik import audit
from clinik.accounts.access import dashboard_context, get_managing_membership, get_membership
from clinik.accounts.models import Membership, Organization, OrganizationReadOnly
from clinik.fhir.export import ExportBusy, ExportParams, status_url
from clinik.fhir.export_actions import cancel_export, start_export
from clinik.keys.models import ApiKey
from clinik.lib.http import AuthedHttpRequest
from clinik.notify import policy as notify_policy
from clinik.notify.models import PolicyAcknowledgement
from clinik.privacy import analytics
from clinik.privacy.account_data import account_data
from clinik.privacy.closure import (
    ClosureRefused,
    do_cancel_closure,
    do_request_closure,
    open_closure,
)
from clinik.privacy.deletion import (
    AlreadyRequested,
    LastOwner,
    do_cancel_deletion,
    do_request_deletion,
    open_deletion,
)
from clinik.privacy.erasure import last_owner_orgs
from clinik.privacy.forms import AnalyticsForm, CloseForm, DeleteAccountForm
from clinik.privacy.models import ExportJob

EXPORTS_SHOWN = 20


@require_safe
def policy(request: HttpRequest) -> HttpResponse:
    """The version in force today and the next one: the page switches by itself on
    the effective date."""
    current, upcoming = notify_policy.current_version(), notify_policy.upcoming_version()
    acknowledged = set()
    if request.user.is_authenticated:
        acknowledged = set(
            PolicyAcknowledgement.objects.filter(
                user=request.user, policy__in=[p for p in (current, upcoming) if p]
            ).values_list("policy_id", flat=True)
        )
    ctx = {"policy": current, "upcoming": upcoming, "acknowledged": acknowledged}
    return render(request, "public/privacy.html", ctx)


# --- the organization's Data & privacy page ----------------------------------------------


def get_owner_membership(request: AuthedHttpRequest, org_id: UUID) -> Membership:
    """Like get_membership, but only owners pass (403 for admins and developers)."""
    membership = get_membership(request, org_id)
    if membership.role != Membership.Role.OWNER:
        raise PermissionDenied
    return membership


def _requesters(jobs: list[ExportJob]) -> dict[str, str]:
    key_ids = [j.requested_by_id for j in jobs if j.requested_by_type == "key"]
    user_ids = [j.requested_by_id for j in jobs if j.requested_by_type == "user"]
    labels = {
        f"key:{k.pk}": f"API key “{k.name}” ({k.display})"
        for k in ApiKey.objects.filter(pk__in=key_ids)
    }
    for m in Membership.objects.filter(user_id__in=user_ids).select_related("user"):
        labels[f"user:{m.user_id}"] = m.user.name or m.user.email
    return labels


def _exports_context(request: HttpRequest, org: Organization) -> dict[str, Any]:
    jobs = list(ExportJob.objects.filter(org=org)[:EXPORTS_SHOWN])
    labels = _requesters(jobs)
    base = request.build_absolute_uri("/fhir/R4/")
    for job in jobs:
        job.requester = labels.get(  # type: ignore[attr-defined]
            f"{job.requested_by_type}:{job.requested_by_id}", "a former member or key"
        )
        job.status_url = status_url(job, base)  # type: ignore[attr-defined]
    return {"exports": jobs, "polling": any(j.is_active for j in jobs)}


def _page(
    request: AuthedHttpRequest, membership: Membership, *, status: int = 200, **extra: Any
) -> HttpResponse:
    org = membership.org
    ctx = dashboard_context(
        request,
        membership,
        "privacy",
        closure=open_closure(org),
        is_owner=membership.role == Membership.Role.OWNER,
        close_form=extra.pop("close_form", None) or CloseForm(org=org),
        retention_hours=settings.EXPORT_RETENTION_HOURS,
        **_exports_context(request, org),
        **extra,
    )
    response = render(request, "privacy/page.html", ctx, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


@login_required
@require_safe
def data_privacy(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    return _page(request, get_membership(request, org_id))


@login_required
@require_safe
def privacy_exports(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    """The export list alone, polled by htmx while a job runs. Once none runs, the
    fragment comes back without its trigger and the polling stops."""
    membership = get_membership(request, org_id)
    ctx = {"org": membership.org, "membership": membership}
    ctx.update(_exports_context(request, membership.org))
    response = render(request, "privacy/page.html#exports", ctx)
    add_never_cache_headers(response)
    return response


@login_required
@require_POST
def privacy_export_start(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    try:
        start_export(org=membership.org, actor=request.user, params=ExportParams(), request=request)
    except OrganizationReadOnly:
        messages.error(request, "This organization is closing: no new exports can start.")
        return redirect("data_privacy", org_id)
    except ExportBusy as busy:
        messages.error(request, str(busy))
        return redirect("data_privacy", org_id)
    analytics.capture(request.user, "export_started")
    messages.success(request, "Export started. Its files are downloaded with an API key.")
    return redirect("data_privacy", org_id)


@login_required
@require_POST
def privacy_export_cancel(request: AuthedHttpRequest, org_id: UUID, job_id: UUID) -> HttpResponse:
    membership = get_managing_membership(request, org_id)
    job = get_object_or_404(ExportJob, org=membership.org, pk=job_id)
    if cancel_export(job=job, actor=request.user, request=request):
        messages.success(request, "Export cancelled; its files are deleted.")
    return redirect("data_privacy", org_id)


@login_required
@require_POST
def privacy_close(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_owner_membership(request, org_id)
    form = CloseForm(request.POST, org=membership.org)
    if not form.is_valid():
        return _page(request, membership, close_form=form, status=400)
    try:
        closure = do_request_closure(org=membership.org, actor=request.user, request=request)
    except ClosureRefused:
        messages.error(request, "This organization is already closing.")
        return redirect("data_privacy", org_id)
    analytics.capture(request.user, "closure_requested")
    messages.success(
        request,
        f"{membership.org.name} is closing. Its API keys are revoked; its data will be "
        f"deleted on {closure.scheduled_for:%d %B %Y}. You can cancel until then.",
    )
    return redirect("data_privacy", org_id)


@login_required
@require_POST
def privacy_close_cancel(request: AuthedHttpRequest, org_id: UUID) -> HttpResponse:
    membership = get_owner_membership(request, org_id)
    closure = open_closure(membership.org)
    if closure is None:
        raise Http404
    if do_cancel_closure(closure=closure, actor=request.user, request=request):
        messages.success(request, "The closure is cancelled. Create new API keys to resume.")
    else:
        messages.error(request, "The deletion has already started and cannot be cancelled.")
    return redirect("data_privacy", org_id)


# --- the user's own data (GDPR) ------------------------------------------------------------


def _account_page(request: AuthedHttpRequest, *, status: int = 200, **extra: Any) -> HttpResponse:
    user = request.user
    ctx: dict[str, Any] = {
        "deletion": open_deletion(user),
        "blocking_orgs": last_owner_orgs(user),
        "delete_form": extra.pop("delete_form", None) or DeleteAccountForm(user=user),
        **extra,
    }
    membership = (
        Membership.objects.filter(user=user, org_id=request.session.get("org_id"))
        .select_related("org")
        .first()
        or Membership.objects.filter(user=user).select_related("org").first()
    )
    if membership and membership.org.status != Organization.Status.CLOSED:
        ctx.update(dashboard_context(request, membership, "account"))
    return render(request, "privacy/account.html", ctx, status=status)


@login_required
@require_safe
def account_data_page(request: AuthedHttpRequest) -> HttpResponse:
    return _account_page(request)


@login_required
@require_safe
def account_data_download(request: AuthedHttpRequest) -> HttpResponse:
    data = account_data(request.user)
    with transaction.atomic():
        audit.record(
            "account.data_download",
            org=None,
            actor=request.user,
            target=request.user,
            request=request,
        )
    response = HttpResponse(
        json.dumps(data, indent=2, ensure_ascii=False), content_type="application/json"
    )
    response["Content-Disposition"] = 'attachment; filename="clinikapi-account-data.json"'
    add_never_cache_headers(response)
    return response


@login_required
@require_POST
def account_analytics(request: AuthedHttpRequest) -> HttpResponse:
    form = AnalyticsForm(request.POST)
    form.is_valid()
    user = request.user
    opt_out = bool(form.cleaned_data.get("opt_out"))
    if opt_out != user.analytics_opt_out:
        user.analytics_opt_out = opt_out
        with transaction.atomic():
            user.save(update_fields=["analytics_opt_out"])
            action = "account.analytics_opt_out" if opt_out else "account.analytics_opt_in"
            audit.record(action, org=None, actor=user, target=user, request=request)
    messages.success(
        request,
        "Product analytics are off for you." if opt_out else "Product analytics are on for you.",
    )
    return redirect("account_data")


@login_required
@require_POST
def account_analytics_reset(request: AuthedHttpRequest) -> HttpResponse:
    with transaction.atomic():
        analytics.reset_id(request.user)
        audit.record(
            "account.analytics_id_reset",
            org=None,
            actor=request.user,
            target=request.user,
            request=request,
        )
    messages.success(request, "Your analytics id is reset: new events cannot be linked to old.")
    return redirect("account_data")


@login_required
@require_POST
def account_delete(request: AuthedHttpRequest) -> HttpResponse:
    form = DeleteAccountForm(request.POST, user=request.user)
    if not form.is_valid():
        return _account_page(request, delete_form=form, status=400)
    try:
        deletion = do_request_deletion(user=request.user, request=request)
    except LastOwner:
        messages.error(request, "Close your organizations or hand them over first.")
        return _account_page(request, delete_form=form, status=409)
    except AlreadyRequested:
        messages.error(request, "Your account deletion is already scheduled.")
        return redirect("account_data")
    messages.success(
        request,
        f"Your account will be deleted on {deletion.scheduled_for:%d %B %Y}. "
        "You can cancel until then.",
    )
    return redirect("account_data")


@login_required
@require_POST
def account_delete_cancel(request: AuthedHttpRequest) -> HttpResponse:
    deletion = open_deletion(request.user)
    if deletion is None:
        raise Http404
    if do_cancel_deletion(deletion=deletion, user=request.user, request=request):
        messages.success(request, "Your account deletion is cancelled.")
    else:
        messages.error(request, "The deletion has already started and cannot be cancelled.")
    return redirect("account_data")
