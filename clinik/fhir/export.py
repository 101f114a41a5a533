"""FHIR Bulk Data export ($export): the job that writes NDJSON files, expiring it, and
the manifest. Starting and cancelling (which queue the job) are in export_actions.py,
HTTP is in export_views.py; the job row is clinik.privacy.models.ExportJob; files go
to clinik.privacy.storage.

Scope of each kind (documented in the README):
- system (`/$export`): every current resource of the organization.
- patient (`Patient/$export`): every Patient, and every resource whose `subject` or
  `patient` element references a Patient.
- group (`Group/[id]/$export`): the Group's members that are Patients
  (`member[].entity`), and every resource whose `subject` or `patient` references
  one of them. Other links (performer, participants, nested groups) are not followed.

Memory stays flat: resources stream from `store.iter_tenant` (a server-side cursor)
and each line is written as it arrives. Only the caller's tenant is ever read.
"""

import logging
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import orjson
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Organization
from clinik.fhir import conditional
from clinik.fhir.search.query import parse_search
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.fhir.store import Version, get_store
from clinik.fhir.tenancy import format_instant
from clinik.gateway.limits import PlanLimitReached
from clinik.privacy.models import ExportJob
from clinik.privacy.storage import ExportStorage, PartWriter, get_storage

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
CHECK_EVERY = 1000  # rows between progress reports and cancellation checks
_PROGRESS_TTL = 24 * 3600


class ExportBusy(PlanLimitReached):
    """The organization's plan allows no more concurrent exports (queued or running)."""

    def __init__(self, limit: int, plan: str) -> None:
        super().__init__("concurrent bulk exports", limit, plan, "wait for one to finish")


class ExportStopped(Exception):
    """The job was cancelled, or its organization is closing, while it ran."""


@dataclass(frozen=True)
class ExportParams:
    kind: str = ExportJob.Kind.SYSTEM
    types: list[str] = field(default_factory=list)
    since: datetime | None = None
    output_format: str = "application/fhir+ndjson"
    group_id: str = ""
    type_filters: dict[str, list[str]] = field(default_factory=dict)


# --- the job -------------------------------------------------------------------------------


def job_prefix(job: ExportJob) -> str:
    return f"{job.org_id}/{job.pk}"


def _claim(job_id: UUID | str) -> ExportJob | None:
    now = timezone.now()
    lease = now + timedelta(minutes=settings.EXPORT_MAX_RUN_MINUTES)
    changed = ExportJob.objects.filter(pk=job_id, status=ExportJob.Status.QUEUED).update(
        status=ExportJob.Status.RUNNING, started_at=now, lease_until=lease
    )
    return ExportJob.objects.select_related("org").get(pk=job_id) if changed else None


class _NdjsonFiles:
    """One file per resource type, a new part whenever a file would pass max_bytes."""

    def __init__(self, storage: ExportStorage, prefix: str, max_bytes: int) -> None:
        self.storage, self.prefix, self.max_bytes = storage, prefix, max_bytes
        self.files: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self._parts: dict[str, int] = {}
        self._part: PartWriter | None = None
        self._type = ""
        self._name = ""
        self._bytes = 0
        self._count = 0

    def write(self, resource_type: str, content: str) -> None:
        line = content.encode() + b"\n"
        if (
            self._part is None
            or resource_type != self._type
            or (self._count and self._bytes + len(line) > self.max_bytes)
        ):
            self._roll(resource_type)
        assert self._part is not None
        self._part.write(line)
        self._bytes += len(line)
        self._count += 1
        self.counts[resource_type] = self.counts.get(resource_type, 0) + 1

    def _roll(self, resource_type: str) -> None:
        self.close()
        number = self._parts[resource_type] = self._parts.get(resource_type, 0) + 1
        self._type, self._name = resource_type, f"{resource_type}-{number}.ndjson"
        self._bytes = self._count = 0
        self._part = self.storage.create(f"{self.prefix}/{self._name}")

    def close(self) -> None:
        if self._part is not None:
            self._part.commit()
            self.files.append(
                {"type": self._type, "name": self._name, "count": self._count, "bytes": self._bytes}
            )
            self._part = None

    def discard(self) -> None:
        if self._part is not None:
            self._part.discard()
            self._part = None


