"""Staff open, update and resolve incidents in the admin; owners are emailed at opening
and resolution; /status shows the current state and the history."""

from collections.abc import Sequence
from typing import Any

import pytest
from django.core import mail
from django.test import Client

from clinik.notify.models import EmailRecord, Incident
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client() -> Client:
    staff: Any = UserFactory(email="staff@clinikapi.test", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    return client


def _form(status: str, message: str, orgs: Sequence[Any] = ()) -> dict[str, Any]:
    return {
        "title": "Elevated API errors",
        "status": status,
        "components": ["api", "exports"],
        "message": message,
        "affected_orgs": [str(o.pk) for o in orgs],
    }


def recipients(template: str) -> list[str]:
    ids = EmailRecord.objects.filter(template=template).values_list("user__email", flat=True)
    return sorted(ids)


def test_every_owner_is_emailed_at_opening_and_at_resolution_only(
    staff_client, owner, teammate, outsider, django_capture_on_commit_callbacks
) -> None:
    co_owner = MembershipFactory(org=outsider.org, user=owner.user, role="owner")  # 2 orgs
    assert co_owner
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/staff/notify/incident/add/", _form("investigating", "Some requests fail.")
        )
    assert response.status_code == 302
    incident = Incident.objects.get()
    # one email per owner (not per organization), none to the developer
    assert recipients("incident-opened") == ["out@other.test", "owner@acme.test"]
    assert "Some requests fail." in mail.outbox[0].body

    change = f"/staff/notify/incident/{incident.pk}/change/"
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(change, _form("identified", "A bad deploy; rolling back."))
    assert EmailRecord.objects.count() == 2  # updates send nothing
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(change, _form("resolved", "All requests succeed again."))
        staff_client.post(change, _form("resolved", "Post-mortem to follow."))
    assert recipients("incident-resolved") == ["out@other.test", "owner@acme.test"]
    incident.refresh_from_db()
    assert incident.resolved_at is not None and incident.updates.count() == 4

    page = Client().get("/status").content.decode()
    assert "All systems operational" in page
    assert "Elevated API errors" in page and "A bad deploy; rolling back." in page


def test_only_owners_of_the_affected_organizations_are_emailed(
    staff_client, owner, outsider, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        staff_client.post(
            "/staff/notify/incident/add/",
            _form("investigating", "Exports are slow.", orgs=[outsider.org]),
        )
    assert recipients("incident-opened") == ["out@other.test"]
    page = Client().get("/status").content.decode()
    assert "1 open incident" in page and "Exports are slow." in page
    assert "Bulk export: <strong>affected</strong>" in page


def test_status_page_without_incidents_and_wrong_method(client: Client) -> None:
    response = client.get("/status")
    assert response.status_code == 200
    assert "All systems operational" in response.content.decode()
    assert client.post("/status").status_code == 405


def test_non_staff_cannot_open_incidents(owner) -> None:
    response = owner.client().get("/staff/notify/incident/add/")
    assert response.status_code == 302 and "/staff/login/" in response["Location"]
