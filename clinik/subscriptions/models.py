"""FHIR Subscriptions (rest-hook): what the dispatcher and the dashboard need.

`Subscription` mirrors each Subscription resource of a tenant, kept in sync by a
database trigger on fhir_history (migration 0002) in the transaction of the write. It
holds no clinical data: the criteria's search values stay in the FHIR store and are
read from there when matching. `OutboxEvent` and `Delivery` name resources by id, so
they have FORCE row-level security like the FHIR tables: use them inside
`tenant_transaction(org_id)`."""

import uuid

from django.db import models
from django.db.models import Q

from clinik.accounts.models import Organization


class Subscription(models.Model):
    class Status(models.TextChoices):
        REQUESTED = "requested"  # written by the trigger, not checked yet
        ACTIVE = "active"
        ERROR = "error"
        OFF = "off"

    # No database constraint: the trigger writes it for any tenant of the FHIR store.
    org = models.ForeignKey(
        Organization, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    resource_id = models.CharField(max_length=64)
    version_id = models.IntegerField()
    checked_version = models.IntegerField(default=0)
    criteria_type = models.CharField(max_length=64)
    channel_type = models.CharField(max_length=32)
    endpoint = models.TextField()
    payload = models.CharField(max_length=64, blank=True)
    headers = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.TextField(blank=True)
    # Sealed (Fernet token, clinik.subscriptions.sealing), never plain text; "" until
    # the first delivery or "show secret" makes one.
    secret = models.TextField(blank=True, default="")
    secret_shown = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org", "resource_id"], name="subscription_per_resource")
        ]
        indexes = [
            models.Index(
                fields=["org", "criteria_type"],
                name="subscription_live",
                condition=Q(status__in=["requested", "active"]),
            )
        ]

    def __str__(self) -> str:
        return f"Subscription {self.pk}"

    @property
    def endpoint_display(self) -> str:
        """Scheme and host only: a path or query could carry anything."""
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(self.endpoint)
            return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
        except ValueError:
            return "(invalid)"


class OutboxEvent(models.Model):
    """A committed change of a resource type some subscription of the tenant watches.
    Inserted by the trigger only; deleted once turned into deliveries."""

    org_id = models.UUIDField()
    resource_type = models.CharField(max_length=64)
    resource_id = models.CharField(max_length=64)
    version_id = models.IntegerField()
    deleted = models.BooleanField()
    created_at = models.DateTimeField()
    # Commit order within the tenant, set at COMMIT under a per-tenant lock held until
    # the commit is visible (migration 0004); NULL only for rows older than that.
    seq = models.BigIntegerField(null=True)

    class Meta:
        db_table = "subscriptions_outbox"
        indexes = [models.Index(fields=["org_id", "seq", "id"], name="outbox_commit_order")]

    def __str__(self) -> str:
        return f"OutboxEvent {self.pk}"


class Delivery(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    class Kind(models.TextChoices):
        CHANGE = "change"
        PING = "ping"

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    subscription = models.ForeignKey(
        Subscription, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    event_id = models.UUIDField(default=uuid.uuid4, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.CHANGE)
    resource_type = models.CharField(max_length=64, blank=True)
    resource_id = models.CharField(max_length=64, blank=True)
    version_id = models.IntegerField(null=True)
    deleted = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.IntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    last_status_code = models.IntegerField(null=True)
    last_latency_ms = models.IntegerField(null=True)
    last_error = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["subscription", "id"],
                name="delivery_pending",
                condition=Q(status="pending"),
            ),
            models.Index(fields=["org", "-id"], name="delivery_recent"),
        ]

    def __str__(self) -> str:
        return f"Delivery {self.pk}"
