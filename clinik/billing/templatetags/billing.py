"""The past-due banner on every dashboard page of an organization whose payment failed."""

from typing import Any

from django import template

from clinik.billing.models import Account

register = template.Library()


@register.inclusion_tag("billing/_past_due_banner.html")
def past_due_banner(org: Any, membership: Any) -> dict[str, Any]:
    account = (
        Account.objects.filter(org_id=org.pk, past_due_since__isnull=False).first()
        if org is not None
        else None
    )
    return {"account": account, "org": org, "membership": membership}