def _reference_ids(value: Any, target_type: str) -> Iterator[str]:
    for ref in value if isinstance(value, list) else [value]:
        if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
            continue
        path = ref["reference"].split("/_history/", 1)[0].rstrip("/").split("/")
        if len(path) >= 2 and path[-2] == target_type:
            yield path[-1]


def _patient_ids(content: str) -> set[str]:
    document = orjson.loads(content)
    found: set[str] = set()
    for element in ("subject", "patient"):
        if element in document:
            found.update(_reference_ids(document[element], "Patient"))
    return found


class GroupNotFound(Exception):
    pass


def group_members(org_id: UUID, group_id: str) -> set[str]:
    """Patient ids among the Group's members; GroupNotFound if it is not (or no
    longer) a current resource of this organization."""
    version = get_store().read(org_id, "Group", group_id)
    if version is None or version.content is None:
        raise GroupNotFound
    members = orjson.loads(version.content).get("member") or []
    ids: set[str] = set()
    for member in members:
        if isinstance(member, dict):
            ids.update(_reference_ids(member.get("entity"), "Patient"))
    return ids


@contextmanager
def _closing[T](iterator: Iterator[T]) -> Iterator[Iterator[T]]:
    """Close a generator when the block ends, so a store's transaction ends with it."""
    try:
        yield iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


FILTER_PAGE = 1000
"""Matches of a _typeFilter search read per page."""


def _filtered(job: ExportJob, resource_type: str, filters: list[str]) -> Iterator[Version]:
    """The current resources of one type that match any of its _typeFilter searches
    (and _since), through the search engine, page after page. With several filters a
    resource matching two is written once (their ids are remembered)."""
    seen: set[str] | None = set() if len(filters) > 1 else None
    for criteria in filters:
        params = conditional.parse_criteria(criteria)
        if job.since:
            params.append(("_lastUpdated", f"gt{format_instant(job.since)}"))
        query = parse_search(params, [resource_type], strict=True)
        query.count, query.total = FILTER_PAGE, "none"
        while True:
            result = get_store().search(job.org_id, query)
            for version in result.matches:
                if seen is not None:
                    if version.id in seen:
                        continue
                    seen.add(version.id)
                yield version
            if result.next is None:
                break
            query.cursor = result.next


def _tenant_versions(job: ExportJob) -> Iterator[Version]:
    """The job's resources before the kind's scope: the unfiltered types streamed in one
    snapshot, then each filtered type's matches."""
    filters: dict[str, list[str]] = job.type_filters or {}
    types = job.types or sorted(RESOURCE_TYPES)
    plain = [t for t in types if t not in filters]
    if plain:
        with _closing(
            get_store().iter_tenant(
                job.org_id, types=plain if (job.types or filters) else None, since=job.since
            )
        ) as versions:
            yield from versions
    for resource_type in sorted(filters):
        yield from _filtered(job, resource_type, filters[resource_type])


def _selected(job: ExportJob) -> Generator[Version]:
    with _closing(_tenant_versions(job)) as versions:
        if job.kind == ExportJob.Kind.SYSTEM:
            yield from versions
            return
        group = job.kind == ExportJob.Kind.GROUP
        members = group_members(job.org_id, job.group_id) if group else None
        for version in versions:
            if version.content is None:
                continue
            if version.resource_type == "Patient":
                if members is None or version.id in members:
                    yield version
                continue
            referenced = _patient_ids(version.content)
            if referenced and (members is None or not referenced.isdisjoint(members)):
                yield version


