"""Erasing a person: the user row stays (plain-id references to it stay valid) with
every personal field replaced, so it can never sign in again and says nothing about
who it was."""

from django.db import transaction

from clinik.accounts.models import Invitation, Membership, Organization, User
from clinik.notify.models import KnownBrowser
from clinik.privacy.models import AnalyticsId

ERASED_DOMAIN = "erased.invalid"


def erased_email(user_id: int) -> str:
    return f"erased-{user_id}@{ERASED_DOMAIN}"


def is_erased(user: User) -> bool:
    return user.email == erased_email(user.pk)


def last_owner_orgs(user: User) -> list[Organization]:
    """Organizations (not closed) in which the user is the only owner."""
    owned = Membership.objects.filter(user=user, role=Membership.Role.OWNER).exclude(
        org__status=Organization.Status.CLOSED
    )
    return [
        m.org
        for m in owned.select_related("org")
        if Membership.objects.filter(org=m.org).owners().count() == 1
    ]


@transaction.atomic
def tombstone_user(user_id: int) -> bool:
    """Erase the user's personal fields; False if already erased. Idempotent.

    Their sessions end: an inactive user is no longer authenticated by Django, and
    the changed password hash invalidates every session's auth hash. Pending
    invitations addressed to their email are deleted with it."""
    user = User.objects.select_for_update().filter(pk=user_id).first()
    if user is None or is_erased(user):
        return False
    Invitation.objects.filter(email=user.email).delete()
    KnownBrowser.objects.filter(user=user).delete()
    AnalyticsId.objects.filter(user=user).delete()
    user.email = erased_email(user.pk)
    user.name = ""
    user.external_auth_id = None
    user.set_unusable_password()
    user.is_active = False
    user.is_staff = False
    user.is_superuser = False
    user.last_login = None
    user.analytics_opt_out = True
    user.save(
        update_fields=[
            "email",
            "name",
            "external_auth_id",
            "password",
            "is_active",
            "is_staff",
            "is_superuser",
            "last_login",
            "analytics_opt_out",
        ]
    )
    user.groups.clear()
    user.user_permissions.clear()
    return True
