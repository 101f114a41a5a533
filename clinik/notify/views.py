from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST, require_safe

from clinik import audit
from clinik.lib.http import AuthedHttpRequest
from clinik.notify import policy
from clinik.notify.emails import CATALOGUE
from clinik.notify.models import Component, EmailKind, Incident
from clinik.privacy.models import PolicyVersion

HISTORY_SHOWN = 30


@require_safe
def status(request: HttpRequest) -> HttpResponse:
    incidents = list(Incident.objects.prefetch_related("updates")[:HISTORY_SHOWN])
    current = [i for i in incidents if i.status != Incident.Status.RESOLVED]
    affected = {c for i in current for c in i.components}
    components = [(label, value in affected) for value, label in Component.choices]
    ctx = {
        "current": current,
        "history": [i for i in incidents if i.status == Incident.Status.RESOLVED],
        "components": components,
    }
    return render(request, "notify/status.html", ctx)


@require_safe
def emails(request: HttpRequest) -> HttpResponse:
    kinds = dict(EmailKind.choices)
    rows = [(kinds[e.kind], name, e.when) for name, e in CATALOGUE.items()]
    return render(request, "notify/emails.html", {"rows": sorted(rows)})


@login_required
@require_POST
def policy_acknowledge(request: AuthedHttpRequest, version: int) -> HttpResponse:
    shown = {p.pk for p in (policy.current_version(), policy.upcoming_version()) if p}
    version_row = PolicyVersion.objects.filter(version=version, pk__in=shown).first()
    if version_row is None:
        raise Http404
    with transaction.atomic():
        if policy.acknowledge(request.user, version_row):
            audit.record(
                "account.policy_acknowledge",
                org=None,
                actor=request.user,
                target=version_row,
                request=request,
            )
    messages.success(request, f"Thank you: version {version} is acknowledged.")
    return redirect("privacy")