def _should_stop(job: ExportJob) -> bool:
    row = ExportJob.objects.filter(pk=job.pk).values_list("status", "org__status").first()
    return row is None or row[0] != ExportJob.Status.RUNNING or row[1] != Organization.Status.ACTIVE


def run_export(job_id: UUID | str, *, on_progress: Callable[[int], None] | None = None) -> str:
    """Claim a queued job and write its files. Returns the job's final status (or
    "skipped" if another worker had it). on_progress(rows) is called every
    CHECK_EVERY rows, before the cancellation check."""
    job = _claim(job_id)
    if job is None:
        return "skipped"
    storage = get_storage()
    files = _NdjsonFiles(storage, job_prefix(job), settings.EXPORT_FILE_MAX_BYTES)
    transaction_time = timezone.now()
    written = 0
    try:
        # The store's transaction ends with this block, before the job row is updated.
        with _closing(_selected(job)) as versions:
            for version in versions:
                files.write(version.resource_type, version.content or "")
                written += 1
                if written % CHECK_EVERY == 0:
                    cache.set(job.progress_cache_key(), written, _PROGRESS_TTL)
                    if on_progress is not None:
                        on_progress(written)
                    if _should_stop(job):
                        raise ExportStopped
        files.close()
    except ExportStopped:
        files.discard()
        storage.delete_prefix(job_prefix(job))
        ExportJob.objects.filter(pk=job.pk).update(
            lease_until=None, files_deleted=True, type_filters=NO_FILTERS
        )
        # The organization may be closing while the job still says running.
        ExportJob.objects.filter(pk=job.pk, status=ExportJob.Status.RUNNING).update(
            status=ExportJob.Status.CANCELLED, finished_at=timezone.now()
        )
        return ExportJob.Status.CANCELLED
    except Exception as error:
        files.discard()
        storage.delete_prefix(job_prefix(job))
        reason = "The Group is not found" if isinstance(error, GroupNotFound) else "Internal error"
        logger.exception("export %s failed", job.pk)
        _fail(job, reason)
        return ExportJob.Status.FAILED
    finally:
        cache.delete(job.progress_cache_key())
    return _complete(job, files, written, transaction_time, storage)


def _fail(job: ExportJob, reason: str, *, files_deleted: bool = True) -> None:
    with transaction.atomic():
        changed = ExportJob.objects.filter(pk=job.pk, status=ExportJob.Status.RUNNING).update(
            status=ExportJob.Status.FAILED,
            error=reason,
            finished_at=timezone.now(),
            lease_until=None,
            files_deleted=files_deleted,
            type_filters=NO_FILTERS,
        )
        if changed:
            audit.record("export.fail", org=job.org_id, actor=None, target=job, outcome="failure")


def _complete(
    job: ExportJob,
    files: _NdjsonFiles,
    written: int,
    transaction_time: datetime,
    storage: ExportStorage,
) -> str:
    now = timezone.now()
    with transaction.atomic():
        changed = ExportJob.objects.filter(pk=job.pk, status=ExportJob.Status.RUNNING).update(
            status=ExportJob.Status.COMPLETED,
            exported=written,
            counts=files.counts,
            files=files.files,
            transaction_time=transaction_time,
            finished_at=now,
            expires_at=now + timedelta(hours=settings.EXPORT_RETENTION_HOURS),
            lease_until=None,
        )
        if changed:
            audit.record("export.complete", org=job.org_id, actor=None, target=job)
    if not changed:  # cancelled after the last check: its files must not stay
        storage.delete_prefix(job_prefix(job))
        ExportJob.objects.filter(pk=job.pk).update(
            lease_until=None, files_deleted=True, type_filters=NO_FILTERS
        )
        return ExportJob.Status.CANCELLED
    return ExportJob.Status.COMPLETED


# A job's _typeFilter searches hold search values (PHI): kept only while the job can
# run or its manifest be read, then cleared with its files (docs/privacy.md).
NO_FILTERS: dict[str, list[str]] = {}


