"""The Usage pages: overview with charts (server-rendered SVG), request log table
with filters and keyset paging, CSV of the current filter, errors; members only."""

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from clinik.usage import store
from tests.test_request_log import _fresh_usage_state, drained  # noqa: F401

pytestmark = pytest.mark.django_db


def _record(
    when: datetime, org: Any, status: int, route: str, rid: str, key: int | None = None
) -> tuple[Any, ...]:
    error = ("OperationOutcome:not-found", f"{status} Error") if status >= 400 else (None, None)
    return (
        when.timestamp(),
        str(org.pk),
        key,
        "GET",
        route,
        "Patient",
        status,
        2500,
        100,
        rid,
        *error,
    )


@pytest.fixture
def traffic(owner) -> list[tuple[Any, ...]]:
    now = datetime.now(UTC)
    records = [
        _record(now - timedelta(minutes=i), owner.org, 200, "/fhir/R4/Patient/{id}", f"ok-{i:03d}")
        for i in range(120)
    ]
    records += [_record(now - timedelta(hours=2), owner.org, 404, "/fhir/R4/Patient/{id}", "nf-1")]
    records += [_record(now - timedelta(hours=3), owner.org, 500, "/fhir/R4/Observation", "boom-1")]
    records += [_record(now - timedelta(hours=3), owner.org, 429, "/fhir/R4/Observation", "slow-1")]
    records += [_record(now - timedelta(days=10), owner.org, 200, "/fhir/R4/Encounter", "old-1")]
    store.write_records(records)
    return records


def test_overview_shows_charts_percentiles_routes_errors_and_keys(owner, traffic) -> None:
    response = owner.client().get(f"/o/{owner.org.pk}/usage/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count('<svg class="chart"') == 2 and "times in UTC" in html
    assert "/fhir/R4/Patient/{id}" in html and "/fhir/R4/Encounter" not in html  # 24 h
    summary = response.context["summary"]
    assert (summary.total, summary.client_errors, summary.server_errors, summary.throttled) == (
        123,
        2,
        1,
        1,
    )
    # Every request took 2.5 ms: the percentiles fall in that histogram bucket (2.26-3.2 ms).
    assert 2.26 <= summary.p50 <= summary.p95 <= summary.p99 <= 3.2
    assert " style=" not in html and "<script>" not in html  # CSP: no inline styles or scripts
    assert 'class="ok"' in html and 'class="c5"' in html


def test_ranges_switch_with_htmx_and_custom_ranges_work(owner, traffic) -> None:
    client = owner.client()
    partial = client.get(f"/o/{owner.org.pk}/usage/?range=30d", headers={"HX-Request": "true"})
    assert partial.status_code == 200 and b"<html" not in partial.content
    assert partial.context["summary"].total == 124 and partial.context["rng"].grain == "day"
    assert "HX-Request" in partial["Vary"]
    start = (datetime.now(UTC) - timedelta(days=11)).date()
    end = (datetime.now(UTC) - timedelta(days=9)).date()
    custom = client.get(f"/o/{owner.org.pk}/usage/?range=custom&start={start}&end={end}")
    assert custom.context["summary"].total == 1 and custom.context["rng"].grain == "hour"
    assert client.get(f"/o/{owner.org.pk}/usage/?range=bogus").context["rng"].key == "24h"


def test_request_log_filters_and_pages_by_keyset(owner, traffic) -> None:
    client = owner.client()
    base = f"/o/{owner.org.pk}/usage/requests/"
    first = client.get(base)
    ids = [row.request_id for row in first.context["page"].rows]
    assert ids[:3] == ["ok-000", "ok-001", "ok-002"] and len(ids) == 50
    found = re.search(r'href="\?([^"]*before=[^"]*)"', first.content.decode())
    assert found is not None
    older = found.group(1)
    second = client.get(f"{base}?{older.replace('&amp;', '&')}")
    assert next(r.request_id for r in second.context["page"].rows) == "ok-050"
    newer = second.context["page"].newer
    assert newer is not None
    assert [r.request_id for r in client.get(base, {"status": "5xx"}).context["page"].rows] == [
        "boom-1"
    ]
    assert [r.request_id for r in client.get(base, {"status": "429"}).context["page"].rows] == [
        "slow-1"
    ]
    assert [
        r.request_id for r in client.get(base, {"request_id": "nf-1"}).context["page"].rows
    ] == ["nf-1"]
    routes = (
        client.get(base, {"route": "/fhir/R4/Observation", "range": "24h"}).context["page"].rows
    )
    assert {r.request_id for r in routes} == {"boom-1", "slow-1"}
    assert not client.get(base, {"status": "abc"}).context["form"].is_valid()
    partial = client.get(base, {"status": "4xx"}, headers={"HX-Request": "true"})
    assert b'id="log-results"' in partial.content and b"<html" not in partial.content


def test_csv_export_contains_exactly_the_filtered_records(owner, traffic) -> None:
    response = owner.client().get(f"/o/{owner.org.pk}/usage/requests.csv", {"status": "4xx"})
    rows = list(csv.DictReader(io.StringIO(response.getvalue().decode())))
    assert sorted(r["request_id"] for r in rows) == ["nf-1", "slow-1"]
    assert set(rows[0]) >= {"time_utc", "method", "route", "status", "latency_ms", "key_id"}
    everything = owner.client().get(f"/o/{owner.org.pk}/usage/requests.csv", {"range": "90d"})
    assert len(everything.getvalue().decode().strip().splitlines()) == 1 + len(traffic)


def test_errors_view_groups_and_lists_errors(owner, traffic) -> None:
    response = owner.client().get(f"/o/{owner.org.pk}/usage/errors/")
    groups = {(g.status, g.route) for g in response.context["groups"]}
    assert groups == {
        (404, "/fhir/R4/Patient/{id}"),
        (500, "/fhir/R4/Observation"),
        (429, "/fhir/R4/Observation"),
    }
    assert {r.request_id for r in response.context["page"].rows} == {"nf-1", "boom-1", "slow-1"}
    assert "OperationOutcome:not-found" in response.content.decode()


def test_a_live_request_shows_up_after_the_drain(api, owner) -> None:
    api.get("Patient", headers={"X-Request-ID": "live-request-1"})
    drained()
    response = owner.client().get(
        f"/o/{owner.org.pk}/usage/requests/", {"request_id": "live-request-1"}
    )
    assert [r.route for r in response.context["page"].rows] == ["/fhir/R4/Patient"]
    assert response.context["page"].rows[0].key_name == "tests"


@pytest.mark.parametrize("path", ["", "requests/", "requests.csv", "errors/"])
def test_outsiders_get_404_and_wrong_methods_405(owner, outsider, traffic, path: str) -> None:
    url = f"/o/{owner.org.pk}/usage/{path}"
    assert outsider.client().get(url).status_code == 404
    assert owner.client().post(url).status_code == 405
    assert owner.client().get(url).status_code == 200


def test_outsiders_see_none_of_another_organizations_usage(owner, outsider, traffic) -> None:
    own = outsider.client().get(f"/o/{outsider.org.pk}/usage/?range=90d")
    assert own.context["summary"].total == 0
    rows = outsider.client().get(f"/o/{outsider.org.pk}/usage/requests/", {"range": "90d"})
    assert rows.context["page"].rows == []
    data = outsider.client().get(f"/o/{outsider.org.pk}/usage/requests.csv", {"range": "90d"})
    assert data.getvalue().decode().count("\n") == 1
