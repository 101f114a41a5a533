"""Starting and cancelling a FHIR bulk export: the job row, its audit record and,
after commit, the worker. The job itself is in export.py, run by the thin tasks in
clinik/privacy/tasks.py; this module sits above both so the tasks never import back
(docs/architecture.md, "Layout and dependencies")."""

from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Organization
from clinik.fhir.export import ExportBusy, ExportParams
from clinik.gateway.limits import limits_for
from clinik.privacy.models import ExportJob
from clinik.privacy.tasks import delete_export_files, run_export


def _requested_by(actor: Any) -> tuple[str, str]:
    kind = getattr(actor, "audit_actor_type", "user")
    return kind, str(actor.pk)


@transaction.atomic
def start_export(
    *, org: Organization, actor: Any, params: ExportParams, request: HttpRequest | None
) -> ExportJob:
    """Queue an export; the worker starts after commit. ExportBusy when the plan's
    concurrent exports (queued or running) are all taken. The organization's row lock
    (lock_writable) makes concurrent kick-offs count one after the other."""
    org.lock_writable()
    limit = limits_for(org)
    if limit.max_exports >= 0:
        active = ExportJob.objects.filter(org=org).active().count()
        if active >= limit.max_exports:
            raise ExportBusy(limit.max_exports, limit.plan)
    by_type, by_id = _requested_by(actor)
    job = ExportJob.objects.create(
        org=org,
        requested_by_type=by_type,
        requested_by_id=by_id,
        kind=params.kind,
        group_id=params.group_id,
        types=sorted(params.types),
        type_filters=params.type_filters,
        since=params.since,
        output_format=params.output_format,
    )
    audit.record("export.start", org=org, actor=actor, target=job, request=request)
    job_id = str(job.pk)
    transaction.on_commit(lambda: run_export.delay(job_id))
    return job


@transaction.atomic
def cancel_export(*, job: ExportJob, actor: Any, request: HttpRequest | None) -> bool:
    """Cancel an export (queued, running or finished) and delete its files. False
    when it was cancelled already. A running worker notices within CHECK_EVERY rows."""
    job.org.lock_writable()
    changed = (
        ExportJob.objects.exclude(status=ExportJob.Status.CANCELLED)
        .filter(pk=job.pk)
        .update(status=ExportJob.Status.CANCELLED, finished_at=timezone.now())
    )
    if not changed:
        return False
    audit.record("export.cancel", org=job.org_id, actor=actor, target=job, request=request)
    job_id = str(job.pk)
    transaction.on_commit(lambda: delete_export_files.delay(job_id))
    return True
