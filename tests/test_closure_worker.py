"""Closure end to end with a real Celery worker: the dashboard request, the hourly
beat job that queues due closures, the worker that deletes everything, and a
direct SQL scan afterwards."""

import time
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from django.core import mail
from django.utils import timezone

from clinik.celery import app as celery_app
from clinik.privacy import tasks
from clinik.privacy.models import Closure
from tests.test_closure_job import _assert_closed, _populate, _request_closure


@pytest.fixture
def export_dir(settings, tmp_path: Path) -> Path:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    return tmp_path


@pytest.fixture
def real_worker():
    celery_app.conf.task_always_eager = False
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            yield
    finally:
        celery_app.conf.task_always_eager = True


def _wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_closes_the_account(
    owner, outsider, api, export_dir, django_capture_on_commit_callbacks, real_worker
) -> None:
    facts = _populate(owner, outsider, api)
    closure = _request_closure(owner, django_capture_on_commit_callbacks)
    assert _wait_for(lambda: any("is closing" in m.subject for m in mail.outbox))
    tasks.start_due_deletions.delay()  # not due yet: queues nothing
    Closure.objects.filter(pk=closure.pk).update(scheduled_for=timezone.now())
    tasks.start_due_deletions.delay()
    assert _wait_for(lambda: Closure.objects.get(pk=closure.pk).status == "completed")
    _assert_closed(owner.org.pk, facts, export_dir, outsider)
    assert _wait_for(lambda: any("is closed" in m.subject for m in mail.outbox))
