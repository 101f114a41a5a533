"""Team page and its actions: invite, change role, remove, revoke invitation."""

import pytest
from django.core import mail

from clinik.accounts.models import Invitation, Membership
from clinik.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def url(persona, suffix: str = "") -> str:
    return f"/o/{persona.org.pk}/team/{suffix}"


def test_team_lists_members(owner, teammate) -> None:
    response = owner.client().get(url(owner))
    assert response.status_code == 200
    assert b"dev@acme.test" in response.content
    assert b"Invite a teammate" in response.content


def test_developer_sees_team_without_management_controls(teammate) -> None:
    response = teammate.client().get(url(teammate))
    assert response.status_code == 200
    assert b"Invite a teammate" not in response.content


def test_outsider_gets_404_everywhere(owner, teammate, outsider) -> None:
    client = outsider.client()
    invitation, _ = Invitation.issue(owner.org, "x@acme.test", "developer", owner.user)
    assert client.get(url(owner)).status_code == 404
    assert client.post(url(owner, "invite/"), {"email": "a@b.test"}).status_code == 404
    m = teammate.membership.pk
    assert client.post(url(owner, f"members/{m}/role/"), {"role": "owner"}).status_code == 404
    assert client.post(url(owner, f"members/{m}/remove/")).status_code == 404
    assert client.post(url(owner, f"invitations/{invitation.pk}/revoke/")).status_code == 404
    # An outsider's own org id with our member id: still nothing.
    assert client.post(url(outsider, f"members/{m}/remove/")).status_code == 404
    assert Membership.objects.filter(pk=m).exists()


def test_wrong_methods(owner, teammate) -> None:
    client = owner.client()
    m = teammate.membership.pk
    assert client.post(url(owner)).status_code == 405
    assert client.get(url(owner, "invite/")).status_code == 405
    assert client.get(url(owner, f"members/{m}/role/")).status_code == 405
    assert client.get(url(owner, f"members/{m}/remove/")).status_code == 405


def test_invite_sends_email_with_link_and_stores_only_a_hash(
    owner, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.client().post(
            url(owner, "invite/"), {"email": "New@Acme.test", "role": "admin"}
        )
    assert response.status_code == 302
    invitation = Invitation.objects.get()
    assert invitation.email == "new@acme.test"
    assert invitation.role == "admin"
    assert len(mail.outbox) == 1
    body = mail.outbox[0].body
    token = body.split("/accounts/invitations/")[1].split("/")[0]
    assert token not in invitation.token_hash
    assert len(invitation.token_hash) == 64
    assert AuditEvent.objects.filter(action="member.invite").count() == 1


def test_invite_rejects_existing_member_and_bad_email(owner, teammate) -> None:
    client = owner.client()
    response = client.post(url(owner, "invite/"), {"email": "dev@acme.test", "role": "developer"})
    assert response.status_code == 400
    assert b"already a member" in response.content
    response = client.post(url(owner, "invite/"), {"email": "not-an-email", "role": "developer"})
    assert response.status_code == 400
    assert Invitation.objects.count() == 0


def test_developer_cannot_invite(teammate) -> None:
    response = teammate.client().post(url(teammate, "invite/"), {"email": "a@acme.test"})
    assert response.status_code == 403


def test_admin_cannot_invite_an_owner(admin) -> None:
    response = admin.client().post(url(admin, "invite/"), {"email": "a@acme.test", "role": "owner"})
    assert response.status_code == 400
    assert Invitation.objects.count() == 0


def test_owner_changes_a_role(owner, teammate) -> None:
    path = url(owner, f"members/{teammate.membership.pk}/role/")
    assert owner.client().post(path, {"role": "admin"}).status_code == 302
    teammate.membership.refresh_from_db()
    assert teammate.membership.role == "admin"
    assert AuditEvent.objects.filter(action="member.role_change").count() == 1


def test_admin_cannot_touch_an_owner(owner, admin) -> None:
    client = admin.client()
    path = url(owner, f"members/{owner.membership.pk}/")
    assert client.post(path + "role/", {"role": "developer"}).status_code == 403
    assert client.post(path + "remove/").status_code == 403
    owner.membership.refresh_from_db()
    assert owner.membership.role == "owner"


def test_developer_cannot_change_roles(owner, teammate) -> None:
    path = url(owner, f"members/{teammate.membership.pk}/role/")
    assert teammate.client().post(path, {"role": "owner"}).status_code == 403


def test_last_owner_cannot_be_demoted_or_removed(owner) -> None:
    client = owner.client()
    path = url(owner, f"members/{owner.membership.pk}/")
    response = client.post(path + "role/", {"role": "developer"}, follow=True)
    assert b"at least one owner" in response.content
    response = client.post(path + "remove/", follow=True)
    assert b"last owner cannot be removed" in response.content
    owner.membership.refresh_from_db()
    assert owner.membership.role == "owner"


def test_an_owner_can_leave_when_another_owner_remains(owner, teammate) -> None:
    Membership.objects.filter(pk=teammate.membership.pk).update(role="owner")
    response = owner.client().post(url(owner, f"members/{owner.membership.pk}/remove/"))
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=owner.membership.pk).exists()


def test_owner_removes_a_member(owner, teammate) -> None:
    response = owner.client().post(url(owner, f"members/{teammate.membership.pk}/remove/"))
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=teammate.membership.pk).exists()
    assert AuditEvent.objects.filter(action="member.remove").count() == 1
    # The removed member no longer sees the organization.
    assert teammate.client().get(f"/o/{owner.org.pk}/").status_code == 404


def test_developer_can_leave(owner, teammate) -> None:
    response = teammate.client().post(url(owner, f"members/{teammate.membership.pk}/remove/"))
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=teammate.membership.pk).exists()


def test_developer_cannot_remove_others(owner, teammate, admin) -> None:
    response = teammate.client().post(url(owner, f"members/{admin.membership.pk}/remove/"))
    assert response.status_code == 403


def test_revoke_invitation(owner) -> None:
    invitation, _ = Invitation.issue(owner.org, "x@acme.test", "developer", owner.user)
    response = owner.client().post(url(owner, f"invitations/{invitation.pk}/revoke/"))
    assert response.status_code == 302
    assert not Invitation.objects.exists()
