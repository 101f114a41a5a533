"""A user's own data rights: download (portability), correction (linked), objection
to analytics, and deletion of their account after the grace period."""

import json
from datetime import timedelta

import pytest
import time_machine
from django.core import mail

from clinik.accounts.models import Membership, User
from clinik.audit.models import AuditEvent
from clinik.fhir.store import get_store
from clinik.keys.actions import do_create_key
from clinik.privacy import deletion as deletion_module
from clinik.privacy.models import AccountDeletion
from clinik.privacy.tasks import deletion_safety_net_now
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

DATA = "/accounts/data/"


# --- download ---------------------------------------------------------------------------


def test_download_holds_my_account_data_and_nothing_else(owner, teammate, outsider) -> None:
    get_store().create(owner.org.pk, {"resourceType": "Patient", "name": [{"family": "Quixote"}]})
    mine, _ = do_create_key(
        org=owner.org, actor=owner.user, name="mine", scopes="read", expires_at=None, request=None
    )
    do_create_key(
        org=owner.org,
        actor=teammate.user,
        name="theirs",
        scopes="read",
        expires_at=None,
        request=None,
    )
    owner.client().post("/accounts/signout/")  # some activity of mine
    response = owner.client().get(DATA + "download/", REMOTE_ADDR="192.0.2.44")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    data = json.loads(response.content)
    assert data["profile"]["email"] == "owner@acme.test"
    assert data["profile"]["name"] == "Olivia Owner"
    assert [(o["name"], o["role"]) for o in data["organizations"]] == [("Acme Health", "owner")]
    assert [k["name"] for k in data["api_keys_created"]] == ["mine"]
    assert data["api_keys_created"][0]["hint"] == mine.display
    assert "account.signout" in data["usage_summary"]["dashboard_actions"]
    text = response.content.decode()
    for foreign in ("dev@acme.test", "Devon", "theirs", "Other Clinic", "out@other.test"):
        assert foreign not in text
    assert "Quixote" not in text and "key_hash" not in text and mine.key_hash not in text
    record = AuditEvent.objects.get(action="account.data_download")
    assert record.actor_id == str(owner.user.pk) and record.ip == "192.0.2.44"


def test_download_needs_sign_in_and_get(owner, client) -> None:
    assert client.get(DATA + "download/").status_code == 302
    assert owner.client().post(DATA + "download/").status_code == 405


def test_data_page_links_correction_and_shows_choices(owner, client) -> None:
    response = owner.client().get(DATA)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'href="/accounts/settings/"' in body and 'href="/accounts/data/download/"' in body
    assert "only owner of <strong>Acme Health</strong>" in body
    assert client.get(DATA).status_code == 302
    assert owner.client().post(DATA).status_code == 405


# --- objection to analytics ---------------------------------------------------------------


def test_analytics_toggle(owner) -> None:
    client = owner.client()
    assert client.post(DATA + "analytics/", {"opt_out": "on"}).status_code == 302
    assert User.objects.get(pk=owner.user.pk).analytics_opt_out
    assert "Analytics are off" in client.get(DATA).content.decode()
    client.post(DATA + "analytics/", {"opt_out": ""})
    assert not User.objects.get(pk=owner.user.pk).analytics_opt_out
    actions = AuditEvent.objects.filter(action__startswith="account.analytics")
    assert list(actions.order_by("id").values_list("action", flat=True)) == [
        "account.analytics_opt_out",
        "account.analytics_opt_in",
    ]
    assert client.get(DATA + "analytics/").status_code == 405


# --- deletion ---------------------------------------------------------------------------------


def test_a_last_owner_must_hand_over_first(owner) -> None:
    response = owner.client().post(DATA + "delete/", {"confirm_email": "owner@acme.test"})
    assert response.status_code == 409
    assert not AccountDeletion.objects.exists()


def test_deletion_needs_my_email_typed(teammate) -> None:
    response = teammate.client().post(DATA + "delete/", {"confirm_email": "someone@else.test"})
    assert response.status_code == 400
    assert not AccountDeletion.objects.exists()
    assert teammate.client().get(DATA + "delete/").status_code == 405
    assert teammate.client().get(DATA + "delete/cancel/").status_code == 405


