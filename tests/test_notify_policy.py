"""Policy changes (§11): published at least 30 days ahead, announced once to every
owner, shown on /privacy, switched on the effective date, acknowledged per user."""

from datetime import date, timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.utils import timezone

from clinik.accounts.models import User
from clinik.audit.models import AuditEvent
from clinik.notify import announcements, policy
from clinik.notify.models import EmailRecord, PolicyAcknowledgement
from clinik.notify.tasks import announce_policy_versions
from clinik.privacy.models import PolicyVersion
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db
TODAY = date(2027, 3, 1)


def staff_client() -> Client:
    """Signed in at the travelled-to time (a session from today would have expired)."""
    user: Any = User.objects.filter(email="staff@clinikapi.test").first()
    user = user or UserFactory(email="staff@clinikapi.test", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(user)
    return client


def _form(effective_on: date, version: int = 2) -> dict:
    return {
        "version": version,
        "last_updated": TODAY.isoformat(),
        "effective_on": effective_on.isoformat(),
        "summary": "We now name our email provider.",
        "template_name": "policies/privacy-v1.html",
    }


@time_machine.travel(TODAY, tick=False)
def test_publishing_less_than_30_days_ahead_is_refused(owner) -> None:
    response = staff_client().post(
        "/staff/privacy/policyversion/add/", _form(TODAY + timedelta(days=29))
    )
    assert response.status_code == 200
    assert "must be on or after 2027-03-31" in response.content.decode()
    assert not PolicyVersion.objects.filter(version=2).exists()
    with pytest.raises(policy.TooSoon):
        policy.do_publish(version=2, effective_on=TODAY, template_name="policies/privacy-v1.html")
    assert not mail.outbox


@time_machine.travel(TODAY, tick=False)
def test_every_owner_is_told_once(
    owner, teammate, outsider, django_capture_on_commit_callbacks
) -> None:
    MembershipFactory(org=outsider.org, user=owner.user, role="owner")
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client().post(
            "/staff/privacy/policyversion/add/", _form(TODAY + timedelta(days=30))
        )
    assert response.status_code == 302
    assert sorted(m.to[0] for m in mail.outbox) == ["out@other.test", "owner@acme.test"]
    assert "March 31, 2027" in mail.outbox[0].subject
    with django_capture_on_commit_callbacks(execute=True):
        announce_policy_versions.delay()  # the hourly safety net
        announce_policy_versions.delay()
    assert len(mail.outbox) == 2
    # an owner who arrives before the date is told too, once
    UserFactory(email="late@new.test")
    MembershipFactory(user__email="late2@new.test", role="owner")
    with django_capture_on_commit_callbacks(execute=True):
        announce_policy_versions.delay()
        announce_policy_versions.delay()
    assert sorted(m.to[0] for m in mail.outbox)[-1] == "owner@acme.test"
    assert sorted(
        EmailRecord.objects.filter(template="policy-announcement").values_list(
            "user__email", flat=True
        )
    ) == ["late2@new.test", "out@other.test", "owner@acme.test"]


def test_privacy_page_shows_the_upcoming_version_and_switches_on_the_date(owner) -> None:
    with time_machine.travel(TODAY, tick=False):
        policy.do_publish(
            version=2,
            effective_on=TODAY + timedelta(days=45),
            template_name="policies/privacy-v1.html",
            summary="Sub-processor list updated.",
        )
        page = Client().get("/privacy").content.decode()
        assert "Version 1" in page
        assert "A new version (version 2) takes effect on April 15, 2027." in page
    with time_machine.travel(TODAY + timedelta(days=44), tick=False):
        assert "Version 1" in Client().get("/privacy").content.decode()
    with time_machine.travel(TODAY + timedelta(days=45), tick=False):
        page = Client().get("/privacy").content.decode()
        assert "Version 2" in page and "A new version" not in page
        current = policy.current_version()
        assert current is not None and current.version == 2


def test_acknowledgement_is_recorded_once_per_user(owner) -> None:
    with time_machine.travel(TODAY, tick=False):
        upcoming = policy.do_publish(
            version=2,
            effective_on=TODAY + timedelta(days=30),
            template_name="policies/privacy-v1.html",
        )
        client = owner.client()
        assert "I have read version 2" in client.get("/privacy").content.decode()
        assert client.post("/privacy/acknowledge/2/").status_code == 302
        assert client.post("/privacy/acknowledge/2/").status_code == 302
        page = client.get("/privacy").content.decode()
        assert "You acknowledged version 2." in page
    ack = PolicyAcknowledgement.objects.get()
    assert (ack.user_id, ack.policy_id) == (owner.user.pk, upcoming.pk)
    assert AuditEvent.objects.filter(action="account.policy_acknowledge").count() == 1


def test_acknowledge_needs_sign_in_post_and_a_shown_version(client: Client, owner) -> None:
    assert client.post("/privacy/acknowledge/1/").status_code == 302  # to sign-in
    assert owner.client().get("/privacy/acknowledge/1/").status_code == 405
    assert owner.client().post("/privacy/acknowledge/99/").status_code == 404
    assert owner.client().post("/privacy/acknowledge/1/").status_code == 302
    assert PolicyAcknowledgement.objects.filter(user=owner.user).count() == 1


def test_a_version_already_in_force_is_not_announced(owner) -> None:
    current = PolicyVersion.objects.get(version=1)
    assert current.effective_on <= timezone.localdate()
    assert announcements.announce(current) == 0
