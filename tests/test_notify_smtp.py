"""SMTP down: the email is retried by the Celery task with backoff and sent when the
server is back; the request that triggered it succeeds at once. A real SMTP server
(aiosmtpd) on a loopback port, a real worker on the test Redis."""

from typing import Any

import pytest
from django.test import override_settings

from clinik.notify.models import EmailRecord
from tests.conftest import wait_for
from tests.smtp_server import SmtpServer, free_port


@pytest.mark.django_db(transaction=True)
def test_an_email_is_retried_until_the_smtp_server_is_back(owner, real_worker) -> None:
    server = SmtpServer(free_port())  # not started: connections are refused
    with override_settings(MAILERS=server.mailers(), EMAIL_RETRY_BASE_SECONDS=1):
        response = owner.client().post(
            f"/o/{owner.org.pk}/keys/new/", {"name": "ci", "scopes": "read", "expires": "90"}
        )
        assert response.status_code == 200 and b"ck_" in response.content
        record = EmailRecord.objects.get(template="key-created")
        assert wait_for(lambda: EmailRecord.objects.get(pk=record.pk).attempts >= 2)
        record.refresh_from_db()
        assert record.status == "queued" and record.last_error == "ConnectionRefusedError"
        server.start()
        try:
            assert wait_for(lambda: EmailRecord.objects.get(pk=record.pk).status == "sent", 60)
        finally:
            server.stop()
    [message] = server.messages
    assert message["To"] == "owner@acme.test"
    assert "new API key" in message["Subject"]
    record.refresh_from_db()
    assert record.attempts >= 3 and record.sent_at is not None and record.last_error == ""


@pytest.mark.django_db
def test_after_the_last_retry_the_record_says_failed_and_the_request_succeeded(
    owner, django_capture_on_commit_callbacks
) -> None:
    server = SmtpServer(free_port())
    with (
        override_settings(
            MAILERS=server.mailers(), EMAIL_RETRY_BASE_SECONDS=0, EMAIL_MAX_RETRIES=2
        ),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = owner.client().post(
            f"/o/{owner.org.pk}/keys/new/", {"name": "ci", "scopes": "read", "expires": "90"}
        )
    assert response.status_code == 200
    record = EmailRecord.objects.get(template="key-created")
    assert (record.status, record.attempts) == ("failed", 3)


@pytest.mark.django_db
def test_a_running_smtp_server_gets_the_email_with_text_and_html(
    owner, django_capture_on_commit_callbacks
) -> None:
    server = SmtpServer(free_port())
    server.start()
    try:
        with (
            override_settings(MAILERS=server.mailers()),
            django_capture_on_commit_callbacks(execute=True),
        ):
            owner.client().post(
                f"/o/{owner.org.pk}/keys/new/", {"name": "ci", "scopes": "read", "expires": "90"}
            )
    finally:
        server.stop()
    [message] = server.messages
    assert message.is_multipart()
    parts: Any = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