def test_deletion_can_be_cancelled_until_it_runs(teammate) -> None:
    client = teammate.client()
    client.post(DATA + "delete/", {"confirm_email": "DEV@acme.test"})
    request = AccountDeletion.objects.get(user=teammate.user)
    assert request.status == "pending"
    assert "scheduled for deletion" in client.get(DATA).content.decode()
    assert client.post(DATA + "delete/cancel/").status_code == 302
    assert AccountDeletion.objects.get(pk=request.pk).status == "cancelled"
    assert client.post(DATA + "delete/cancel/").status_code == 404
    with time_machine.travel(request.scheduled_for + timedelta(minutes=1), tick=False):
        assert deletion_module.run_deletion(request.pk) == "skipped"
    assert User.objects.get(pk=teammate.user.pk).is_active


def test_deletion_erases_the_user_after_the_grace_period(
    owner, teammate, outsider, django_capture_on_commit_callbacks
) -> None:
    MembershipFactory(user=teammate.user, org=outsider.org, role="developer")
    signed_in = teammate.client()
    with django_capture_on_commit_callbacks(execute=True):
        signed_in.post(
            DATA + "delete/",
            {"confirm_email": "dev@acme.test"},
            REMOTE_ADDR="198.51.100.9",
            HTTP_USER_AGENT="Firefox",
        )
    request = AccountDeletion.objects.get(user=teammate.user)
    assert request.scheduled_for == request.requested_at + timedelta(days=7)
    assert "will be deleted" in mail.outbox[-1].subject
    assert deletion_module.run_deletion(request.pk) == "skipped"  # still in its grace period
    with time_machine.travel(request.scheduled_for + timedelta(minutes=1), tick=False):
        assert deletion_module.run_deletion(request.pk) == "completed"
    user = User.objects.get(pk=teammate.user.pk)
    assert user.email == f"erased-{user.pk}@erased.invalid" and user.name == ""
    assert not user.is_active and not user.has_usable_password()
    assert not Membership.objects.filter(user_id=user.pk).exists()
    assert Membership.objects.filter(org=owner.org).count() == 1  # the owner stays
    mine = AuditEvent.objects.filter(actor_type="user", actor_id=str(user.pk))
    assert mine.exists() and not mine.exclude(ip=None).exists()
    assert not mine.exclude(user_agent="").exists()
    assert AuditEvent.objects.filter(action="account.deleted", target_id=str(user.pk)).exists()
    assert mail.outbox[-1].to == ["dev@acme.test"] and "is deleted" in mail.outbox[-1].subject
    assert AccountDeletion.objects.get(pk=request.pk).notify_email == ""
    assert signed_in.get(DATA).status_code == 302  # the session ended


def test_deletion_is_blocked_if_the_user_became_a_last_owner(teammate, owner) -> None:
    request = deletion_module.do_request_deletion(user=teammate.user, request=None)
    Membership.objects.filter(user=teammate.user).update(role="owner")
    Membership.objects.filter(user=owner.user).update(role="developer")
    with time_machine.travel(request.scheduled_for + timedelta(minutes=1), tick=False):
        assert deletion_module.run_deletion(request.pk) == "blocked"
    assert User.objects.get(pk=teammate.user.pk).is_active
    assert "could not be deleted" in mail.outbox[-1].subject


class Killed(Exception):
    pass


def test_deletion_interrupted_midway_and_rerun_ends_the_same(teammate, outsider) -> None:
    MembershipFactory(user=teammate.user, org=outsider.org, role="developer")
    request = deletion_module.do_request_deletion(user=teammate.user, request=None)

    def die_after_first_membership(name: str) -> None:
        if name == "membership":
            raise Killed

    with time_machine.travel(request.scheduled_for + timedelta(minutes=1), tick=False):
        with pytest.raises(Killed):
            deletion_module.run_deletion(request.pk, checkpoint=die_after_first_membership)
        assert Membership.objects.filter(user=teammate.user).count() == 1
        assert deletion_module.run_deletion(request.pk) == "completed"
    assert not Membership.objects.filter(user=teammate.user).exists()
    assert not User.objects.get(pk=teammate.user.pk).is_active


def test_safety_net_runs_an_overdue_deletion(teammate) -> None:
    with time_machine.travel(-timedelta(days=29), tick=False):
        request = deletion_module.do_request_deletion(user=teammate.user, request=None)
    assert request.deadline < request.requested_at + timedelta(days=31)
    assert deletion_safety_net_now() == {f"deletion:{request.pk}": "completed"}
