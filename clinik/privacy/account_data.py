"""A user's account data as one JSON document (GDPR portability, policy §8).

What is theirs: their profile, their organizations (name only) and memberships,
the API keys they created (metadata: never a hash), invitations they sent, a usage
summary, their own activity from the audit trail, their analytics id, the emails sent
to them (type and date, never the body) and their policy acknowledgements. Nothing about other users
(beyond the names of shared organizations) and no PHI: clinical data is exported
with the organization's keys through the bulk export endpoint."""

from collections import Counter
from typing import Any

from django.utils import timezone

from clinik.accounts.models import Invitation, Membership, User
from clinik.audit.models import AuditEvent
from clinik.keys.models import ApiKey
from clinik.notify.models import EmailRecord, PolicyAcknowledgement
from clinik.privacy.models import AccountDeletion, AnalyticsId


def _when(value: Any) -> str | None:
    return value.isoformat() if value else None


def account_data(user: User) -> dict[str, Any]:
    memberships = Membership.objects.filter(user=user).select_related("org").order_by("created_at")
    keys = ApiKey.objects.filter(created_by=user).select_related("org").order_by("created_at")
    activity = AuditEvent.objects.filter(actor_type="user", actor_id=str(user.pk)).order_by("time")
    usage = Counter(activity.values_list("action", flat=True))
    analytics_id = (
        AnalyticsId.objects.filter(user=user).values_list("distinct_id", flat=True).first()
    )
    return {
        "generated_at": timezone.now().isoformat(),
        "profile": {
            "id": user.pk,
            "email": user.email,
            "name": user.name,
            "date_joined": _when(user.date_joined),
            "last_login": _when(user.last_login),
            "signs_in_with": "external" if user.external_auth_id else "password",
            "analytics_opt_out": user.analytics_opt_out,
        },
        "organizations": [
            {
                "id": str(m.org_id),
                "name": m.org.name,
                "status": m.org.status,
                "role": m.role,
                "member_since": _when(m.created_at),
            }
            for m in memberships
        ],
        "api_keys_created": [
            {
                "organization_id": str(k.org_id),
                "name": k.name,
                "hint": k.display,
                "scopes": k.scopes,
                "created_at": _when(k.created_at),
                "expires_at": _when(k.expires_at),
                "last_used_at": _when(k.last_used_at),
                "revoked_at": _when(k.revoked_at),
            }
            for k in keys
        ],
        "invitations_sent": [
            {
                "organization_id": str(i.org_id),
                "role": i.role,
                "created_at": _when(i.created_at),
                "accepted": i.accepted_at is not None,
            }
            for i in Invitation.objects.filter(invited_by=user).order_by("created_at")
        ],
        "usage_summary": {
            "dashboard_actions": dict(sorted(usage.items())),
            "api_keys_created": len(keys),
            "api_keys_last_used_at": _when(
                max((k.last_used_at for k in keys if k.last_used_at), default=None)
            ),
        },
        "activity": [
            {
                "time": _when(e.time),
                "action": e.action,
                "outcome": e.outcome,
                "organization_id": str(e.org_id) if e.org_id else None,
                "ip": e.ip,
                "user_agent": e.user_agent,
            }
            for e in activity.iterator()
        ],
        "deletion_requests": [
            {
                "status": d.status,
                "requested_at": _when(d.requested_at),
                "scheduled_for": _when(d.scheduled_for),
            }
            for d in AccountDeletion.objects.filter(user=user)
        ],
        "analytics_id": str(analytics_id) if analytics_id else None,
        "emails_sent": [
            {"time": _when(r.created_at), "type": r.kind, "email": r.template, "status": r.status}
            for r in EmailRecord.objects.filter(user=user).order_by("created_at")
        ],
        "privacy_policy_acknowledgements": [
            {"version": a.policy.version, "acknowledged_at": _when(a.acknowledged_at)}
            for a in PolicyAcknowledgement.objects.filter(user=user).select_related("policy")
        ],
    }
