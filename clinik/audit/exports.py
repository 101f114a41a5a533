"""A copy of the audit log (policy §8): the current filter as CSV, NDJSON or a FHIR
R4 Bundle of AuditEvent resources. Small ones stream straight to the browser; large
ones are written by a background job into the export storage (local or S3, like
bulk exports: keys under `<org id>/`, so closing the organization removes them)
and downloaded from there. Never resource content: the trail holds none."""

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, timedelta
from typing import Any
from uuid import UUID

import orjson
from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

from clinik import audit
from clinik.audit.actions import ACTIONS
from clinik.audit.models import AuditEvent, AuditExport
from clinik.audit.query import AuditFilter, events_of, iterate

COLUMNS = (
    "id",
    "time_utc",
    "action",
    "outcome",
    "actor_type",
    "actor_id",
    "actor",
    "target_type",
    "target_id",
    "request_id",
    "ip",
    "user_agent",
)
CONTENT_TYPES = {
    "csv": "text/csv",
    "ndjson": "application/x-ndjson",
    "fhir": "application/fhir+json",
}
CODE_SYSTEM = "https://clinikapi.com/fhir/CodeSystem/audit-action"
ID_SYSTEMS = {
    "user": "https://clinikapi.com/fhir/sid/user",
    "key": "https://clinikapi.com/fhir/sid/api-key",
}
_INTERACTIONS = {
    "read": ("read", "R"),
    "vread": ("vread", "R"),
    "search": ("search-type", "R"),
    "history": ("history-instance", "R"),
    "create": ("create", "C"),
    "update": ("update", "U"),
    "patch": ("patch", "U"),
    "delete": ("delete", "D"),
    "expunge": ("delete", "D"),
    "batch": ("batch", "E"),
    "operation": ("operation", "E"),
}
_OUTCOMES = {"success": "0", "failure": "4", "denied": "4"}


class ActorNames:
    """Who the ids are, for people reading the copy: emails and key names."""

    def __init__(self, org_id: UUID) -> None:
        from clinik.accounts.models import User
        from clinik.keys.models import ApiKey

        self.keys = {
            str(k.pk): f"{k.name} ({k.display})" for k in ApiKey.objects.filter(org_id=org_id)
        }
        self._users: dict[str, str] = {}
        self._user_model = User

    def __call__(self, event: AuditEvent) -> str:
        if event.actor_type == "key":
            return self.keys.get(event.actor_id, "")
        if event.actor_type == "user" and event.actor_id:
            if event.actor_id not in self._users:
                user = self._user_model.objects.filter(pk=event.actor_id).first()
                self._users[event.actor_id] = user.email if user else ""
            return self._users[event.actor_id]
        return ""


def _safe_cell(value: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas (a user agent is
    client-chosen): such cells get a leading apostrophe."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def as_row(event: AuditEvent, names: ActorNames) -> list[Any]:
    return [
        event.id,
        event.time.astimezone(UTC).isoformat(),
        event.action,
        event.outcome,
        event.actor_type,
        event.actor_id,
        names(event),
        event.target_type,
        event.target_id,
        event.request_id,
        event.ip or "",
        event.user_agent,
    ]


def as_fhir(event: AuditEvent, names: ActorNames) -> dict[str, Any]:
    """One FHIR R4 AuditEvent."""
    namespace, _, verb = event.action.partition(".")
    rest = namespace == "fhir" and verb in _INTERACTIONS
    subtype = [{"system": CODE_SYSTEM, "code": event.action, "display": ACTIONS[event.action]}]
    if rest:
        subtype.append(
            {"system": "http://hl7.org/fhir/restful-interaction", "code": _INTERACTIONS[verb][0]}
        )
    agent: dict[str, Any] = {"requestor": event.actor_type in ("user", "key", "anonymous")}
    if event.actor_type in ID_SYSTEMS and event.actor_id:
        agent["who"] = {
            "identifier": {"system": ID_SYSTEMS[event.actor_type], "value": event.actor_id}
        }
    display = names(event)
    agent["name"] = display or event.actor_type
    if event.ip:
        agent["network"] = {"address": event.ip, "type": "2"}
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event.id),
        "type": (
            {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
                "display": "RESTful Operation",
            }
            if rest
            else {
                "system": "http://dicom.nema.org/resources/ontology/DCM",
                "code": "110100",
                "display": "Application Activity",
            }
        ),
        "subtype": subtype,
        "action": _INTERACTIONS[verb][1] if rest else "E",
        "recorded": event.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "outcome": _OUTCOMES[event.outcome],
        "outcomeDesc": event.outcome,
        "agent": [agent],
        "source": {
            "observer": {"display": "ClinikAPI"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "3",
                    "display": "Web Server",
                }
            ],
        },
    }
    entities = []
    if event.target_type:
        what: dict[str, Any]
        if rest and event.target_id:
            what = {"reference": f"{event.target_type}/{event.target_id}"}
        else:
            what = {
                "identifier": {
                    "system": f"https://clinikapi.com/fhir/sid/{event.target_type}",
                    "value": event.target_id or event.target_type,
                }
            }
        entities.append({"what": what})
    if event.request_id:
        entities.append(
            {
                "what": {
                    "identifier": {
                        "system": "https://clinikapi.com/fhir/sid/request-id",
                        "value": event.request_id,
                    }
                },
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
            }
        )
    if entities:
        resource["entity"] = entities
    return resource


