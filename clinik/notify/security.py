"""Security alerts. Each function is called by the action that made the change, inside
its transaction (the email is queued on commit).

Sign-ins: a browser is known for a user when the same user agent signed in from the
same network (/24 for IPv4, /48 for IPv6) in the last 90 days. Only an HMAC of the
pair is stored, so the table holds no address or user agent."""

import hashlib
import hmac
import ipaddress
from datetime import timedelta

from django.conf import settings
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clinik.accounts.models import Membership, Organization, User
from clinik.lib.http import client_ip
from clinik.notify.emails import send
from clinik.notify.models import KnownBrowser

KNOWN_FOR = timedelta(days=90)


def _network(ip: str) -> str:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def fingerprint(request: HttpRequest) -> str:
    agent = str(request.META.get("HTTP_USER_AGENT", ""))[:500]
    material = f"{agent}\n{_network(client_ip(request))}".encode()
    key = f"known-browser:{settings.SECRET_KEY}".encode()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


def _when() -> str:
    return f"{timezone.now():%Y-%m-%d %H:%M} UTC"


def note_signin(request: HttpRequest, user: User, *, alert: bool = True) -> bool:
    """Remember this browser for the user; alert them when it was not known (not
    seen in 90 days). Returns True when an alert was queued. Sign-up passes
    alert=False: the first browser of a new account is known by definition."""
    now = timezone.now()
    known, created = KnownBrowser.objects.get_or_create(
        user=user, fingerprint=fingerprint(request), defaults={"last_seen": now}
    )
    fresh = not created and known.last_seen >= now - KNOWN_FOR
    if not created:
        KnownBrowser.objects.filter(pk=known.pk).update(last_seen=now)
    if fresh or not alert:
        return False
    send(
        "security",
        "signin-new-browser",
        user,
        {"when": _when(), "browser": _browser_family(request), "account_path": _account_path()},
    )
    return True


def _browser_family(request: HttpRequest) -> str:
    """A coarse label for the email ('Chrome', 'Firefox' ...): never the whole string."""
    agent = str(request.META.get("HTTP_USER_AGENT", ""))
    for name in ("Edg", "Firefox", "Chrome", "Safari", "curl"):
        if name in agent:
            return {"Edg": "Edge"}.get(name, name)
    return "an unrecognised browser"


def _account_path() -> str:
    return reverse("accounts:account")


def alert_lockout(email: str) -> None:
    """Sign-in is locked for this address (the throttle's limit was just reached)."""
    user = User.objects.filter(email=email.strip().lower(), is_active=True).first()
    if user is None:
        return  # the same answer for unknown addresses: nothing is sent
    minutes = max(1, settings.SIGNIN_LOCKOUT_SECONDS // 60)
    send(
        "security",
        "signin-locked",
        user,
        {"when": _when(), "minutes": minutes, "reset_path": reverse("accounts:password_reset")},
    )


def alert_password_changed(user: User) -> None:
    send("security", "password-changed", user, {"when": _when(), "account_path": _account_path()})


def alert_email_changed(user: User, old_email: str) -> None:
    context = {"when": _when(), "new_email": user.email, "account_path": _account_path()}
    send("security", "email-changed", [old_email, user], context)


def _org_context(org: Organization, member: User, actor: User | None) -> dict[str, str]:
    return {
        "org_name": org.name,
        "member": member.name or member.email,
        "actor": (actor.name or actor.email) if actor else "ClinikAPI",
        "when": _when(),
        "team_path": reverse("team", args=[org.pk]),
    }


def alert_member_added(membership: Membership, actor: User | None) -> None:
    org = membership.org
    context = {**_org_context(org, membership.user, actor), "role": membership.role}
    send("security", "member-added", list(org.owners()), context)


def alert_member_removed(membership: Membership, actor: User | None) -> None:
    org = membership.org
    recipients = [*org.owners(), membership.user]
    send("security", "member-removed", recipients, _org_context(org, membership.user, actor))


def alert_owner_granted(membership: Membership, actor: User | None) -> None:
    org = membership.org
    recipients = [*org.owners(), membership.user]
    send("security", "owner-granted", recipients, _org_context(org, membership.user, actor))
