import re

import pytest
from django.core import mail
from django.test import Client

from clinik.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_reset_by_email_end_to_end(
    client: Client, owner, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):  # sent by clinik.notify
        response = client.post("/accounts/password-reset/", {"email": "owner@acme.test"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["owner@acme.test"]
    assert getattr(message, "alternatives", None)  # HTML part
    link = re.search(r"http://testserver(/accounts/password-reset/\S+/)", str(message.body))
    assert link
    page = client.get(link.group(1), follow=True)
    assert b"Set a new password" in page.content
    done = client.post(
        page.redirect_chain[-1][0],
        {"new_password1": "brand new passphrase 7", "new_password2": "brand new passphrase 7"},
    )
    assert done.status_code == 302
    owner.user.refresh_from_db()
    assert owner.user.check_password("brand new passphrase 7")
    assert AuditEvent.objects.filter(action="account.password_reset").count() == 1
    # The link works once.
    assert b"has expired" in client.get(link.group(1), follow=True).content


def test_reset_for_unknown_email_looks_the_same_and_sends_nothing(client: Client) -> None:
    response = client.post("/accounts/password-reset/", {"email": "ghost@acme.test"})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/password-reset/sent/"
    assert mail.outbox == []
