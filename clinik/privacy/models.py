from django.db import models


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
