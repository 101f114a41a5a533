from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """One operation on record. Organizations, users and keys are referred to by
    plain ids (no foreign keys), so closing an account never rewrites the trail.
    Never resource content or search values.

    Append-only: the application role may only INSERT and SELECT, and a trigger
    refuses UPDATE and DELETE for every role except through the two sanctioned
    paths (migration 0002): blanking `ip`/`user_agent` and the 6-year purge."""

    class Outcome(models.TextChoices):
        SUCCESS = "success"
        FAILURE = "failure"
        DENIED = "denied"

    time = models.DateTimeField(default=timezone.now)
    org_id = models.UUIDField(null=True, blank=True)
    actor_type = models.CharField(max_length=10)  # user, key, system, anonymous
    actor_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    request_id = models.CharField(max_length=64, blank=True)
    # Personal data beside the row, outside the seal's hash: erased with the
    # account's personal data.
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=256, blank=True)

    class Meta:
        # The Audit log page's filters, each keyset-paged newest first, stay fast at
        # millions of rows; failures and denials (rare, wanted) get a partial index.
        indexes = [
            models.Index(fields=["org_id", "-time", "-id"], name="audit_org_time_id"),
            models.Index(fields=["org_id", "action", "-time", "-id"], name="audit_org_action"),
            models.Index(
                fields=["org_id", "actor_type", "actor_id", "-time", "-id"], name="audit_org_actor"
            ),
            models.Index(
                fields=["org_id", "-time", "-id"],
                name="audit_org_not_success",
                condition=~models.Q(outcome="success"),
            ),
            models.Index(
                fields=["org_id", "action", "-time", "-id"],
                name="audit_org_action_not_success",
                condition=~models.Q(outcome="success"),
            ),
            models.Index(fields=["actor_type", "actor_id"], name="audit_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.outcome} at {self.time:%Y-%m-%d %H:%M:%S}"

    @property
    def description(self) -> str:
        from clinik.audit.actions import ACTIONS

        return ACTIONS.get(self.action, "")


class AuditSeal(models.Model):
    """One link of a hash chain: `hash = sha256(prev_hash, seq, the event's canonical
    fields)`, ip and user agent excluded. Each organization has its own chain (its
    id); events without an organization (sign-ins) chain under "none". Written
    only by the sealer (insert-only, like the events)."""

    chain = models.CharField(max_length=36)
    seq = models.BigIntegerField()
    event_id = models.BigIntegerField(unique=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    sealed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["chain", "seq"], name="audit_seal_chain_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq}"


class AuditAnchor(models.Model):
    """Where a chain continues after a retention purge: the last purged link."""

    chain = models.CharField(max_length=36)
    seq = models.BigIntegerField()
    hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["chain", "-seq"], name="audit_anchor_chain_seq")]

    def __str__(self) -> str:
        return f"{self.chain}@{self.seq}"


class SealerState(models.Model):
    """The sealer's progress: every event with id <= watermark is sealed or never
    will exist. `pending_*` remember the last run's snapshot, so the watermark moves
    only once every transaction that was running then has ended (an event id taken
    by a transaction that commits late is still found and sealed)."""

    watermark = models.BigIntegerField(default=0)
    pending_max_id = models.BigIntegerField(default=0)
    pending_xmax = models.CharField(max_length=24, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"sealed up to {self.watermark}"


class AuditExport(models.Model):
    """A copy of the audit log (the current filter) written in the background."""

    class Format(models.TextChoices):
        CSV = "csv", "CSV"
        NDJSON = "ndjson", "NDJSON"
        FHIR = "fhir", "FHIR Bundle (AuditEvent)"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    org_id = models.UUIDField()
    requested_by_id = models.BigIntegerField(null=True)
    format = models.CharField(max_length=8, choices=Format.choices)
    filters = models.JSONField(default=dict)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    total = models.BigIntegerField(default=0)
    written = models.BigIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["org_id", "-created_at"], name="audit_export_org")]

    def __str__(self) -> str:
        return f"audit export {self.pk} ({self.status})"

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return min(99, self.written * 100 // self.total) if self.total else 0

    @property
    def filename(self) -> str:
        ext = {"csv": "csv", "ndjson": "ndjson", "fhir": "json"}[self.format]
        return f"audit-log-{self.created_at:%Y%m%d-%H%M%S}.{ext}"
