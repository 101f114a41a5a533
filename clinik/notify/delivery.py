"""Delivering one recorded email: an attempt, and giving up. The Celery task lives
here with the work it does, so that `emails.send` can queue it without an import
circle (the task module would otherwise import the module that queues it)."""

import logging
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db.models import F
from django.utils import timezone

from clinik.notify.catalogue import render
from clinik.notify.models import EmailRecord

logger = logging.getLogger(__name__)


def backoff_seconds(retries: int) -> int:
    return int(settings.EMAIL_RETRY_BASE_SECONDS * 2 ** min(retries, 10))


def deliver(record_id: int, address: str, template: str, context: dict[str, Any]) -> None:
    """One attempt. Raises OSError (smtplib's errors included) for the task to retry."""
    EmailRecord.objects.filter(pk=record_id).update(attempts=F("attempts") + 1)
    subject, text, html = render(template, context)
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, [address])
    message.attach_alternative(html, "text/html")
    try:
        message.send()
    except OSError as exc:
        EmailRecord.objects.filter(pk=record_id).update(last_error=type(exc).__name__[:100])
        raise
    EmailRecord.objects.filter(pk=record_id).update(
        status=EmailRecord.Status.SENT, sent_at=timezone.now(), last_error=""
    )


def give_up(record_id: int) -> None:
    EmailRecord.objects.filter(pk=record_id).update(status=EmailRecord.Status.FAILED)
    logger.error("email %s not sent after %s retries", record_id, settings.EMAIL_MAX_RETRIES)


@shared_task(bind=True, acks_late=True, max_retries=None)
def deliver_email(
    self: Task, record_id: int, address: str, template: str, context: dict[str, Any]
) -> None:
    if self.request.is_eager:
        # CELERY_TASK_ALWAYS_EAGER (the test suite): there is no broker to hold a
        # delayed retry, and the caller's request must not fail: retry inline.
        for _attempt in range(settings.EMAIL_MAX_RETRIES + 1):
            try:
                deliver(record_id, address, template, context)
                return
            except OSError:
                continue
        give_up(record_id)
        return
    try:
        deliver(record_id, address, template, context)
    except OSError as exc:
        if self.request.retries >= settings.EMAIL_MAX_RETRIES:
            give_up(record_id)
            return
        raise self.retry(exc=exc, countdown=backoff_seconds(self.request.retries)) from None
