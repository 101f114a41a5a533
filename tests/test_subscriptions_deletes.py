"""A delete is matched against the resource's last version (not only its type), and a
change overwritten or deleted before the dispatcher saw it against its own version:
through the search engine, on the version put back inside a rolled-back savepoint."""

import json
from typing import Any

import orjson
import pytest

from clinik.fhir.store import get_store
from clinik.subscriptions.tasks import dispatch_subscriptions
from tests.test_subscriptions_dispatch import (
    LOINC,
    observation,
    receiver,  # noqa: F401 - fixture
    subscribe,
)

CRITERIA = f"Observation?code={LOINC}|8867-4"


def seen(hook: Any) -> list[tuple[str, str]]:
    out = []
    for request in hook.requests:
        [entry] = orjson.loads(request.body)["entry"]
        out.append((entry["request"]["method"], entry["request"]["url"].split("/")[1]))
    return out


def create(api: Any, code: str) -> str:
    return str(json.loads(api.post("Observation", observation(code)).content)["id"])


@pytest.mark.django_db(transaction=True)
def test_a_delete_notifies_only_when_the_last_version_matched(api, receiver):  # noqa: F811
    subscribe(api, receiver.url, CRITERIA)
    matching, other = create(api, "8867-4"), create(api, "1234-5")
    dispatch_subscriptions()
    assert seen(receiver) == [("POST", matching)]

    assert api.delete(f"Observation/{other}").status_code in (200, 204)
    dispatch_subscriptions()
    assert seen(receiver) == [("POST", matching)]  # the non-matching delete: nothing

    assert api.delete(f"Observation/{matching}").status_code in (200, 204)
    dispatch_subscriptions()
    assert seen(receiver) == [("POST", matching), ("DELETE", matching)]
    # The version put back for matching was rolled back: still deleted, not searchable.
    assert api.get(f"Observation/{matching}").status_code == 410
    found = json.loads(api.get(f"Observation?code={LOINC}|8867-4").content)
    assert found.get("entry", []) == []


@pytest.mark.django_db(transaction=True)
def test_changes_deleted_before_dispatch_match_their_own_version(api, receiver):  # noqa: F811
    subscribe(api, receiver.url, CRITERIA)
    kept = create(api, "8867-4")
    matching, other = create(api, "8867-4"), create(api, "1234-5")
    # An update that stops matching, then deletes: all before the dispatcher runs.
    api.put(f"Observation/{kept}", {**observation("1234-5"), "id": kept})
    api.delete(f"Observation/{matching}")
    api.delete(f"Observation/{other}")
    for _ in range(5):
        dispatch_subscriptions()
    assert seen(receiver) == [
        ("POST", kept),  # version 1 matched, though version 2 (now) does not
        ("POST", matching),
        ("DELETE", matching),
    ]
    assert api.get(f"Observation/{kept}").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_an_erased_resource_notifies_on_its_type(api, receiver):  # noqa: F811
    """$expunge before the dispatcher ran: no version is left to match, so the delete
    reaches every subscription of the type (documented), rather than none."""
    subscribe(api, receiver.url, CRITERIA)
    other = create(api, "1234-5")
    dispatch_subscriptions()
    api.delete(f"Observation/{other}")
    get_store().expunge(api.org.pk, "Observation", other)
    dispatch_subscriptions()
    assert seen(receiver) == [("DELETE", other)]
