"""How much an organization may call the API. The gateway asks only `limits_for(org)`:
until billing provides real plans, every organization gets the plan defaults, which
come from the environment (settings.RATE_LIMIT_*)."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings


@dataclass(frozen=True, slots=True)
class Limits:
    org_requests: int
    """Requests per window for the whole organization, all keys together."""
    key_requests: int
    """Requests per window for any one key of the organization."""
    window: int
    """The window, in seconds."""


def limits_for(org: Any) -> Limits:
    return Limits(
        org_requests=settings.RATE_LIMIT_ORG_REQUESTS,
        key_requests=settings.RATE_LIMIT_KEY_REQUESTS,
        window=settings.RATE_LIMIT_WINDOW_SECONDS,
    )
