"""The audit trail: `record(action, *, org, actor, target, outcome)` is the one way in."""

from typing import Any

from django.http import HttpRequest

from clinik.audit.actions import ACTIONS

__all__ = ["ACTIONS", "record"]


def _actor_fields(actor: Any) -> tuple[str, str]:
    if actor is None:
        return "system", ""
    if isinstance(actor, tuple):
        return str(actor[0]), str(actor[1])
    kind = getattr(actor, "audit_actor_type", None)
    if kind is None:
        kind = "user" if getattr(actor, "is_authenticated", False) else "anonymous"
    return kind, "" if actor.pk is None else str(actor.pk)


def _target_fields(target: Any) -> tuple[str, str]:
    if target is None:
        return "", ""
    if isinstance(target, tuple):
        return str(target[0]), str(target[1])
    return target._meta.label_lower, str(target.pk)


def _client_ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def record(
    action: str,
    *,
    org: Any,
    actor: Any,
    target: Any = None,
    outcome: str = "success",
    request: HttpRequest | None = None,
) -> Any:
    """Write one audit event in the caller's transaction.

    org: an Organization, its id, or None. actor: a User, an ApiKey, a
    ("type", "id") tuple, or None for the system. target: a model instance, a
    ("type", "id") tuple, or None. request: the request it happened in, for the
    request id, IP address and user agent.
    """
    from clinik.audit.models import AuditEvent

    if action not in ACTIONS:
        raise ValueError(f"unregistered audit action {action!r}")
    if outcome not in AuditEvent.Outcome.values:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    actor_type, actor_id = _actor_fields(actor)
    target_type, target_id = _target_fields(target)
    org_id = getattr(org, "pk", org)
    return AuditEvent.objects.create(
        org_id=org_id,
        actor_type=actor_type,
        actor_id=actor_id,
        action=action,
        target_type=target_type,
        target_id=target_id,
        outcome=outcome,
        request_id=getattr(request, "request_id", "") if request else "",
        ip=_client_ip(request) if request else None,
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:256] if request else "",
    )
