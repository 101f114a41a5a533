from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone


class EmailKind(models.TextChoices):
    SECURITY = "security", "Security"
    BILLING = "billing", "Billing"
    SERVICE = "service", "Service"
    POLICY = "policy", "Policy"


class EmailRecord(models.Model):
    """One email to one recipient: what kind, to whom, when, and whether it went.
    Never the body, the subject or the context."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        SENT = "sent"
        FAILED = "failed"

    kind = models.CharField(max_length=10, choices=EmailKind.choices)
    template = models.CharField(max_length=60)
    # Null for a recipient without an account (an invitee) and after account erasure.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=100, blank=True)  # exception class only
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.template} to user {self.user_id}: {self.status}"


class KnownBrowser(models.Model):
    """A browser and network a user signed in from, as a keyed hash of the user agent
    and the network prefix: no address or user agent is stored."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    fingerprint = models.CharField(max_length=64)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "fingerprint"], name="one_known_browser")
        ]
        indexes = [models.Index(fields=["last_seen"], name="known_browser_last_seen")]

    def __str__(self) -> str:
        return f"browser of user {self.user_id}"


class Component(models.TextChoices):
    API = "api", "FHIR API"
    DASHBOARD = "dashboard", "Dashboard"
    EXPORTS = "exports", "Bulk export"
    EMAIL = "email", "Email"


class IncidentQuerySet(models.QuerySet["Incident"]):
    def open(self) -> "IncidentQuerySet":
        return self.exclude(status=Incident.Status.RESOLVED)


class Incident(models.Model):
    """An outage or degradation, opened, updated and resolved by staff in the admin."""

    class Status(models.TextChoices):
        INVESTIGATING = "investigating", "Investigating"
        IDENTIFIED = "identified", "Identified"
        MONITORING = "monitoring", "Monitoring"
        RESOLVED = "resolved", "Resolved"

    title = models.CharField(max_length=200)
    status = models.CharField(max_length=15, choices=Status.choices, default=Status.INVESTIGATING)
    components = ArrayField(models.CharField(max_length=20, choices=Component.choices))
    message = models.TextField()
    # Empty: every organization is affected (and its owners are emailed).
    affected_orgs = models.ManyToManyField("accounts.Organization", blank=True, related_name="+")
    opened_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    opening_sent_at = models.DateTimeField(null=True, blank=True)
    resolution_sent_at = models.DateTimeField(null=True, blank=True)

    objects = IncidentQuerySet.as_manager()

    class Meta:
        ordering = ["-opened_at"]

    def __str__(self) -> str:
        return self.title

    def component_labels(self) -> list[str]:
        labels = dict(Component.choices)
        return [labels.get(c, c) for c in self.components]


class IncidentUpdate(models.Model):
    """One line of an incident's timeline (the opening message is the first)."""

    incident = models.ForeignKey(Incident, models.CASCADE, related_name="updates")
    status = models.CharField(max_length=15, choices=Incident.Status.choices)
    message = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.incident_id} {self.status}"


class PolicyNotice(models.Model):
    """The announcement of a policy version to one user: at most one (the unique
    constraint is what makes a rerun of the announcement job send nothing twice)."""

    policy = models.ForeignKey("privacy.PolicyVersion", models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["policy", "user"], name="one_notice")]

    def __str__(self) -> str:
        return f"policy {self.policy_id} to user {self.user_id}"


class PolicyAcknowledgement(models.Model):
    policy = models.ForeignKey("privacy.PolicyVersion", models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    acknowledged_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["policy", "user"], name="one_acknowledgement")
        ]

    def __str__(self) -> str:
        return f"policy {self.policy_id} acknowledged by {self.user_id}"
