"""One request record per API request, refused ones included; never PHI; buffered in
memory, then Redis, then PostgreSQL, exactly once; purged after 90 days."""

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client, override_settings

from clinik.audit.models import AuditEvent
from clinik.gateway.ratelimit import known_keys, limiter
from clinik.usage import requestlog, store, tasks
from clinik.usage.models import DailyUsage, ErrorLog, HourlyUsage, RequestLog
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db

PATIENT = {"resourceType": "Patient", "name": [{"family": "Secretname", "given": ["Zebulon"]}]}
PHI = ("Zebulon", "Secretname", "1961-02-03", "MRN-998877")


@pytest.fixture(autouse=True)
def _fresh_usage_state() -> Iterator[None]:
    requestlog.buffer.clear()
    requestlog.redis_client().delete(store.BUFFER_KEY, store.DRAINING_KEY, store.TOKEN_KEY)
    limiter.reset()
    known_keys.clear()
    yield
    requestlog.buffer.clear()
    limiter.reset()
    known_keys.clear()


def drained() -> int:
    """What the beat jobs would do: this process's buffer to Redis, Redis to PostgreSQL."""
    requestlog.flush()
    return store.drain()


def rid() -> str:
    return "t-" + uuid.uuid4().hex


def only_record(request_id: str) -> RequestLog:
    rows = list(RequestLog.objects.filter(request_id=request_id))
    assert len(rows) == 1, (request_id, rows)
    return rows[0]


def test_each_kind_of_request_makes_exactly_one_record(api, owner) -> None:
    started = datetime.now(UTC)
    pid = api.post("Patient", PATIENT).json()["id"]
    cases: list[tuple[str, Any, int, str, str]] = []

    def run(label: str, call: Any, status: int, route: str, resource_type: str) -> None:
        request_id = rid()
        response = call({"X-Request-ID": request_id})
        assert response.status_code == status, (label, response.content)
        cases.append((request_id, response, status, route, resource_type))

    run(
        "read",
        lambda h: api.get(f"Patient/{pid}", headers=h),
        200,
        "/fhir/R4/Patient/{id}",
        "Patient",
    )
    run(
        "search",
        lambda h: api.get("Patient?family=Secretname&birthdate=1961-02-03", headers=h),
        200,
        "/fhir/R4/Patient",
        "Patient",
    )
    run(
        "create",
        lambda h: api.post("Patient", PATIENT, headers=h),
        201,
        "/fhir/R4/Patient",
        "Patient",
    )
    run(
        "update",
        lambda h: api.put(f"Patient/{pid}", {**PATIENT, "id": pid}, headers=h),
        200,
        "/fhir/R4/Patient/{id}",
        "Patient",
    )
    run(
        "vread",
        lambda h: api.get(f"Patient/{pid}/_history/1", headers=h),
        200,
        "/fhir/R4/Patient/{id}/_history/{vid}",
        "Patient",
    )
    run(
        "history",
        lambda h: api.get(f"Patient/{pid}/_history", headers=h),
        200,
        "/fhir/R4/Patient/{id}/_history",
        "Patient",
    )
    run(
        "missing",
        lambda h: api.get("Patient/does-not-exist", headers=h),
        404,
        "/fhir/R4/Patient/{id}",
        "Patient",
    )
    run(
        "wrong method",
        lambda h: api.send("POST", f"Patient/{pid}", PATIENT, headers=h),
        405,
        "/fhir/R4/Patient/{id}",
        "Patient",
    )
    run(
        "delete",
        lambda h: api.delete(f"Patient/{pid}", headers=h),
        204,
        "/fhir/R4/Patient/{id}",
        "Patient",
    )
    anonymous = Client()
    run(
        "metadata",
        lambda h: anonymous.get("/fhir/R4/metadata", headers=h),
        200,
        "/fhir/R4/metadata",
        "",
    )
    run(
        "no key",
        lambda h: anonymous.get("/fhir/R4/Patient?name=Zebulon", headers=h),
        401,
        "/fhir/R4/Patient",
        "Patient",
    )
    run("unknown type", lambda h: api.get("Zebulon/123", headers=h), 404, requestlog.UNROUTED, "")
    with override_settings(FHIR_MAX_BODY_BYTES=1024):
        run(
            "too large",
            lambda h: api.post("Patient", {**PATIENT, "x": "y" * 2000}, headers=h),
            413,
            "/fhir/R4/Patient",
            "Patient",
        )

    assert drained() >= len(cases)
    for request_id, response, status, route, resource_type in cases:
        record = only_record(request_id)
        assert (record.status, record.route, record.resource_type) == (status, route, resource_type)
        assert record.method == response.wsgi_request.method
        assert started - timedelta(seconds=1) <= record.time <= datetime.now(UTC)
        assert 0 < record.latency_us < 60_000_000
        assert record.response_bytes == len(response.content)
        assert "?" not in record.route and pid not in record.route
        if status in (401,) or route == "/fhir/R4/metadata":
            assert (record.org_id, record.key_id) == (None, None)
        else:
            assert record.org_id == owner.org.pk and record.key_id is not None
        errors = ErrorLog.objects.filter(request_id=request_id)
        assert errors.count() == (1 if status >= 400 else 0)


