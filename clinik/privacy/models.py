"""Data rights and retention: policy versions, bulk export jobs, account closures and
account deletions. Nothing here holds PHI: export jobs keep parameters (types, a
date), counts and file names; closures and deletions keep dates, ids and counts."""

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import models
from django.db.models import Q
from django.utils import timezone

from clinik.accounts.models import Organization, User

# Policy §6: account data and PHI are deleted within 30 days of closure.
POLICY_DAYS = 30
# The daily safety net runs any closure or deletion this close to its deadline, even
# before the grace period ends, so a lost job can never let the deadline pass.
SAFETY_MARGIN = timedelta(days=2)
# How long a worker holds a closure or deletion it claimed: a killed worker's claim
# lapses after this and the job can be run again.
LEASE = timedelta(hours=2)


class PolicyVersion(models.Model):
    """A published version of the privacy policy. A new row announces a change:
    users are emailed at least 30 days before `effective_on` (policy §11)."""

    version = models.PositiveIntegerField(unique=True)
    last_updated = models.DateField()
    effective_on = models.DateField()
    summary = models.TextField(blank=True)
    template_name = models.CharField(max_length=200)

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"Privacy policy v{self.version} ({self.last_updated})"


# --- bulk export ----------------------------------------------------------------------


class ExportJobQuerySet(models.QuerySet["ExportJob"]):
    def active(self) -> "ExportJobQuerySet":
        return self.filter(status__in=ExportJob.ACTIVE)


class ExportJob(models.Model):
    """One FHIR bulk export ($export) of one organization."""

    class Kind(models.TextChoices):
        SYSTEM = "system", "All data"
        PATIENT = "patient", "Patients"
        GROUP = "group", "Group"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"
        EXPIRED = "expired"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, models.CASCADE, related_name="export_jobs")
    # Plain ids: ("key", "12") or ("user", "3"), so the row never pins a key or a user.
    requested_by_type = models.CharField(max_length=4)
    requested_by_id = models.CharField(max_length=64)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SYSTEM)
    group_id = models.CharField(max_length=64, blank=True)
    types = models.JSONField(default=list, blank=True)  # empty: every type
    # _typeFilter: {type: [search query, ...]}. Search values: never shown or logged.
    type_filters = models.JSONField(default=dict, blank=True)
    since = models.DateTimeField(null=True, blank=True)
    output_format = models.CharField(max_length=40, default="application/fhir+ndjson")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    exported = models.PositiveBigIntegerField(default=0)
    counts = models.JSONField(default=dict, blank=True)  # {"Patient": 12, ...}
    files = models.JSONField(default=list, blank=True)  # [{"name", "type", "count", "bytes"}]
    error = models.CharField(max_length=200, blank=True)  # never PHI: a short reason
    transaction_time = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Held by the worker while it writes; a killed worker's lease lapses.
    lease_until = models.DateTimeField(null=True, blank=True)
    files_deleted = models.BooleanField(default=False)

    objects = ExportJobQuerySet.as_manager()

    class Meta:
        indexes = [
            # The active exports of an organization, counted against its plan's
            # concurrent exports (clinik.fhir.export_actions.start_export).
            models.Index(
                fields=["org"],
                condition=Q(status__in=["queued", "running"]),
                name="export_active_by_org",
            ),
            models.Index(fields=["org", "created_at"]),
            models.Index(fields=["status", "expires_at"]),
        ]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"export {self.pk} of {self.org_id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_cancellable(self) -> bool:
        return self.status in (*self.ACTIVE, self.Status.COMPLETED)

    @property
    def is_downloadable(self) -> bool:
        return (
            self.status == self.Status.COMPLETED
            and self.expires_at is not None
            and self.expires_at > timezone.now()
        )

    def progress_cache_key(self) -> str:
        # The organization id is in the key so closure finds and drops it with the rest.
        return f"export-progress:{self.org_id}:{self.pk}"

    def live_exported(self) -> int:
        """Resources written so far: live from the worker while running (the export
        reads in one long transaction, so its progress is shared through the cache)."""
        if self.status == self.Status.RUNNING:
            return max(int(cache.get(self.progress_cache_key()) or 0), self.exported)
        return self.exported


# --- closure and deletion ----------------------------------------------------------------


class ScheduledQuerySet(models.QuerySet[Any]):
    """Closures and account deletions: requests that run after a grace period."""

    def open(self) -> "ScheduledQuerySet":
        return self.filter(status__in=("pending", "running"))

    def due(self, now: datetime | None = None) -> "ScheduledQuerySet":
        """Open, not held by a live worker, and past its grace period or near its deadline."""
        now = now or timezone.now()
        return (
            self.open()
            .filter(Q(lease_until__isnull=True) | Q(lease_until__lt=now))
            .filter(Q(scheduled_for__lte=now) | Q(deadline__lte=now + SAFETY_MARGIN))
        )


def schedule_for(requested_at: datetime) -> tuple[datetime, datetime]:
    """(when the deletion runs, the policy deadline) for a request made at requested_at."""
    deadline = requested_at + timedelta(days=POLICY_DAYS)
    scheduled = requested_at + timedelta(days=settings.CLOSURE_GRACE_DAYS)
    return min(scheduled, deadline - SAFETY_MARGIN), deadline


class Closure(models.Model):
    """An owner's request to close an organization. The row outlives the organization's
    data: it records when the deletion ran and what it deleted (counts, no content)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        CANCELLED = "cancelled"

    org = models.ForeignKey(Organization, models.CASCADE, related_name="closures")
    requested_by_id = models.BigIntegerField(null=True, blank=True)  # plain user id
    requested_at = models.DateTimeField(default=timezone.now)
    scheduled_for = models.DateTimeField()
    deadline = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    lease_until = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    steps_done = models.JSONField(default=list, blank=True)
    deleted = models.JSONField(default=dict, blank=True)  # {"fhir_history": 120, ...}
    # Captured by the job before the account data is erased, for the completion
    # notice; emptied when the job completes.
    org_name = models.CharField(max_length=100, blank=True)
    notify_emails = models.JSONField(default=list, blank=True)
    member_ids = models.JSONField(default=list, blank=True)

    objects = ScheduledQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org"],
                condition=Q(status__in=["pending", "running"]),
                name="one_open_closure_per_org",
            )
        ]
        indexes = [models.Index(fields=["status", "scheduled_for"])]
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"closure of {self.org_id} ({self.status})"


class AccountDeletion(models.Model):
    """A user's request to delete their own account (GDPR erasure)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        BLOCKED = "blocked"  # the user had become a last owner when it was due

    user = models.ForeignKey(User, models.CASCADE, related_name="deletion_requests")
    requested_at = models.DateTimeField(default=timezone.now)
    scheduled_for = models.DateTimeField()
    deadline = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    lease_until = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    notify_email = models.CharField(max_length=254, blank=True)  # emptied when done

    objects = ScheduledQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user"],
                condition=Q(status__in=["pending", "running"]),
                name="one_open_deletion_per_user",
            )
        ]
        indexes = [models.Index(fields=["status", "scheduled_for"])]
        ordering = ["-requested_at"]

    def __str__(self) -> str:
        return f"deletion of user {self.user_id} ({self.status})"


class AnalyticsId(models.Model):
    """The random id product analytics know a user by (never the user id or email).
    Deleting the row resets it: the next event gets a new one."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, models.CASCADE, primary_key=True, related_name="+"
    )
    distinct_id = models.UUIDField(default=uuid.uuid4, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"analytics id of user {self.user_id}"
