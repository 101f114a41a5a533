"""The key lookup as a prepared statement (API_KEY_PREPARED_LOOKUP): prepared once per
database connection, again on a new one, never twice on the same server session."""

from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from clinik.keys import models, tokens
from clinik.keys.actions import do_revoke_key
from clinik.keys.models import LOOKUP_STATEMENT, ApiKey
from tests.conftest import Persona

pytestmark = [
    pytest.mark.django_db(transaction=True),  # closes its connection
    pytest.mark.usefixtures("_prepared_lookup"),
]


@pytest.fixture
def _prepared_lookup() -> Any:
    with override_settings(API_KEY_PREPARED_LOOKUP=True):
        yield


def sql_of(plaintext: str) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        ApiKey.objects.authenticate(plaintext)
    return [q["sql"].split(" ", 1)[0] for q in queries.captured_queries]


def issue(persona: Persona) -> tuple[ApiKey, str]:
    return ApiKey.issue(
        org=persona.org, name="k", scopes="read", expires_at=None, created_by=persona.user
    )


def test_it_finds_usable_keys_with_their_organization_and_nothing_else(owner: Persona) -> None:
    key, plaintext = issue(owner)
    found = ApiKey.objects.authenticate(plaintext)
    assert found == key and found is not None
    assert found.org == owner.org and found.org.name == owner.org.name
    assert ApiKey.objects.authenticate(tokens.generate()) is None
    do_revoke_key(key=key, actor=owner.user, request=None)
    assert ApiKey.objects.authenticate(plaintext) is None


def test_it_is_prepared_once_per_connection(owner: Persona) -> None:
    _key, plaintext = issue(owner)
    connection.close()
    assert sql_of(plaintext) == ["SELECT", "PREPARE", "EXECUTE"]
    assert sql_of(plaintext) == ["EXECUTE"]
    connection.close()  # a new server session has no prepared statements
    assert sql_of(plaintext) == ["SELECT", "PREPARE", "EXECUTE"]


def test_a_session_that_already_holds_it_is_not_asked_to_prepare_it_again(
    owner: Persona,
) -> None:
    """As when a session-mode pooler hands us a server session used before."""
    _key, plaintext = issue(owner)
    ApiKey.objects.authenticate(plaintext)
    models._prepared.clear()
    assert sql_of(plaintext) == ["SELECT", "EXECUTE"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = %s", [LOOKUP_STATEMENT]
        )
        assert cursor.fetchone() == (1,)
