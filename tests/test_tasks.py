"""Beat jobs of the accounts app, called directly and through a real Celery worker."""

from datetime import timedelta

import pytest
import time_machine
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.core import mail
from django.db import transaction
from django.utils import timezone

from clinik.accounts import tasks
from clinik.accounts.models import Invitation
from clinik.celery import app as celery_app
from clinik.notify.emails import send
from tests.conftest import wait_for


@pytest.mark.django_db
def test_clear_expired_sessions_keeps_live_ones() -> None:
    live = SessionStore()
    live["x"] = 1
    live.create()
    with time_machine.travel(timezone.now() - timedelta(days=1)):
        stale = SessionStore()
        stale.set_expiry(60)
        stale.create()
    assert tasks.clear_expired_sessions_now(batch=1) == 1
    assert list(Session.objects.values_list("session_key", flat=True)) == [live.session_key]
    assert tasks.clear_expired_sessions_now() == 0  # idempotent


@pytest.mark.django_db
def test_purge_expired_invitations_keeps_pending_and_accepted(owner) -> None:
    expired, _ = Invitation.issue(owner.org, "old@acme.test", "developer", owner.user)
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    pending, _ = Invitation.issue(owner.org, "new@acme.test", "developer", owner.user)
    assert tasks.purge_expired_invitations_now() == 1
    assert list(Invitation.objects.values_list("pk", flat=True)) == [pending.pk]


def test_every_beat_job_names_a_registered_task() -> None:
    celery_app.loader.import_default_modules()
    for name, entry in celery_app.conf.beat_schedule.items():
        assert entry["task"] in celery_app.tasks, name


@pytest.mark.django_db(transaction=True)
def test_real_worker_runs_the_purge_and_sends_email(owner, real_worker) -> None:
    expired, _ = Invitation.issue(owner.org, "old@acme.test", "developer", owner.user)
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    tasks.purge_expired_invitations.delay()
    assert wait_for(lambda: not Invitation.objects.exists())
    with transaction.atomic():
        send(
            "service",
            "invitation",
            "someone@acme.test",
            {"org_name": "Acme", "inviter": "Olivia", "role": "developer", "link": "http://x/"},
        )
    assert wait_for(lambda: len(mail.outbox) == 1)
    assert mail.outbox[0].subject == "Olivia invited you to Acme on ClinikAPI"
