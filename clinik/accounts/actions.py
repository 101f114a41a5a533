"""Actions that span models: each runs in one transaction with its audit record."""

from typing import Any

from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clinik import audit
from clinik.accounts.alerts import send_security_alert
from clinik.accounts.models import Invitation, Membership, Organization, User, normalize_email
from clinik.accounts.supabase import confirmed_email, proves_email, sign_in_methods
from clinik.gateway import limits
from clinik.notify import security
from clinik.notify.emails import send


class LastOwnerError(Exception):
    """The organization would be left without an owner."""


@transaction.atomic(durable=True)
def do_note_lockout(*, email: str, request: HttpRequest) -> int:
    """Write a sign-in lockout of the account behind email to the audit trail of each
    organization it belongs to (HIPAA log-in monitoring: the organization's admins see
    repeated failures against their members), and email the account's owner. Returns
    how many trails got it; 0 when no such account exists, which the caller never
    reveals."""
    user = User.objects.filter(email=normalize_email(email)).first()
    if user is None:
        return 0
    security.alert_lockout(email)
    orgs = Organization.objects.filter(memberships__user=user).exclude(
        status=Organization.Status.CLOSED
    )
    written = 0
    for org in orgs:
        audit.record(
            "account.lockout", org=org, actor=None, target=user, outcome="denied", request=request
        )
        written += 1
    return written


@transaction.atomic(durable=True)
def do_signup(
    *, email: str, name: str, password: str | None, org_name: str, request: HttpRequest | None
) -> tuple[User, Organization]:
    user = User.objects.create_user(email, password, name=name)
    org = do_create_org(user=user, name=org_name, request=request)
    audit.record("account.signup", org=org, actor=user, target=user, request=request)
    return user, org


@transaction.atomic
def do_create_org(*, user: User, name: str, request: HttpRequest | None) -> Organization:
    org = Organization.objects.create(name=name)
    Membership.objects.create(user=user, org=org, role=Membership.Role.OWNER)
    audit.record("org.create", org=org, actor=user, target=org, request=request)
    return org


@transaction.atomic(durable=True)
def do_invite(
    *, org: Organization, email: str, role: str, actor: User, request: HttpRequest
) -> Invitation:
    org.lock_writable()
    seats = org.memberships.count() + org.invitations.pending().count()
    limits.check_room(org, "members", seats)
    invitation, token = Invitation.issue(org, email, role, actor)
    audit.record("member.invite", org=org, actor=actor, target=invitation, request=request)
    link = request.build_absolute_uri(reverse("accounts:invitation", args=[token]))
    send(
        "service",
        "invitation",
        invitation.email,
        {"org_name": org.name, "inviter": actor.name, "role": role, "link": link},
    )
    return invitation


@transaction.atomic(durable=True)
def do_revoke_invitation(*, invitation: Invitation, actor: User, request: HttpRequest) -> None:
    invitation.org.lock_writable()
    audit.record(
        "member.invite_revoke", org=invitation.org, actor=actor, target=invitation, request=request
    )
    invitation.delete()


@transaction.atomic(durable=True)
def do_update_org(*, org: Organization, name: str, actor: User, request: HttpRequest) -> None:
    org.lock_writable()
    org.name = name
    org.save(update_fields=["name"])
    audit.record("org.update", org=org, actor=actor, target=org, request=request)


@transaction.atomic(durable=True)
def do_accept_invitation(*, invitation: Invitation, user: User, request: HttpRequest) -> Membership:
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    locked.org.lock_writable()
    membership, created = Membership.objects.get_or_create(
        user=user, org=locked.org, defaults={"role": locked.role}
    )
    locked.accepted_at = timezone.now()
    locked.save(update_fields=["accepted_at"])
    audit.record("member.join", org=locked.org, actor=user, target=membership, request=request)
    if created:
        security.alert_member_added(membership, actor=user)
    return membership


def _lock_owners(org: Organization) -> int:
    owners = Membership.objects.select_for_update().filter(org=org).owners()
    return len(list(owners))


