"""Emails are subject / text / HTML template triplets under templates/emails/.

They are sent by a Celery task scheduled after the transaction commits, so a
rolled-back change never sends mail. Contexts must never carry PHI."""

from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.template.loader import render_to_string


def render_email(name: str, context: dict[str, Any]) -> tuple[str, str, str]:
    ctx = {"site_url": settings.SITE_URL, **context}
    subject = render_to_string(f"emails/{name}-subject.txt", ctx).strip().replace("\n", " ")
    text = render_to_string(f"emails/{name}-body.txt", ctx)
    html = render_to_string(f"emails/{name}-body.html", ctx)
    return subject, text, html


def send_email_now(name: str, to: list[str], context: dict[str, Any]) -> None:
    subject, text, html = render_email(name, context)
    message = EmailMultiAlternatives(subject, text, settings.DEFAULT_FROM_EMAIL, to)
    message.attach_alternative(html, "text/html")
    message.send()


def send_email_on_commit(name: str, to: list[str], context: dict[str, Any]) -> None:
    from clinik.accounts.tasks import send_email

    transaction.on_commit(lambda: send_email.delay(name, to, context))