@override_settings(RATE_LIMIT_KEY_REQUESTS=2)
def test_rate_limited_requests_are_logged_against_their_key(api, owner) -> None:
    statuses = [
        api.get("Patient", headers={"X-Request-ID": f"burst-{i}-xyz"}).status_code for i in range(4)
    ]
    assert statuses[-1] == 429
    drained()
    throttled = RequestLog.objects.get(request_id="burst-3-xyz")
    assert throttled.status == 429 and throttled.org_id == owner.org.pk
    error = ErrorLog.objects.get(request_id="burst-3-xyz")
    assert (error.error_class, error.message) == (
        "OperationOutcome:throttled",
        "429 Too Many Requests (throttled)",
    )
    errors = HourlyUsage.objects.get(org_id=owner.org.pk, dim="error", status=429)
    assert errors.requests == statuses.count(429)
    assert HourlyUsage.objects.get(org_id=owner.org.pk, dim="all").throttled == statuses.count(429)


def test_error_log_keeps_a_phi_free_message(api) -> None:
    api.get("Patient/Secretname-1961", headers={"X-Request-ID": "missing-one"})
    drained()
    error = ErrorLog.objects.get(request_id="missing-one")
    assert (error.status, error.route, error.error_class, error.message) == (
        404,
        "/fhir/R4/Patient/{id}",
        "OperationOutcome:not-found",
        "404 Not Found (not-found)",
    )


