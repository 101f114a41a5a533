"""The invitation flow end to end: invite by email, follow the link, sign up, accept."""

import re

import pytest
import time_machine
from django.core import mail
from django.test import Client

from clinik.accounts.models import Invitation, Membership, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def invite(django_capture_on_commit_callbacks):
    def _invite(owner, email: str = "newbie@acme.test", role: str = "developer") -> str:
        with django_capture_on_commit_callbacks(execute=True):
            owner.client().post(f"/o/{owner.org.pk}/team/invite/", {"email": email, "role": role})
        return _link()

    return _invite


def _link() -> str:
    match = re.search(
        r"http://testserver(/accounts/invitations/[^/\s]+/)", str(mail.outbox[-1].body)
    )
    assert match
    return match.group(1)


def test_new_user_signs_up_through_the_link_and_joins(invite, owner) -> None:
    link = invite(owner)
    client = Client()
    page = client.get(link)
    assert page.status_code == 200
    assert b"Create an account" in page.content
    signup = client.post(
        f"/accounts/signup/?next={link}",
        {
            "name": "New Bie",
            "email": "newbie@acme.test",
            "org_name": "Bie Sandbox",
            "password": "a sturdy passphrase 42",
        },
    )
    assert signup["Location"] == link
    accept = client.post(link)
    assert accept.status_code == 302
    assert accept["Location"] == f"/o/{owner.org.pk}/"
    user = User.objects.get(email="newbie@acme.test")
    assert Membership.objects.get(user=user, org=owner.org).role == "developer"
    assert Invitation.objects.get().accepted_at is not None
    # The link cannot be used again.
    assert client.get(link).status_code == 404


def test_existing_user_accepts(invite, owner, outsider) -> None:
    link = invite(owner, "out@other.test", "admin")
    client = outsider.client()
    assert b"Accept invitation" in client.get(link).content
    client.post(link)
    assert Membership.objects.get(user=outsider.user, org=owner.org).role == "admin"
    # Now a member of two organizations, the user can switch between them.
    assert client.get(f"/o/{owner.org.pk}/").status_code == 200
    assert client.get(f"/o/{outsider.org.pk}/").status_code == 200
    assert client.get("/dashboard/")["Location"] == f"/o/{outsider.org.pk}/"


def test_signed_in_user_with_another_email_cannot_accept(invite, owner, outsider) -> None:
    link = invite(owner, "someone.else@acme.test")
    client = outsider.client()
    assert b"for another email address" in client.get(link).content
    assert client.post(link).status_code == 403
    assert not Membership.objects.filter(user=outsider.user, org=owner.org).exists()


def test_expired_invitation(invite, owner, outsider) -> None:
    with time_machine.travel("2026-01-01 12:00", tick=False):
        link = invite(owner, "out@other.test")
    with time_machine.travel("2026-01-09 12:00", tick=False):
        client = outsider.client()
        response = client.get(link)
        assert response.status_code == 410
        assert b"expired" in response.content
        assert client.post(link).status_code == 410
    assert not Membership.objects.filter(user=outsider.user, org=owner.org).exists()


def test_unknown_token_is_404(client: Client) -> None:
    assert client.get("/accounts/invitations/not-a-real-token/").status_code == 404


def test_wrong_method(invite, owner) -> None:
    link = invite(owner)
    assert Client().delete(link).status_code == 405
