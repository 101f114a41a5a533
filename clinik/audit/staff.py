"""Staff actions on record: every Django admin change (LogEntry) and admin sign-in
becomes an audit event, in the transaction of the change it describes."""

from typing import Any

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.http import HttpRequest

from clinik import audit

_ACTIONS = {ADDITION: "staff.add", CHANGE: "staff.change", DELETION: "staff.delete"}


def _org_of(entry: LogEntry) -> Any:
    """The organization the edited object belongs to, when it has one."""
    if entry.content_type is None:
        return None
    if entry.content_type.app_label == "accounts" and entry.content_type.model == "organization":
        return entry.object_id
    try:
        obj = entry.get_edited_object()
    except Exception:  # deleted, or a model that cannot be loaded: no organization
        return None
    return getattr(obj, "org_id", None)


def on_log_entry(sender: Any, instance: LogEntry, created: bool, **kwargs: Any) -> None:
    if not created or instance.action_flag not in _ACTIONS:
        return
    target_type = (
        f"{instance.content_type.app_label}.{instance.content_type.model}"
        if instance.content_type
        else ""
    )
    audit.record(
        _ACTIONS[instance.action_flag],
        org=_org_of(instance),
        actor=("user", instance.user_id),
        target=(target_type, instance.object_id or ""),
    )


def _is_admin(request: HttpRequest | None) -> bool:
    from django.urls import reverse

    return request is not None and request.path.startswith(reverse("admin:index"))


def on_signed_in(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    if _is_admin(request):
        audit.record("staff.signin", org=None, actor=user, request=request)


def on_sign_in_failed(
    sender: Any, credentials: Any, request: HttpRequest | None = None, **kwargs: Any
) -> None:
    if _is_admin(request):
        audit.record(
            "staff.signin_failed", org=None, actor=None, outcome="failure", request=request
        )