@pytest.mark.urls("tests.test_request_log_urls")
def test_server_errors_are_logged_and_audited_without_the_message(api, owner, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    api.client.raise_request_exception = False
    response = api.send("POST", "Patient/p1/$crash", {}, headers={"X-Request-ID": "crash-one"})
    assert response.status_code == 500
    drained()
    assert only_record("crash-one").route == "/fhir/R4/Patient/{id}/$crash"
    error = ErrorLog.objects.get(request_id="crash-one")
    assert (error.error_class, error.message) == ("ZeroDivisionError", "500 Internal Server Error")
    event = AuditEvent.objects.get(request_id="crash-one")
    assert (event.action, event.outcome, event.target_type, event.target_id) == (
        "fhir.operation",
        "failure",
        "Patient",
        "p1",
    )
    assert "Secretname" not in caplog.text and "ZeroDivisionError" in caplog.text


def test_phi_planted_everywhere_reaches_no_record_log_line_or_export(api, owner, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"X-Patient-Name": "Zebulon Secretname", "Referer": "https://x/?mrn=MRN-998877"}
    pid = api.post("Patient", {**PATIENT, "birthDate": "1961-02-03"}, headers=headers).json()["id"]
    api.get("Patient?family=Secretname&birthdate=1961-02-03&identifier=MRN-998877", headers=headers)
    api.get(f"Patient/{pid}?_elements=Zebulon", headers=headers)
    api.send(
        "POST",
        "Patient/_search",
        "family=Secretname",
        headers=headers,
        content_type="application/x-www-form-urlencoded",
    )
    api.get("Patient?birthdate=not-a-date-Zebulon", headers=headers)
    Client().get("/fhir/R4/Patient?family=Secretname", headers=headers)
    requestlog.flush()
    buffered = b"".join(
        item if isinstance(item, bytes) else item.encode()
        for item in requestlog.redis_client().lrange(store.BUFFER_KEY, 0, -1)
    )
    store.drain()
    owner_client = owner.client()
    exports = [
        owner_client.get(f"/o/{owner.org.pk}/usage/requests.csv?range=24h").getvalue(),
        *(
            owner_client.get(f"/o/{owner.org.pk}/audit/export/?format={fmt}").getvalue()
            for fmt in ("csv", "ndjson", "fhir")
        ),
    ]
    with connection.cursor() as cursor:
        dumps = []
        for table in (
            "usage_requestlog",
            "usage_errorlog",
            "usage_hourlyusage",
            "audit_auditevent",
        ):
            cursor.execute(f"SELECT * FROM {table}")  # noqa: S608
            dumps.append(json.dumps(cursor.fetchall(), default=str))
    haystacks = [buffered.decode(), *dumps, caplog.text, *(e.decode() for e in exports)]
    for needle in PHI:
        for haystack in haystacks:
            assert needle not in haystack


def test_redis_down_writes_straight_to_postgres(api, settings, caplog) -> None:
    settings.USAGE_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    for i in range(5):
        api.get("Patient", headers={"X-Request-ID": f"no-redis-{i}"})
    assert requestlog.flush() == 5
    assert RequestLog.objects.filter(request_id__startswith="no-redis-").count() == 5
    assert "Redis failed" in caplog.text


def test_a_full_buffer_drops_its_oldest_records_and_counts_them(settings) -> None:
    settings.USAGE_BUFFER_MAX_RECORDS = 1000
    buffer = requestlog.Buffer()
    for i in range(1003):
        buffer.add(
            (time.time(), None, None, "GET", "/fhir/R4/metadata", "", 200, 1, 1, str(i), None, None)
        )
    assert len(buffer) == 1000 and buffer.dropped == 3
    assert buffer.take()[0][9] == "3"


def _records(n: int, when: datetime, org_id: Any = None) -> list[tuple[Any, ...]]:
    return [
        (
            when.timestamp(),
            str(org_id) if org_id else None,
            None,
            "GET",
            "/fhir/R4/Patient/{id}",
            "Patient",
            200,
            1500,
            10,
            f"r{i}-{when:%Y%m%d%H%M%S}",
            None,
            None,
        )
        for i in range(n)
    ]


def test_a_killed_drain_resumes_without_losing_or_repeating(owner) -> None:
    requestlog.push(_records(10, datetime.now(UTC), owner.org.pk))
    assert store.drain(chunk=3, max_chunks=2) == 6  # "killed" after two chunks
    assert store.pending() == 4
    requestlog.push(_records(2, datetime.now(UTC) - timedelta(hours=1), owner.org.pk))
    assert store.drain(chunk=3) == 6
    assert store.pending() == 0 and store.drain() == 0
    assert RequestLog.objects.filter(org_id=owner.org.pk).count() == 12
    assert (
        RequestLog.objects.filter(org_id=owner.org.pk).values("request_id").distinct().count() == 12
    )
    assert (
        sum(
            HourlyUsage.objects.filter(org_id=owner.org.pk, dim="all").values_list(
                "requests", flat=True
            )
        )
        == 12
    )
    daily = DailyUsage.objects.filter(org_id=owner.org.pk, dim="key").values_list(
        "requests", flat=True
    )
    assert sum(daily) == 12


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _plant_old_logs(org_id: Any) -> None:
    for days in (89, 91):
        when = NOW - timedelta(days=days)
        with time_machine.travel(when, tick=False):
            store.write_records(_records(3, when, org_id))
            store.write_records(
                [
                    (
                        when.timestamp(),
                        str(org_id),
                        None,
                        "GET",
                        "/fhir/R4/Patient/{id}",
                        "Patient",
                        404,
                        900,
                        10,
                        f"err-{days}",
                        "OperationOutcome:not-found",
                        "404 Not Found",
                    )
                ]
            )


def _days_left(org_id: Any) -> set[int]:
    times = RequestLog.objects.filter(org_id=org_id).values_list("time", flat=True)
    return {(NOW - t).days for t in times}


def test_purge_keeps_day_89_and_removes_day_91(owner) -> None:
    _plant_old_logs(owner.org.pk)
    assert _days_left(owner.org.pk) == {89, 91}
    with time_machine.travel(NOW, tick=False):
        counts = store.purge()
        assert counts["partitions"] >= 2  # day 91 of both log tables, dropped whole
        assert _days_left(owner.org.pk) == {89}
        assert list(
            ErrorLog.objects.filter(org_id=owner.org.pk).values_list("request_id", flat=True)
        ) == ["err-89"]
        buckets = HourlyUsage.objects.filter(org_id=owner.org.pk).values_list("bucket", flat=True)
        assert {(NOW - b).days for b in buckets} == {89}
        assert store.purge()["usage_requestlog"] == 0  # idempotent
        assert _days_left(owner.org.pk) == {89}
    day_91 = (NOW - timedelta(days=91)).strftime("%Y%m%d")
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [f"usage_requestlog_{day_91}"])
        assert cursor.fetchone()[0] is None


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_drains_and_purges(owner, real_worker) -> None:
    fresh = datetime.now(UTC) - timedelta(days=89)
    stale = datetime.now(UTC) - timedelta(days=91)
    with time_machine.travel(stale, tick=False):
        store.write_records(_records(4, stale, owner.org.pk))
    requestlog.push(_records(5, fresh, owner.org.pk))
    tasks.drain_request_logs.delay()
    org_rows = RequestLog.objects.filter(org_id=owner.org.pk)
    assert wait_for(lambda: org_rows.count() == 9, timeout=20)
    tasks.purge_request_logs.delay()
    assert wait_for(lambda: org_rows.count() == 5, timeout=20)
    assert not org_rows.filter(time__lt=datetime.now(UTC) - timedelta(days=90)).exists()
    RequestLog.objects.filter(org_id=owner.org.pk).delete()  # rows of managed=False tables stay


