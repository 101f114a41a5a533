"""Thin shells around clinik.notify's functions (which the tests call directly)."""

from typing import Any

from celery import Task, shared_task
from django.conf import settings

from clinik.notify import emails, policy
from clinik.privacy.models import PolicyVersion


def backoff_seconds(retries: int) -> int:
    return int(settings.EMAIL_RETRY_BASE_SECONDS * 2 ** min(retries, 10))


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver_email(
    self: Task, record_id: int, address: str, template: str, context: dict[str, Any]
) -> None:
    if self.request.is_eager:
        # CELERY_TASK_ALWAYS_EAGER (the test suite): there is no broker to hold a
        # delayed retry, and the caller's request must not fail: retry inline.
        for _attempt in range(settings.EMAIL_MAX_RETRIES + 1):
            try:
                emails.deliver(record_id, address, template, context)
                return
            except OSError:
                continue
        emails.give_up(record_id)
        return
    try:
        emails.deliver(record_id, address, template, context)
    except OSError as exc:
        if self.request.retries >= settings.EMAIL_MAX_RETRIES:
            emails.give_up(record_id)
            return
        raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from None


@shared_task
def announce_policy(policy_id: int) -> int:
    version = PolicyVersion.objects.filter(pk=policy_id).first()
    return policy.announce(version) if version else 0


@shared_task
def announce_policy_versions() -> int:
    return policy.announce_pending()
