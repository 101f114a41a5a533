"""After a failed payment the organization is past due: owners got an email, the
dashboard shows a banner, and for BILLING_GRACE_DAYS its plan's limits still apply.
Then Free's limits apply (clinik.billing.plans.effective_plan) until Stripe reports
the subscription paid again. Clinical data is never blocked or deleted by billing."""

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from clinik import audit
from clinik.billing.models import Account, announce_limits_changed


def note_ended_grace(now: datetime | None = None) -> int:
    """Audit each grace period that ended (once per past-due episode) and drop the
    cached limits so the next request sees Free's."""
    now = now or timezone.now()
    noted = 0
    for account in Account.objects.filter(
        past_due_since__isnull=False, fallback_noted_at__isnull=True
    ).select_related("org"):
        if not account.in_fallback(now):
            continue
        with transaction.atomic():
            changed = Account.objects.filter(pk=account.pk, fallback_noted_at__isnull=True).update(
                fallback_noted_at=now
            )
            if changed:
                audit.record(
                    "billing.grace_end", org=account.org, actor=None, target=("plan", "free")
                )
                announce_limits_changed(account.org_id)
                noted += 1
    return noted
