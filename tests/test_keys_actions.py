"""do_create_key / do_revoke_key, and the promise that only hashes are stored
(policy §7: "API keys are SHA-256 hashed before storage")."""

import hashlib
import io
import json
import logging
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from clinik.audit.models import AuditEvent
from clinik.keys import tokens
from clinik.keys.actions import do_create_key, do_revoke_key
from clinik.keys.models import ApiKey
from tests.conftest import Persona

pytestmark = pytest.mark.django_db

TEXT_TYPES = ("text", "character varying", "character", "json", "jsonb")


def _text_columns() -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND data_type = ANY(%s)"
            " ORDER BY table_name, column_name",
            [list(TEXT_TYPES)],
        )
        return [(table, column) for table, column in cursor.fetchall()]


def _rows_containing(needle: str) -> list[tuple[str, str]]:
    found = []
    with connection.cursor() as cursor:
        for table, column in _text_columns():
            cursor.execute(
                f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE %s',  # noqa: S608
                [f"%{needle}%"],
            )
            if cursor.fetchone()[0]:
                found.append((table, column))
    return found


def test_the_database_holds_no_plaintext_key(
    owner: Persona, admin: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    plaintexts = []
    with django_capture_on_commit_callbacks(execute=True):
        response = owner.client().post(
            f"/o/{owner.org.pk}/keys/new/", {"name": "via page", "scopes": "read", "expires": "30"}
        )
        plaintexts.append(response.content.decode().split('id="new-key">')[1].split("<")[0])
        out = io.StringIO()
        call_command("create_org", "--name", "Cmd Org", "--email", "cmd@org.test", stdout=out)
        plaintexts.append(json.loads(out.getvalue())["api_key"])
        key, plaintext = do_create_key(
            org=owner.org,
            actor=admin.user,
            name="direct",
            scopes="read-write",
            expires_at=None,
            request=None,
        )
        plaintexts.append(plaintext)
        client = Client()
        for each in plaintexts:
            response = client.get("/fhir/R4/Patient", HTTP_AUTHORIZATION=f"Bearer {each}")
            assert response.status_code == 200
        do_revoke_key(key=key, actor=owner.user, request=None)
    assert all(tokens.is_well_formed(p) for p in plaintexts)
    assert len(_text_columns()) > 20  # the scan really looks at the schema
    for each in plaintexts:
        assert _rows_containing(each) == []
        assert _rows_containing(tokens.random_part(each)) == []
        assert _rows_containing(tokens.random_part(each)[4:20]) == []
        # What is stored instead: the hash, and the short non-secret hint.
        stored = ApiKey.objects.get(key_hash=hashlib.sha256(each.encode()).hexdigest())
        assert stored.prefix == each[:12] and stored.last4 == each[-4:]


def test_creating_records_the_actor_and_never_logs_the_key(
    owner: Persona, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key, plaintext = do_create_key(
        org=owner.org, actor=owner.user, name="k", scopes="read", expires_at=None, request=None
    )
    event = AuditEvent.objects.get(action="key.create")
    assert (event.actor_type, event.actor_id) == ("user", str(owner.user.pk))
    assert event.target_id == str(key.pk)
    assert plaintext not in caplog.text and tokens.random_part(plaintext) not in caplog.text


def test_keys_are_audit_actors_of_type_key(owner: Persona) -> None:
    from clinik import audit

    key, _ = do_create_key(
        org=owner.org, actor=owner.user, name="k", scopes="read", expires_at=None, request=None
    )
    event = audit.record("key.revoke", org=owner.org, actor=key, target=key)
    assert (event.actor_type, event.actor_id) == ("key", str(key.pk))


def test_revoking_is_final_and_once(owner: Persona) -> None:
    key, plaintext = do_create_key(
        org=owner.org, actor=owner.user, name="k", scopes="read", expires_at=None, request=None
    )
    assert ApiKey.objects.authenticate(plaintext) == key
    assert do_revoke_key(key=key, actor=owner.user, request=None) is True
    assert do_revoke_key(key=key, actor=owner.user, request=None) is False
    assert ApiKey.objects.authenticate(plaintext) is None
    assert AuditEvent.objects.filter(action="key.revoke").count() == 1
    assert key.status == "revoked"
    assert not ApiKey.objects.active().filter(pk=key.pk).exists()


def test_active_excludes_revoked_and_expired(owner: Persona) -> None:
    from datetime import timedelta

    from django.utils import timezone

    def issue(**kwargs: Any) -> ApiKey:
        return ApiKey.issue(org=owner.org, name="k", scopes="read", created_by=None, **kwargs)[0]

    live = issue(expires_at=None)
    later = issue(expires_at=timezone.now() + timedelta(days=1))
    issue(expires_at=timezone.now() - timedelta(seconds=1))
    revoked = issue(expires_at=None)
    do_revoke_key(key=revoked, actor=None, request=None)
    assert set(ApiKey.objects.active()) == {live, later}
