"""clinik.lib.pgbackend: lazy BEGIN, deferred writes, one-round-trip tenant reads, and a
health check without a round trip. Every test runs against the real server with real
transactions (transaction=True), since the point is what reaches PostgreSQL when."""

from typing import Any

import psycopg
import pytest
from django.db import IntegrityError, connection, transaction

from clinik.fhir.tenancy import tenant_query, tenant_transaction
from clinik.gateway.ratelimit import known_keys
from clinik.lib.db import defer, send_ahead
from clinik.lib.pgbackend.base import round_trips
from tests.conftest import Api, Persona

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def scratch() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE scratch (n int PRIMARY KEY)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS scratch")


def trips() -> int:
    connection.ensure_connection()
    return round_trips(connection.connection)


def rows() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT n FROM scratch ORDER BY n")
        return [r[0] for r in cursor.fetchall()]


def status() -> psycopg.pq.TransactionStatus:
    return connection.connection.info.transaction_status


def test_a_transaction_of_deferred_writes_is_one_round_trip(scratch: None) -> None:
    before = trips()
    with transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [1])
        defer("INSERT INTO scratch VALUES (%s)", [2])
        with transaction.atomic():  # a savepoint costs nothing either
            defer("INSERT INTO scratch VALUES (%s)", [3])
        assert trips() == before  # nothing sent yet
    assert trips() == before + 1  # BEGIN, three inserts, SAVEPOINT, RELEASE, COMMIT
    assert status() == psycopg.pq.TransactionStatus.IDLE
    assert rows() == [1, 2, 3]


def test_deferred_writes_are_seen_by_the_next_statement_of_their_transaction(
    scratch: None,
) -> None:
    with transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [7])
        before = trips()
        assert rows() == [7]
        assert trips() == before + 1  # they travelled with the SELECT
    assert rows() == [7]


def test_a_transaction_in_which_nothing_ran_sends_nothing() -> None:
    before = trips()
    with transaction.atomic(), transaction.atomic():
        pass
    assert trips() == before
    assert status() == psycopg.pq.TransactionStatus.IDLE


def test_rollback_discards_deferred_writes_sent_or_not(scratch: None) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [1])
        raise RuntimeError  # never sent
    with pytest.raises(RuntimeError), transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [2])
        assert rows() == [2]  # sent
        raise RuntimeError
    with transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [3])
        try:
            with transaction.atomic():
                defer("INSERT INTO scratch VALUES (%s)", [4])
                raise RuntimeError
        except RuntimeError:
            pass  # the savepoint rolls back 4, keeps 3
    assert rows() == [3]
    assert status() == psycopg.pq.TransactionStatus.IDLE


def test_a_failing_deferred_write_fails_the_commit_and_commits_nothing(scratch: None) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [1])
        defer("INSERT INTO scratch VALUES (%s)", [1])  # duplicate key, found at COMMIT
    assert status() == psycopg.pq.TransactionStatus.IDLE
    assert rows() == []
    with transaction.atomic():  # the connection goes on working
        defer("INSERT INTO scratch VALUES (%s)", [2])
    assert rows() == [2]


def test_writes_sent_ahead_run_while_python_goes_on_and_keep_their_order(
    scratch: None,
) -> None:
    """send_ahead: the queue leaves at once, nobody waits for it; the next statement
    reads its answer first and sees its rows (one round trip waited for in all)."""
    before = trips()
    with transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [1])
        send_ahead()
        assert connection.connection.clinik_in_flight
        defer("INSERT INTO scratch VALUES (%s)", [2])
        send_ahead()  # reads the first answer, sends the second
        with connection.cursor() as cursor:
            cursor.execute("SELECT array_agg(n ORDER BY n) FROM scratch")
            assert cursor.fetchone() == ([1, 2],)
        defer("INSERT INTO scratch VALUES (%s)", [3])
        send_ahead()  # answered at the COMMIT
    assert trips() - before == 2  # the SELECT and the COMMIT
    assert rows() == [1, 2, 3]
    assert not connection.connection.clinik_in_flight


def test_an_error_sent_ahead_fails_the_next_statement_and_commits_nothing(
    scratch: None,
) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        defer("INSERT INTO scratch VALUES (%s)", [1])
        defer("INSERT INTO scratch VALUES (%s)", [1])  # duplicate key
        send_ahead()
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    assert status() == psycopg.pq.TransactionStatus.IDLE
    assert rows() == []
    with pytest.raises(IntegrityError), transaction.atomic():  # ... or the COMMIT
        defer("INSERT INTO scratch VALUES (%s), (%s)", [2, 2])
        send_ahead()
    assert rows() == []
    with pytest.raises(RuntimeError), transaction.atomic():  # a rollback discards it
        defer("INSERT INTO scratch VALUES (%s), (%s)", [3, 3])
        send_ahead()
        raise RuntimeError("the view failed")
    assert status() == psycopg.pq.TransactionStatus.IDLE
    with transaction.atomic():  # the connection goes on working
        defer("INSERT INTO scratch VALUES (%s)", [4])
        send_ahead()
    assert rows() == [4]


def test_outside_a_transaction_a_deferred_write_runs_at_once(scratch: None) -> None:
    defer("INSERT INTO scratch VALUES (%s)", [5])
    with psycopg.connect(_url()) as other:  # committed: another session sees it
        assert other.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'")
    assert rows() == [5]


