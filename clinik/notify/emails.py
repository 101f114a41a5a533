"""`send(kind, template, to, context)`: the one way ClinikAPI sends email (see the
package docstring in clinik/notify/__init__.py)."""

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F
from django.template.loader import render_to_string
from django.utils import timezone

from clinik.accounts.models import User, normalize_email
from clinik.notify.models import EmailKind, EmailRecord

logger = logging.getLogger(__name__)

Recipient = User | str


@dataclass(frozen=True)
class Email:
    kind: str
    when: str


# Every email we send: its kind and when it goes out. The /emails page and the README
# list them; a test checks that each has its three templates.
CATALOGUE: dict[str, Email] = {
    "key-created": Email("security", "an API key is created (to the organization's owners)"),
    "key-revoked": Email("security", "an API key is revoked (to the owners)"),
    "signin-new-browser": Email(
        "security", "you sign in from a browser or network not seen for you in 90 days"
    ),
    "signin-locked": Email("security", "sign-in to your account is locked after failed attempts"),
    "password-reset": Email("security", "you ask for a password reset link"),
    "password-changed": Email("security", "your password is changed or reset"),
    "email-changed": Email("security", "your sign-in email is changed (to the old and new one)"),
    "member-added": Email("security", "someone joins an organization (to its owners)"),
    "member-removed": Email(
        "security", "a member is removed or leaves (to the owners and the member)"
    ),
    "owner-granted": Email("security", "someone is made an owner (to every owner)"),
    "closure-requested": Email("security", "closure of an organization is requested (members)"),
    "closure-cancelled": Email("security", "a pending closure is cancelled (to the members)"),
    "closure-completed": Email("service", "a closed organization's data is deleted"),
    "account-deletion-requested": Email("security", "you ask for your account to be deleted"),
    "account-deletion-blocked": Email(
        "security", "your account deletion is stopped (you are an organization's last owner)"
    ),
    "account-deletion-completed": Email("service", "your account is erased"),
    "invitation": Email("service", "someone invites you to an organization"),
    "incident-opened": Email("service", "an outage affecting your organization begins"),
    "incident-resolved": Email("service", "that outage is resolved"),
    "policy-announcement": Email(
        "policy", "a new privacy policy version is published, 30+ days before it applies"
    ),
}


def _check(kind: str, template: str, context: dict[str, Any]) -> None:
    entry = CATALOGUE.get(template)
    if entry is None:
        raise ValueError(f"{template!r} is not in clinik.notify.emails.CATALOGUE")
    if kind != entry.kind or kind not in EmailKind.values:
        raise ValueError(f"{template!r} is a {entry.kind} email, not {kind!r}")
    json.dumps(context)  # the task's arguments travel as JSON: fail here, not in a worker


def _recipients(to: Recipient | Iterable[Recipient]) -> list[tuple[User | None, str]]:
    items = [to] if isinstance(to, User | str) else list(to)
    seen: set[str] = set()
    result: list[tuple[User | None, str]] = []
    for item in items:
        user, address = (item, item.email) if isinstance(item, User) else (None, item)
        address = normalize_email(address)
        if address and address not in seen:
            seen.add(address)
            result.append((user, address))
    return result


def render(template: str, context: dict[str, Any]) -> tuple[str, str, str]:
    ctx = {"site_url": settings.SITE_URL, **context}
    subject = render_to_string(f"emails/{template}-subject.txt", ctx).strip().replace("\n", " ")
    text = render_to_string(f"emails/{template}-body.txt", ctx)
    html = render_to_string(f"emails/{template}-body.html", ctx)
    return subject, text, html


def send(
    kind: str, template: str, to: Recipient | Iterable[Recipient], context: dict[str, Any]
) -> list[EmailRecord]:
    """Record one email per recipient now and queue its delivery after commit."""
    _check(kind, template, context)
    from clinik.notify.tasks import deliver_email  # the task module imports this one

    records = []
    for user, address in _recipients(to):
        record = EmailRecord.objects.create(kind=kind, template=template, user=user)
        records.append(record)
        transaction.on_commit(partial(deliver_email.delay, record.pk, address, template, context))
    return records


def send_now(
    kind: str, template: str, to: Recipient | Iterable[Recipient], context: dict[str, Any]
) -> None:
    """Send at once, in this process (a worker job that must know it went)."""
    _check(kind, template, context)
    for user, address in _recipients(to):
        record = EmailRecord.objects.create(kind=kind, template=template, user=user)
        deliver(record.pk, address, template, context)


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