def serialize(fmt: str, events: Iterable[AuditEvent], names: ActorNames) -> Iterator[bytes]:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        for i, event in enumerate(events, 1):
            writer.writerow([_safe_cell(v) for v in as_row(event, names)])
            if i % 500 == 0:
                yield buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue().encode()
    elif fmt == "ndjson":
        for event in events:
            yield orjson.dumps(dict(zip(COLUMNS, as_row(event, names), strict=True))) + b"\n"
    elif fmt == "fhir":
        yield b'{"resourceType":"Bundle","type":"collection","entry":['
        for i, event in enumerate(events):
            entry = {"fullUrl": f"urn:clinikapi:audit-event:{event.id}"}
            entry["resource"] = as_fhir(event, names)  # type: ignore[assignment]
            yield (b"," if i else b"") + orjson.dumps(entry)
        yield b"]}"
    else:
        raise ValueError(f"unknown export format {fmt!r}")


def record_export(
    org: Any, actor: Any, request: HttpRequest | None, export_id: int | None = None
) -> None:
    audit.record(
        "audit.export",
        org=org,
        actor=actor,
        target=("audit.auditexport", str(export_id or "")),
        request=request,
    )


# --- background jobs --------------------------------------------------------------------


def storage_key(export: AuditExport) -> str:
    return f"{export.org_id}/audit-{export.pk}/{export.filename}"


class _Progress:
    """Counts events as they are serialized and saves the count now and then."""

    def __init__(self, export: AuditExport, events: Iterable[AuditEvent]) -> None:
        self.export, self.events = export, events

    def __iter__(self) -> Iterator[AuditEvent]:
        for n, event in enumerate(self.events, 1):
            yield event
            if n % 2000 == 0:
                AuditExport.objects.filter(pk=self.export.pk).update(written=n)
                self.export.written = n


def run_export(export_id: int) -> str:
    from clinik.privacy.storage import get_storage

    claimed = AuditExport.objects.filter(pk=export_id, status=AuditExport.Status.QUEUED).update(
        status=AuditExport.Status.RUNNING
    )
    if not claimed:
        return "not queued"
    export = AuditExport.objects.get(pk=export_id)
    events = events_of(export.org_id, AuditFilter.from_json(export.filters))
    export.total = events.count()
    export.save(update_fields=["total"])
    writer = get_storage().create(storage_key(export))
    size = 0
    try:
        progress = _Progress(export, iterate(events))
        for chunk in serialize(export.format, progress, ActorNames(export.org_id)):
            writer.write(chunk)
            size += len(chunk)
        writer.commit()
    except Exception:
        writer.discard()
        AuditExport.objects.filter(pk=export_id).update(
            status=AuditExport.Status.FAILED, finished_at=timezone.now()
        )
        raise
    AuditExport.objects.filter(pk=export_id).update(
        status=AuditExport.Status.DONE, written=export.total, size=size, finished_at=timezone.now()
    )
    return "done"


def open_export(export: AuditExport) -> tuple[Iterator[bytes], int] | None:
    from clinik.privacy.storage import get_storage

    return get_storage().open(storage_key(export))


def purge_expired(now: Any = None) -> int:
    """Delete export files after EXPORT_RETENTION_HOURS, and give up on jobs that
    have run longer than EXPORT_MAX_RUN_MINUTES (a killed worker)."""
    from clinik.privacy.storage import get_storage

    now = now or timezone.now()
    AuditExport.objects.filter(
        status__in=[AuditExport.Status.RUNNING, AuditExport.Status.QUEUED],
        created_at__lt=now - timedelta(minutes=settings.EXPORT_MAX_RUN_MINUTES),
    ).update(status=AuditExport.Status.FAILED, finished_at=now)
    expired = AuditExport.objects.filter(
        created_at__lt=now - timedelta(hours=settings.EXPORT_RETENTION_HOURS)
    ).order_by("created_at")
    removed = 0
    storage = get_storage()
    for export in expired[:1000]:
        storage.delete_prefix(f"{export.org_id}/audit-{export.pk}/")
        export.delete()
        removed += 1
    return removed