# --- cleanup ----------------------------------------------------------------------------------


def delete_files(job_id: UUID | str) -> bool:
    """Delete the files of a cancelled, failed or expired job unless a worker still
    holds it (that worker deletes its own files when it notices). Idempotent."""
    now = timezone.now()
    job = ExportJob.objects.filter(pk=job_id).first()
    if job is None or job.status in (*ExportJob.ACTIVE, ExportJob.Status.COMPLETED):
        return False
    if job.lease_until is not None and job.lease_until > now:
        return False
    get_storage().delete_prefix(job_prefix(job))
    ExportJob.objects.filter(pk=job.pk).update(
        files_deleted=True, lease_until=None, type_filters=NO_FILTERS
    )
    return True


def purge_expired_exports(now: datetime | None = None) -> int:
    """The hourly retention job: expire finished exports past their expiry, fail
    jobs whose worker died (lease passed), and delete the files of every job that
    no longer needs them. Returns the number of jobs whose files were deleted."""
    now = now or timezone.now()
    for job in ExportJob.objects.filter(
        status=ExportJob.Status.COMPLETED, expires_at__lt=now
    ).order_by("expires_at"):
        with transaction.atomic():
            changed = ExportJob.objects.filter(pk=job.pk, status=ExportJob.Status.COMPLETED).update(
                status=ExportJob.Status.EXPIRED
            )
            if changed:
                audit.record("export.expire", org=job.org_id, actor=None, target=job)
    for job in ExportJob.objects.filter(status=ExportJob.Status.RUNNING, lease_until__lt=now):
        _fail(job, "The export worker stopped", files_deleted=False)
    done = 0
    stale = ExportJob.objects.filter(
        status__in=(
            ExportJob.Status.CANCELLED,
            ExportJob.Status.FAILED,
            ExportJob.Status.EXPIRED,
        ),
        files_deleted=False,
    ).order_by("created_at")
    for job_id in stale.values_list("pk", flat=True):
        done += delete_files(job_id)
    return done


# --- the manifest -----------------------------------------------------------------------------


def kickoff_path(job: ExportJob) -> str:
    if job.kind == ExportJob.Kind.PATIENT:
        return "Patient/$export"
    if job.kind == ExportJob.Kind.GROUP:
        return f"Group/{job.group_id}/$export"
    return "$export"


def kickoff_url(job: ExportJob, base: str) -> str:
    """The kick-off request, rebuilt from the job's parameters (never stored raw)."""
    params: dict[str, str] = {}
    if job.types:
        params["_type"] = ",".join(job.types)
    if job.since:
        params["_since"] = format_instant(job.since)
    if job.output_format != "application/fhir+ndjson":
        params["_outputFormat"] = job.output_format
    if job.type_filters:
        params["_typeFilter"] = ",".join(
            f"{t}?{criteria.replace(',', '%2C')}"
            for t in sorted(job.type_filters)
            for criteria in job.type_filters[t]
        )
    query = f"?{urlencode(params)}" if params else ""
    return f"{base}{kickoff_path(job)}{query}"


def status_url(job: ExportJob, base: str) -> str:
    return f"{base}$export-poll-status?{urlencode({'_jobId': str(job.pk)})}"


def file_url(job: ExportJob, base: str, name: str) -> str:
    return f"{base}$export-file?{urlencode({'_jobId': str(job.pk), 'file': name})}"


def manifest(job: ExportJob, base: str) -> dict[str, Any]:
    assert job.transaction_time is not None
    return {
        "transactionTime": format_instant(job.transaction_time),
        "request": kickoff_url(job, base),
        "requiresAccessToken": True,
        "output": [
            {"type": f["type"], "url": file_url(job, base, f["name"]), "count": f["count"]}
            for f in job.files
        ],
        "error": [],
    }