def test_rebuilt_rollups_equal_the_incremental_ones(owner) -> None:
    now = datetime.now(UTC)
    records = [
        (
            (now - timedelta(minutes=7 * i)).timestamp(),
            str(owner.org.pk),
            None,
            "GET",
            "/fhir/R4/Patient/{id}",
            "Patient",
            (200, 404, 500)[i % 3],
            50 * i + 100,
            i,
            f"rb-{i}",
            *((None, None) if i % 3 == 0 else ("X", "Y")),
        )
        for i in range(300)
    ]
    store.write_records(records)
    start = (now - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + timedelta(days=3)

    def snapshot() -> list[tuple[Any, ...]]:
        return [
            (
                r.dim,
                r.bucket,
                r.key_id,
                r.route,
                r.method,
                r.status,
                r.requests,
                r.client_errors,
                r.server_errors,
                r.response_bytes,
                r.latency_us_sum,
                tuple(r.hist),
            )
            for model in (HourlyUsage, DailyUsage)
            for r in model.objects.filter(org_id=owner.org.pk).order_by("bucket", "dim", "status")
        ]

    incremental = snapshot()
    assert store.rebuild_rollups(owner.org.pk, start, end) > 0
    assert snapshot() == incremental


def test_sql_with_phi_reaches_no_log_line_even_with_debug_on(api, caplog) -> None:
    """With DEBUG=true (as `make run` sets) and everything at DEBUG, Django's query log
    (django.db.backends, every statement with its parameters: search values, resource
    content) must not reach a handler; Django's own logging config stops the
    `django` loggers at INFO, and this keeps it so."""
    caplog.set_level(logging.DEBUG)
    with override_settings(DEBUG=True):
        api.post("Patient", PATIENT)
        api.get("Patient?family=Secretname")
    assert "secretname" not in caplog.text.lower()
