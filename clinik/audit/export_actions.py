"""Starting an audit export: the row, its audit record and, after commit, the job.
The job itself is `exports.run_export`, run by the thin task in `tasks.py`; this module
sits above both so the task never imports back (docs/architecture.md, "Layout and dependencies")."""

from typing import Any

from django.db import transaction
from django.http import HttpRequest

from clinik.audit.exports import record_export
from clinik.audit.models import AuditExport
from clinik.audit.query import AuditFilter
from clinik.audit.tasks import write_audit_export


def start_export(
    *, org: Any, actor: Any, fmt: str, flt: AuditFilter, request: HttpRequest | None
) -> AuditExport:
    with transaction.atomic(durable=True):
        org.lock_writable()  # no new export files under a closing organization's prefix
        export = AuditExport.objects.create(
            org_id=org.pk,
            requested_by_id=getattr(actor, "pk", None),
            format=fmt,
            filters=flt.as_json(),
        )
        record_export(org, actor, request, export.pk)
        transaction.on_commit(lambda: write_audit_export.delay(export.pk))
    return export
