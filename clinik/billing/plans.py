"""Which plan an organization is on now (read by clinik.gateway.limits)."""

from typing import Any

from django.conf import settings
from django.utils import timezone

from clinik.billing.models import Account, Plan

FREE = "free"


def default_plan() -> Plan:
    return Plan.objects.get(slug=settings.BILLING_DEFAULT_PLAN)


def effective_plan(org_id: Any) -> tuple[Plan | None, int]:
    """The plan whose limits apply, and for how many seconds that holds at most.
    None: billing is off and no plan was assigned (the environment's defaults)."""
    account = Account.objects.select_related("plan").filter(org_id=org_id).first()
    forever = 10**9
    if account is None:
        return (default_plan() if settings.BILLING_ENABLED else None), forever
    ends = account.grace_ends_at
    now = timezone.now()
    if ends is not None:
        if now >= ends:
            return Plan.objects.get(slug=FREE), forever
        return account.plan, int((ends - now).total_seconds()) + 1
    return account.plan, forever
