"""The retention jobs of clinik.privacy: every beat entry runs, the grace period is
bounded by the policy's 30 days, and due work is queued."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from clinik.celery import app as celery_app
from clinik.privacy import tasks
from clinik.privacy.closure import do_request_closure
from clinik.privacy.models import Closure, schedule_for

ROOT = Path(__file__).resolve().parent.parent
PRIVACY_BEAT = {"purge-expired-exports", "start-due-deletions", "deletion-safety-net"}


def test_beat_lists_the_retention_jobs() -> None:
    schedule = django_settings.CELERY_BEAT_SCHEDULE
    assert set(schedule) >= PRIVACY_BEAT
    assert schedule["deletion-safety-net"] == {
        "task": "clinik.privacy.tasks.deletion_safety_net",
        "schedule": 86400.0,
    }
    celery_app.loader.import_default_modules()
    for name in PRIVACY_BEAT:
        assert schedule[name]["task"] in celery_app.tasks


@pytest.mark.django_db
def test_every_privacy_beat_job_runs(settings, tmp_path) -> None:
    settings.EXPORT_DIR = tmp_path
    for name in sorted(PRIVACY_BEAT):
        task = celery_app.tasks[str(django_settings.CELERY_BEAT_SCHEDULE[name]["task"])]
        task.delay()  # eager in tests: runs here, raising on any error


@pytest.mark.django_db
def test_start_due_deletions_queues_only_due_work(owner, outsider) -> None:
    due = do_request_closure(org=owner.org, actor=owner.user, request=None)
    later = do_request_closure(org=outsider.org, actor=outsider.user, request=None)
    Closure.objects.filter(pk=due.pk).update(scheduled_for=timezone.now() - timedelta(hours=1))
    assert tasks.start_due_deletions_now() == 1  # eager: the queued job ran at once
    assert Closure.objects.get(pk=due.pk).status == "completed"
    assert Closure.objects.get(pk=later.pk).status == "pending"


def test_grace_never_reaches_the_deadline(settings) -> None:
    now = timezone.now()
    settings.CLOSURE_GRACE_DAYS = 30
    scheduled, deadline = schedule_for(now)
    assert deadline == now + timedelta(days=30)
    assert scheduled == deadline - timedelta(days=2)  # the safety net's margin
    settings.CLOSURE_GRACE_DAYS = 0
    assert schedule_for(now)[0] == now


def test_settings_refuse_a_grace_period_over_thirty_days() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "clinik.settings", "CLOSURE_GRACE_DAYS": "31"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CLOSURE_GRACE_DAYS must be at most 30" in result.stderr
