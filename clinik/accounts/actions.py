"""Actions that span models: each runs in one transaction with its audit record."""

from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Invitation, Membership, Organization, User, normalize_email
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
