from django.db import models
from django.utils import timezone


class AuditEvent(models.Model):
    """One operation on record. Organizations, users and keys are referred to by
    plain ids (no foreign keys), so closing an account never rewrites the trail.
    Never resource content or search values."""

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
    # Personal data beside the row: erased with the account's personal data.
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=256, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["org_id", "time"]),
            models.Index(fields=["action", "time"]),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.outcome} at {self.time:%Y-%m-%d %H:%M:%S}"