def test_values_with_percent_signs_and_quotes_survive_the_query_string(scratch: None) -> None:
    value = "100% O'Brien; DROP TABLE scratch; --"
    with transaction.atomic():
        defer("SELECT set_config('clinik.probe', %s, true)", [value])
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('clinik.probe'), '50%%'", [])
            assert cursor.fetchone() == (value, "50%")
            cursor.execute("SELECT '%s literal'")  # no parameters: no placeholder either
            assert cursor.fetchone() == ("%s literal",)


def test_named_cursors_work_inside_a_lazy_transaction(scratch: None) -> None:
    with transaction.atomic():
        for n in range(5):
            defer("INSERT INTO scratch VALUES (%s)", [n])
        cursor = connection.chunked_cursor()
        cursor.execute("SELECT n FROM scratch ORDER BY n")
        assert [r[0] for r in cursor.fetchmany(10)] == [0, 1, 2, 3, 4]
        cursor.close()


def test_tenant_query_is_one_round_trip_and_the_setting_ends_with_it(owner: Persona) -> None:
    before = trips()
    assert tenant_query(owner.org.pk, "SELECT current_setting('clinik.org_id')", []) == [
        (str(owner.org.pk),)
    ]
    assert trips() == before + 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('clinik.org_id', true)")
        assert cursor.fetchone()[0] in (None, "")
    with tenant_transaction(owner.org.pk):  # inside a transaction it joins it
        assert tenant_query(owner.org.pk, "SELECT current_setting('clinik.org_id')", []) == [
            (str(owner.org.pk),)
        ]


def test_api_read_and_create_round_trips(api: Api) -> None:
    """Through the full middleware stack, with a key this process knows (not looked up
    again: clinik.keys.recheck): a read is one round trip (tenant, key check, row and
    audit row); a create is one (BEGIN, tenant, key check, resource with history,
    index rows, audit row, COMMIT); a search is two (BEGIN, tenant, key check, the
    search; audit row, COMMIT); a key not known yet adds its lookup."""
    created = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Trips"}]})
    assert created.status_code == 201  # and the key's last use is recorded
    known_keys.clear()
    before = trips()
    assert api.post("Patient", {"resourceType": "Patient"}).status_code == 201
    assert trips() - before == 2
    before = trips()
    assert api.post("Patient", {"resourceType": "Patient"}).status_code == 201
    assert trips() - before == 1
    before = trips()
    assert api.get("Patient?family=Trips").json()["total"] == 1
    assert trips() - before == 2
    before = trips()
    assert api.get(f"Patient/{created.json()['id']}").status_code == 200
    assert trips() - before == 1
    before = trips()
    assert api.get("Patient/missing").status_code == 404
    assert trips() - before == 1
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT target_id, outcome FROM audit_auditevent WHERE action = 'fhir.read' ORDER BY id"
        )
        assert cursor.fetchall() == [(created.json()["id"], "success"), ("missing", "failure")]


def test_the_health_check_sees_a_terminated_connection_without_a_round_trip() -> None:
    connection.ensure_connection()
    before = trips()
    assert connection.is_usable()
    assert trips() == before  # a quiet socket: no SELECT 1
    pid = connection.connection.info.backend_pid
    with psycopg.connect(_url(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
    _wait_readable(connection.connection)
    assert not connection.is_usable()
    connection.close()
    with connection.cursor() as cursor:  # a new connection
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def _wait_readable(session: Any) -> None:
    import select

    select.select([session.fileno()], [], [], 5)


def _url() -> str:
    s = connection.settings_dict
    return f"postgresql://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def test_a_transaction_bundle_is_one_round_trip_and_stores_text_exactly(api: Api) -> None:
    """A transaction of creates by a key this process knows: one round trip (BEGIN,
    tenant, key check, resources with history, index rows, audit rows, COMMIT), the
    content byte for byte
    what a read returns, one audit row per created resource."""
    names = ['O\u2019Brien "quoted" \\ back', "100% \U0001f600", "semi; colon -- dash"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{n}",
                "resource": {"resourceType": "Patient", "name": [{"family": name}]},
                "request": {"method": "POST", "url": "Patient"},
            }
            for n, name in enumerate(names)
        ]
        + [
            {
                "resource": {
                    "resourceType": "RiskAssessment",
                    "status": "final",
                    "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"},
                    "prediction": [{"probabilityRange": {"low": {"value": 5}}}],
                },
                "request": {"method": "POST", "url": "RiskAssessment"},
            }
        ],
    }
    api.get("Patient/warm-up")  # the key's first use (last_used_at) is not this request's
    before = trips()
    response = api.post("", bundle)
    assert response.status_code == 200, response.content
    assert trips() - before == 1
    locations = [e["response"]["location"] for e in response.json()["entry"]]
    for name, location in zip(names, locations, strict=False):
        read = api.get(location.split("/_history")[0])
        assert read.json()["name"] == [{"family": name}]
    found = api.get("Patient", data={"family": names[0][:7]}).json()
    assert found["total"] == 1, found
    risk = api.get(locations[3].split("/_history")[0]).json()
    assert risk["subject"]["reference"] == locations[0].split("/_history")[0]
    # An open range [5, ∞): its missing bound travelled as JSON null, stored as infinity.
    assert api.get("RiskAssessment", data={"probability": "gt1000"}).json()["total"] == 1
    assert api.get("RiskAssessment", data={"probability": "lt1"}).json()["total"] == 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT target_type, target_id FROM audit_auditevent"
            " WHERE action = 'fhir.create' ORDER BY id"
        )
        assert cursor.fetchall() == [
            (location.split("/")[0], location.split("/")[1]) for location in locations
        ]
