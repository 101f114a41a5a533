"""Closure end to end with a real Celery worker: the dashboard request, the hourly
beat job that queues due closures, the worker that deletes everything, and a
direct SQL scan afterwards."""

from pathlib import Path

import pytest
from django.core import mail
from django.utils import timezone

from clinik.privacy import tasks
from clinik.privacy.models import Closure
from tests.conftest import wait_for
from tests.test_closure_job import _assert_closed, _populate, _request_closure


@pytest.fixture
def export_dir(settings, tmp_path: Path) -> Path:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    return tmp_path


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_closes_the_account(
    owner, outsider, api, export_dir, django_capture_on_commit_callbacks, real_worker
) -> None:
    facts = _populate(owner, outsider, api)
    closure = _request_closure(owner, django_capture_on_commit_callbacks)
    assert wait_for(lambda: any("is closing" in m.subject for m in mail.outbox))
    tasks.start_due_deletions.delay()  # not due yet: queues nothing
    Closure.objects.filter(pk=closure.pk).update(scheduled_for=timezone.now())
    tasks.start_due_deletions.delay()
    assert wait_for(lambda: Closure.objects.get(pk=closure.pk).status == "completed")
    _assert_closed(owner.org.pk, facts, export_dir, outsider)
    assert wait_for(lambda: any("is closed" in m.subject for m in mail.outbox))
