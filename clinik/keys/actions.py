"""Issuing and revoking keys: one transaction each, with the audit record inside it
and the security alert to the owners sent after commit. The plaintext key leaves
do_create_key only in its return value: never in an audit record, log or email."""

from datetime import datetime

from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Organization, User
from clinik.gateway import limits
from clinik.keys.models import ApiKey
from clinik.notify.emails import send


def _alert_owners(template: str, key: ApiKey, actor: User | None) -> None:
    owners = list(key.org.owners())
    if not owners:
        return
    when = key.revoked_at if template == "key-revoked" else key.created_at
    context = {
        "org_name": key.org.name,
        "key_name": key.name,
        "key_hint": key.display,
        "scopes": key.get_scopes_display(),
        "actor": (actor.name or actor.email) if actor else "ClinikAPI",
        "when": f"{when:%Y-%m-%d %H:%M} UTC" if when else "",
        "keys_path": reverse("keys", args=[key.org_id]),
    }
    send("security", template, owners, context)


@transaction.atomic
def do_create_key(
    *,
    org: Organization,
    actor: User | None,
    name: str,
    scopes: str,
    expires_at: datetime | None,
    request: HttpRequest | None,
) -> tuple[ApiKey, str]:
    """Issue a live key. Returns the key and its plaintext, which exists nowhere else."""
    org.lock_writable()
    limits.check_room(org, "API keys", ApiKey.objects.filter(org=org).active().count())
    key, plaintext = ApiKey.issue(
        org=org, name=name, scopes=scopes, expires_at=expires_at, created_by=actor
    )
    audit.record("key.create", org=org, actor=actor, target=key, request=request)
    _alert_owners("key-created", key, actor)
    return key, plaintext


@transaction.atomic(durable=True)
def do_revoke_key(*, key: ApiKey, actor: User | None, request: HttpRequest | None) -> bool:
    """Revoke for good. Returns False when the key was already revoked (nothing done)."""
    key.org.lock_writable()
    now = timezone.now()
    changed = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=now)
    if not changed:
        key.refresh_from_db(fields=["revoked_at"])
        return False
    key.revoked_at = now
    audit.record("key.revoke", org=key.org, actor=actor, target=key, request=request)
    _alert_owners("key-revoked", key, actor)
    return True
