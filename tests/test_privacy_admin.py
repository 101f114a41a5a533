"""Staff see pending closures and account deletions with their deadlines at /staff/,
read-only, and without the captured emails."""

import pytest

from clinik.privacy.closure import do_request_closure
from clinik.privacy.deletion import do_request_deletion
from clinik.privacy.models import Closure
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    staff = UserFactory(email="staff@clinikapi.test", is_staff=True, is_superuser=True)
    client.force_login(staff)
    return client


def test_staff_see_closures_and_deletions_with_deadlines(staff_client, owner, teammate) -> None:
    closure = do_request_closure(org=owner.org, actor=owner.user, request=None)
    deletion = do_request_deletion(user=teammate.user, request=None)
    closures = staff_client.get("/staff/privacy/closure/?status__exact=pending")
    assert closures.status_code == 200
    body = closures.content.decode()
    assert str(owner.org.pk) in body and "Deadline" in body
    assert f"{closure.deadline:%Y}" in body
    deletions = staff_client.get("/staff/privacy/accountdeletion/")
    assert deletions.status_code == 200 and "Deadline" in deletions.content.decode()
    Closure.objects.filter(pk=closure.pk).update(notify_emails=["owner@acme.test"])
    detail = staff_client.get(f"/staff/privacy/closure/{closure.pk}/change/").content.decode()
    assert "owner@acme.test" not in detail
    assert staff_client.get("/staff/privacy/closure/add/").status_code == 403
    assert (
        staff_client.get(f"/staff/privacy/accountdeletion/{deletion.pk}/delete/").status_code == 403
    )
    assert staff_client.get("/staff/privacy/exportjob/").status_code == 200


def test_members_are_not_staff(owner) -> None:
    assert owner.client().get("/staff/privacy/closure/").status_code == 302
