"""Signing secrets sealed at rest: the database row never holds the plain secret (read
with SQL), deliveries still verify, the encryption key rotates (old key still opens,
`subscriptions_reseal` moves rows to the new one), and a wrong or missing key is a
start-up or check error, not a failure at delivery time."""

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import import_module
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from clinik.fhir.tenancy import tenant_transaction
from clinik.lib.webhooks import verify
from clinik.subscriptions import sealing
from clinik.subscriptions.models import Delivery, Subscription
from clinik.subscriptions.sealing import signing_secret
from tests.test_guards import PRODUCTION_ENV
from tests.test_subscriptions_dispatch import subscribe
from tests.webhook_receiver import Receiver, serving

ROOT = Path(__file__).resolve().parent.parent
OLD_KEY = Fernet.generate_key().decode()
NEW_KEY = Fernet.generate_key().decode()
migration = import_module("clinik.subscriptions.migrations.0005_sealed_secrets")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


@pytest.fixture
def sub(api: Any, receiver: Receiver) -> Subscription:
    created = subscribe(api, receiver.url, "Observation?code=http://loinc.org|8867-4")
    return Subscription.objects.get(org=api.org, resource_id=created["id"])


def raw_secret(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT secret FROM subscriptions_subscription WHERE id = %s", [pk])
        return str(cursor.fetchone()[0])


def plain_rows() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM subscriptions_subscription WHERE secret LIKE 'whsec%%'"
        )
        return int(cursor.fetchone()[0])


def url(org: Any, tail: str) -> str:
    return f"/o/{org.pk}/webhooks/{tail}"


def check_ids(**kwargs: Any) -> set[str]:
    return {message.id for message in run_checks(**kwargs) if message.id}


def test_the_row_never_holds_the_plain_secret(owner, sub):
    # The trigger that mirrored the resource made none in SQL.
    assert raw_secret(sub.pk) == ""
    client = owner.client()
    shown = client.post(url(owner.org, f"{sub.pk}/secret/")).content.decode()
    secret = signing_secret(sub)
    assert secret.startswith("whsec_") and secret in shown
    stored = raw_secret(sub.pk)
    assert stored and secret not in stored and "whsec" not in stored
    assert Fernet(sealing.development_key(settings.SECRET_KEY)).decrypt(stored.encode()) == (
        secret.encode()
    )

    rotated = client.post(url(owner.org, f"{sub.pk}/rotate/")).content.decode()
    sub.refresh_from_db()
    new = signing_secret(sub)
    assert new != secret and new in rotated
    stored_after = raw_secret(sub.pk)
    assert stored_after != stored and new not in stored_after and plain_rows() == 0


def test_a_delivery_before_the_secret_is_shown_signs_with_the_one_shown_later(
    owner, sub, receiver, django_capture_on_commit_callbacks
):
    client = owner.client()
    with django_capture_on_commit_callbacks(execute=True):
        client.post(url(owner.org, f"{sub.pk}/ping/"))
    [ping] = receiver.requests
    assert raw_secret(sub.pk) and plain_rows() == 0
    shown = client.post(url(owner.org, f"{sub.pk}/secret/")).content.decode()
    secret = signing_secret(Subscription.objects.get(pk=sub.pk))
    assert secret in shown
    assert verify(secret, ping.body, ping.headers["ClinikAPI-Signature"])


def test_key_rotation_old_key_opens_reseal_moves_rows(sub, receiver):
    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[OLD_KEY]):
        secret = signing_secret(sub)
    sealed_old = raw_secret(sub.pk)
    Fernet(OLD_KEY).decrypt(sealed_old.encode())

    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[NEW_KEY, OLD_KEY]):
        assert signing_secret(Subscription.objects.get(pk=sub.pk)) == secret
        assert "clinik.W203" in check_ids(databases=["default"])
        out = StringIO()
        call_command("subscriptions_reseal", stdout=out)
        assert "resealed 1, already current 0, unreadable 0" in out.getvalue()
        assert "clinik.W203" not in check_ids(databases=["default"])
        out = StringIO()
        call_command("subscriptions_reseal", stdout=out)
        assert "resealed 0, already current 1" in out.getvalue()

    sealed_new = raw_secret(sub.pk)
    assert sealed_new != sealed_old and secret not in sealed_new
    assert Fernet(NEW_KEY).decrypt(sealed_new.encode()).decode() == secret
    with pytest.raises(InvalidToken):
        Fernet(OLD_KEY).decrypt(sealed_new.encode())
    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[NEW_KEY]):  # old key dropped
        assert signing_secret(Subscription.objects.get(pk=sub.pk)) == secret
        assert "clinik.E202" not in check_ids(databases=["default"])


def test_a_wrong_key_is_a_check_error_and_no_delivery_or_page_fails(
    owner, sub, receiver, django_capture_on_commit_callbacks
):
    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[OLD_KEY]):
        signing_secret(sub)
    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[NEW_KEY]):
        assert "clinik.E202" in check_ids(databases=["default"])
        out = StringIO()
        with pytest.raises(Exception, match="open with none"):
            call_command("subscriptions_reseal", stdout=out)
        client = owner.client()
        with django_capture_on_commit_callbacks(execute=True):
            assert client.post(url(owner.org, f"{sub.pk}/ping/")).status_code == 302
        assert receiver.requests == []  # nothing sent unsigned or mis-signed
        with tenant_transaction(owner.org.pk):
            delivery = Delivery.objects.get(org=owner.org)
        assert delivery.status == "pending" and delivery.last_error == "signing secret unreadable"
        shown = client.post(url(owner.org, f"{sub.pk}/secret/"), follow=True)
        assert shown.status_code == 200
        assert "cannot be read with the server" in shown.content.decode()
        assert not Subscription.objects.get(pk=sub.pk).secret_shown
    # The right key back: it opens again.
    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[NEW_KEY, OLD_KEY]):
        assert "clinik.E202" not in check_ids(databases=["default"])


def test_deploy_check_wants_an_explicit_key():
    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[]):
        assert "clinik.E201" in check_ids(include_deployment_checks=True)
    with override_settings(SUBSCRIPTIONS_SECRET_KEYS=[NEW_KEY]):
        assert "clinik.E201" not in check_ids(include_deployment_checks=True)


def _start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "clinik.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_or_with_a_malformed_key():
    env = {**os.environ, **PRODUCTION_ENV}
    del env["SUBSCRIPTIONS_SECRET_KEYS"]
    missing = _start(env)
    assert missing.returncode != 0
    assert "SUBSCRIPTIONS_SECRET_KEYS must be set when DEBUG=false" in missing.stderr
    bad = "not-a-fernet-key-but-a-secret-value"
    malformed = _start({**env, "SUBSCRIPTIONS_SECRET_KEYS": f"{NEW_KEY},{bad}"})
    assert malformed.returncode != 0
    assert "SUBSCRIPTIONS_SECRET_KEYS: key 2 is not a Fernet key" in malformed.stderr
    assert bad not in malformed.stderr and NEW_KEY not in malformed.stderr


def test_the_migration_seals_plain_secrets_and_backwards_unseals_them(sub):
    plain = sealing.new_secret()
    Subscription.objects.filter(pk=sub.pk).update(secret=plain)
    before = check_ids(databases=["default"])
    assert "clinik.W204" in before and "clinik.E202" not in before  # migrate is not blocked
    migration.seal_stored(apps, None)
    stored = raw_secret(sub.pk)
    assert plain not in stored and sealing.unseal(stored) == plain and plain_rows() == 0
    migration.unseal_stored(apps, None)
    assert raw_secret(sub.pk) == plain
