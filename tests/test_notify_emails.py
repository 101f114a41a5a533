"""clinik.notify.emails: the catalogue, the records, queueing after commit."""

import re
from pathlib import Path

import pytest
from django.core import mail
from django.db import transaction
from django.template.loader import get_template
from django.test import Client

from clinik.notify.emails import CATALOGUE, render, send, send_now
from clinik.notify.models import EmailKind, EmailRecord

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_every_email_has_its_three_templates_and_a_kind(name: str) -> None:
    for part in ("subject.txt", "body.txt", "body.html"):
        get_template(f"emails/{name}-{part}")
    assert CATALOGUE[name].kind in EmailKind.values


def test_records_hold_no_body_subject_or_address() -> None:
    fields = {f.name for f in EmailRecord._meta.get_fields()}
    assert fields == {
        "id",
        "kind",
        "template",
        "user",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
    }


def test_send_records_each_recipient_once_and_delivers_after_commit(
    owner, teammate, django_capture_on_commit_callbacks
) -> None:
    context = {"when": "now", "account_path": "/accounts/settings/"}
    with django_capture_on_commit_callbacks(execute=True):
        records = send(
            "security", "password-changed", [owner.user, teammate.user, owner.user], context
        )
        assert not mail.outbox  # nothing before commit
    assert len(records) == 2
    assert sorted(m.to[0] for m in mail.outbox) == ["dev@acme.test", "owner@acme.test"]
    sent = EmailRecord.objects.filter(template="password-changed")
    assert {(r.kind, r.user_id, r.status, r.attempts) for r in sent} == {
        ("security", owner.user.pk, "sent", 1),
        ("security", teammate.user.pk, "sent", 1),
    }


def test_a_rollback_sends_nothing(owner) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        send("security", "password-changed", owner.user, {"when": "now", "account_path": "/"})
        raise RuntimeError
    assert not mail.outbox and not EmailRecord.objects.exists()


def test_unknown_template_wrong_kind_and_unserializable_context_are_refused(owner) -> None:
    with pytest.raises(ValueError, match="not in"):
        send("security", "newsletter", owner.user, {})
    with pytest.raises(ValueError, match="security email"):
        send("billing", "password-changed", owner.user, {})
    with pytest.raises(TypeError):
        send("security", "password-changed", owner.user, {"user": owner.user})


def test_send_now_delivers_in_this_process(owner) -> None:
    send_now("service", "account-deletion-completed", "gone@acme.test", {})
    assert mail.outbox[0].to == ["gone@acme.test"]
    record = EmailRecord.objects.get()
    assert record.user_id is None and record.status == "sent"


def test_html_and_text_bodies_render() -> None:
    subject, text, html = render(
        "incident-opened",
        {
            "title": "API errors",
            "components": "FHIR API",
            "message": "Elevated 5xx",
            "when": "x",
            "status_path": "/status",
        },
    )
    assert subject == "ClinikAPI incident: API errors"
    assert "Elevated 5xx" in text and "http://testserver/status" in html


def test_the_emails_page_lists_every_email_and_says_they_cannot_be_unsubscribed(
    client: Client,
) -> None:
    response = client.get("/emails")
    assert response.status_code == 200
    page = response.content.decode()
    assert "cannot be unsubscribed" in page
    for name in CATALOGUE:
        assert f"<code>{name}</code>" in page
    assert client.post("/emails").status_code == 405


def test_the_readme_lists_every_email() -> None:
    readme = (ROOT / "README.md").read_text()
    listed = set(
        re.findall(r"^\| `([a-z-]+)` \| (?:security|billing|service|policy) \|", readme, re.M)
    )
    assert listed == set(CATALOGUE)


def test_the_account_data_download_lists_the_emails_sent_without_bodies(
    owner, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        send("security", "password-changed", owner.user, {"when": "x", "account_path": "/"})
    data = owner.client().get("/accounts/data/download/").json()
    [email] = data["emails_sent"]
    assert (email["type"], email["email"], email["status"]) == (
        "security",
        "password-changed",
        "sent",
    )