@transaction.atomic(durable=True)
def do_change_role(*, membership: Membership, role: str, actor: User, request: HttpRequest) -> None:
    membership.org.lock_writable()
    owners = _lock_owners(membership.org)
    membership.refresh_from_db()
    if membership.role == Membership.Role.OWNER and role != Membership.Role.OWNER and owners <= 1:
        raise LastOwnerError
    granted_owner = role == Membership.Role.OWNER and membership.role != Membership.Role.OWNER
    membership.role = role
    membership.save(update_fields=["role"])
    audit.record(
        "member.role_change", org=membership.org, actor=actor, target=membership, request=request
    )
    if granted_owner:
        security.alert_owner_granted(membership, actor)


@transaction.atomic(durable=True)
def do_remove_member(*, membership: Membership, actor: User, request: HttpRequest) -> None:
    membership.org.lock_writable()
    owners = _lock_owners(membership.org)
    membership.refresh_from_db()
    if membership.role == Membership.Role.OWNER and owners <= 1:
        raise LastOwnerError
    audit.record(
        "member.remove", org=membership.org, actor=actor, target=membership, request=request
    )
    membership.delete()
    security.alert_member_removed(membership, actor)


class IdentityNotLinked(Exception):
    """The provider's identity cannot be tied to one of our users (yet)."""


@transaction.atomic(durable=True)
def do_supabase_signin(*, claims: dict[str, Any], request: HttpRequest | None) -> User:
    """Our user for a verified Supabase access token. Users are found by the
    provider's user id (`sub`), never by email alone: an account that exists only
    here (a password sign-up from before Supabase) is linked once Supabase says the
    user proved that email, and an email that belongs to another account is never
    taken over."""
    sub = str(claims["sub"])
    email = normalize_email(str(claims.get("email") or ""))
    user = User.objects.select_for_update().filter(external_auth_id=sub).first()
    if user is None:
        user = _link_or_create(sub, email, claims, request)
    elif email and email != user.email:
        _follow_email_change(user, email, sub, request)
    new = [m for m in sign_in_methods(claims) if m not in user.auth_methods]
    if new:
        known = list(user.auth_methods)
        user.auth_methods = [*known, *new]
        user.save(update_fields=["auth_methods"])
        if known:
            audit.record(
                "account.identity_link", org=None, actor=user, target=user, request=request
            )
            detail = f"Sign-in method: {', '.join(new)}."
            send_security_alert([user.email], "method_linked", detail)
    return user


def _link_or_create(
    sub: str, email: str, claims: dict[str, Any], request: HttpRequest | None
) -> User:
    if not email:
        raise IdentityNotLinked("no email")
    existing = User.objects.select_for_update().filter(email=email).first()
    if existing is not None:
        # Proof of the address: this very sign-in came through a link sent to it, and
        # Supabase holds the address as confirmed (a password or OAuth session is not
        # enough: a project with confirmations off confirms every address).
        if existing.external_auth_id is not None or not proves_email(claims):
            raise IdentityNotLinked("email not proven by this sign-in")
        if confirmed_email(sub) != email:
            raise IdentityNotLinked("email not confirmed at the provider")
        existing.external_auth_id = sub
        existing.auth_methods = [*existing.auth_methods, *sign_in_methods(claims)]
        existing.save(update_fields=["external_auth_id", "auth_methods"])
        audit.record(
            "account.identity_link", org=None, actor=existing, target=existing, request=request
        )
        detail = "Sign-in through Supabase Auth (email link)."
        send_security_alert([existing.email], "method_linked", detail)
        return existing
    meta = claims.get("user_metadata") or {}
    name = str(meta.get("name") or meta.get("full_name") or "")[:150]
    org_name = str(meta.get("org_name") or "")[:100]
    user = User.objects.create_user(email, None, name=name)
    org = do_create_org(user=user, name=org_name, request=request) if org_name else None
    audit.record("account.signup", org=org, actor=user, target=user, request=request)
    user.external_auth_id = sub
    user.auth_methods = sign_in_methods(claims)
    user.save(update_fields=["external_auth_id", "auth_methods"])
    return user


def _follow_email_change(user: User, email: str, sub: str, request: HttpRequest | None) -> None:
    """The provider reports a new email for a linked user: take it only when it is
    proven there and no other account of ours has it."""
    if User.objects.filter(email=email).exclude(pk=user.pk).exists():
        return
    if confirmed_email(sub) != email:
        return
    old = user.email
    user.email = email
    user.save(update_fields=["email"])
    audit.record("account.update", org=None, actor=user, target=user, request=request)
    send_security_alert([old, email], "email_changed", f"New address: {email}.")
