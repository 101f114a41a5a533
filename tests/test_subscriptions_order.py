"""Delivery order per subscription is commit order, also for two concurrent
transactions of one tenant whose writes ran in the other order."""

import json
import threading
from typing import Any

import orjson
import pytest
from django.db import connection

from clinik.fhir.store import get_store
from clinik.fhir.tenancy import tenant_transaction
from clinik.subscriptions.models import OutboxEvent
from clinik.subscriptions.tasks import dispatch_subscriptions
from tests.test_subscriptions_dispatch import (
    deliveries,
    observation,
    receiver,  # noqa: F401 - fixture
    subscribe,
)


def write_in_thread(
    org_id: Any, code: str, written: threading.Event, release: threading.Event, out: dict
) -> threading.Thread:
    """A transaction that writes (its outbox row gets its id now), then waits for
    `release` before it commits."""

    def run() -> None:
        try:
            with tenant_transaction(org_id):
                out[code] = get_store().create(org_id, observation(code)).id
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")  # the deferred insert runs now
                written.set()
                assert release.wait(30)
        finally:
            connection.close()

    return threading.Thread(target=run)


@pytest.mark.django_db(transaction=True)
def test_two_interleaved_transactions_are_delivered_in_commit_order(api, receiver):  # noqa: F811
    subscribe(api, receiver.url, "Observation")
    ids: dict[str, str] = {}
    first_written, second_written = threading.Event(), threading.Event()
    first_release, second_release = threading.Event(), threading.Event()
    first = write_in_thread(api.org.pk, "first", first_written, first_release, ids)
    second = write_in_thread(api.org.pk, "second", second_written, second_release, ids)
    first.start()
    assert first_written.wait(30)
    second.start()
    assert second_written.wait(30)
    # "second" wrote after "first" (a higher outbox id) but commits before it.
    second_release.set()
    second.join(30)
    first_release.set()
    first.join(30)
    assert not first.is_alive() and not second.is_alive()

    with tenant_transaction(api.org.pk):
        rows = list(OutboxEvent.objects.order_by("pk").values_list("resource_id", "seq"))
    assert [rid for rid, _seq in rows] == [ids["first"], ids["second"]]
    first_seq, second_seq = rows[0][1], rows[1][1]
    assert first_seq is not None and second_seq is not None
    assert second_seq < first_seq  # numbered in commit order

    for _ in range(3):
        dispatch_subscriptions()
    sent = [orjson.loads(r.body)["entry"][0]["request"]["url"] for r in receiver.requests]
    assert sent == [f"Observation/{ids['second']}", f"Observation/{ids['first']}"]
    assert [d.resource_id for d in deliveries(api.org)] == [ids["second"], ids["first"]]


@pytest.mark.django_db(transaction=True)
def test_a_committing_writer_waits_for_the_tenants_previous_commit(api, receiver):  # noqa: F811
    """The commit lock: while one transaction of the tenant holds it (at its commit),
    another one's commit of a watched write waits; a write of an unwatched type and
    another tenant's writes do not."""
    subscribe(api, receiver.url, "Observation")
    holder_ready, done = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [0x5B5D, str(api.org.pk)]
                )
                holder_ready.set()
                assert done.wait(30)
                cursor.execute("COMMIT")
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_ready.wait(30)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '300ms'")
        # Not watched: commits at once.
        with tenant_transaction(api.org.pk):
            get_store().create(api.org.pk, {"resourceType": "Patient"})
        # Watched: its commit waits for the lock (here: gives up after lock_timeout).
        with pytest.raises(Exception, match="lock timeout"), tenant_transaction(api.org.pk):
            get_store().create(api.org.pk, observation("1"))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        done.set()
        holder.join(30)


@pytest.mark.django_db(transaction=True)
def test_an_api_write_waiting_too_long_at_commit_answers_503(api, receiver, settings):  # noqa: F811
    subscribe(api, receiver.url, "Observation")
    settings.API_LOCK_TIMEOUT_MS = 300
    holder_ready, done = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [0x5B5D, str(api.org.pk)]
                )
                holder_ready.set()
                assert done.wait(30)
                cursor.execute("COMMIT")
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holder_ready.wait(30)
    try:
        response = api.post("Observation", observation("1"))
    finally:
        done.set()
        holder.join(30)
    assert response.status_code == 503, response.content
    assert response["Content-Type"].startswith("application/fhir+json")
    assert json.loads(api.get("Observation").content).get("entry", []) == []
