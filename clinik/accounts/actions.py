"""Actions that span models: each runs in one transaction with its audit record."""

from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Invitation, Membership, Organization, User
from clinik.gateway import limits
from clinik.lib.emails import send_email_on_commit


class LastOwnerError(Exception):
    """The organization would be left without an owner."""


@transaction.atomic
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


@transaction.atomic
def do_invite(
    *, org: Organization, email: str, role: str, actor: User, request: HttpRequest
) -> Invitation:
    Organization.objects.select_for_update().filter(pk=org.pk).first()  # one at a time
    seats = org.memberships.count() + org.invitations.pending().count()
    limits.check_room(org, "members", seats)
    invitation, token = Invitation.issue(org, email, role, actor)
    audit.record("member.invite", org=org, actor=actor, target=invitation, request=request)
    link = request.build_absolute_uri(reverse("accounts:invitation", args=[token]))
    send_email_on_commit(
        "invitation",
        [invitation.email],
        {"org_name": org.name, "inviter": actor.name, "role": role, "link": link},
    )
    return invitation


@transaction.atomic
def do_accept_invitation(*, invitation: Invitation, user: User, request: HttpRequest) -> Membership:
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    membership, _created = Membership.objects.get_or_create(
        user=user, org=locked.org, defaults={"role": locked.role}
    )
    locked.accepted_at = timezone.now()
    locked.save(update_fields=["accepted_at"])
    audit.record("member.join", org=locked.org, actor=user, target=membership, request=request)
    return membership


def _lock_owners(org: Organization) -> int:
    owners = Membership.objects.select_for_update().filter(org=org).owners()
    return len(list(owners))


@transaction.atomic
def do_change_role(*, membership: Membership, role: str, actor: User, request: HttpRequest) -> None:
    owners = _lock_owners(membership.org)
    membership.refresh_from_db()
    if membership.role == Membership.Role.OWNER and role != Membership.Role.OWNER and owners <= 1:
        raise LastOwnerError
    membership.role = role
    membership.save(update_fields=["role"])
    audit.record(
        "member.role_change", org=membership.org, actor=actor, target=membership, request=request
    )


@transaction.atomic
def do_remove_member(*, membership: Membership, actor: User, request: HttpRequest) -> None:
    owners = _lock_owners(membership.org)
    membership.refresh_from_db()
    if membership.role == Membership.Role.OWNER and owners <= 1:
        raise LastOwnerError
    audit.record(
        "member.remove", org=membership.org, actor=actor, target=membership, request=request
    )
    membership.delete()
