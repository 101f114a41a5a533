"""A connection killed in the middle of a transaction bundle commits nothing."""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.db import connection

from clinik.fhir.tenancy import tenant_transaction
from tests.synthea import patient_bundle


@pytest.mark.django_db(transaction=True)
def test_killed_connection_mid_transaction_commits_nothing(live_server, owner) -> None:
    from tests.conftest import _api_for

    key = _api_for(owner).key
    body = json.dumps(patient_bundle(1000, seed=7)).encode()
    outcome: dict[str, object] = {}

    def post() -> None:
        request = urllib.request.Request(
            f"{live_server.url}/fhir/R4/",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                outcome["status"] = response.status
        except urllib.error.HTTPError as error:
            outcome["status"] = error.code

    sender = threading.Thread(target=post)
    sender.start()
    killed = None
    with connection.cursor() as cursor:
        deadline = time.monotonic() + 60
        while killed is None and time.monotonic() < deadline and sender.is_alive():
            # The server's backend once it has written inside its open transaction.
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
            )
            row = cursor.fetchone()
            if row:
                cursor.execute("SELECT pg_terminate_backend(%s)", [row[0]])
                killed = row[0]
            else:
                time.sleep(0.01)
    sender.join(timeout=120)
    assert killed is not None, "the transaction finished before it could be killed"
    assert outcome.get("status") != 200
    with tenant_transaction(owner.org.pk), connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM fhir_resource")
        assert cursor.fetchone()[0] == 0
        cursor.execute("SELECT count(*) FROM fhir_history")
        assert cursor.fetchone()[0] == 0
