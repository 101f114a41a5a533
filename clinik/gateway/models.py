from urllib.parse import urlsplit

from django.db import models
from django.utils import timezone

from clinik.accounts.models import Organization

MAX_ORIGINS_PER_ORG = 20
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str | None:
    """`scheme://host[:port]` as browsers send it in `Origin`, or None if `value` is
    not an http(s) origin (no path, query, fragment or user info)."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    if not all(c.isalnum() or c in ".-[]:" for c in host):
        return None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}"


class AllowedOriginQuerySet(models.QuerySet["AllowedOrigin"]):
    def allows(self, origin: str) -> bool:
        return self.filter(origin=origin.lower()).exists()


class AllowedOrigin(models.Model):
    """A browser origin allowed to call the API with this organization's keys (CORS)."""

    org = models.ForeignKey(Organization, models.CASCADE, related_name="allowed_origins")
    origin = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AllowedOriginQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org", "origin"], name="one_origin_per_org")]
        indexes = [models.Index(fields=["origin"])]
        ordering = ["origin"]

    def __str__(self) -> str:
        return self.origin
