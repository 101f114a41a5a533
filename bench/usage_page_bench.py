"""The Usage page at volume: 10 million request records for one organization.

    .venv/bin/python bench/usage_page_bench.py [--rows 10000000] [--runs 15]

Uses its own database (clinik_usage_bench, created and migrated here), loads the
rows with one INSERT ... SELECT generate_series (90 days, 12 routes, 3 keys, a
realistic status mix, log-normal latencies), builds the rollups from them with
`store.rebuild_rollups`, then renders every range of the Usage page, the request
log table (first and a deep page) and the errors view through Django's test client
as a signed-in member, and prints the median and p95 wall time of each. DEBUG=true
as under `make run`; Django's per-query debug bookkeeping is switched off for the
timed requests.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB = "clinik_usage_bench"
os.environ.setdefault("DATABASE_URL", f"postgres://clinik@127.0.0.1:5432/{DB}")
os.environ.setdefault("DATABASE_OWNER_URL", f"postgres://clinik_owner@127.0.0.1:5432/{DB}")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
os.environ.setdefault("DEBUG", "true")  # like `make run` (and the local server has no TLS)
os.environ.setdefault("LOG_LEVEL", "WARNING")
sys.path.insert(0, str(ROOT))

ROUTES = [
    ("GET", "/fhir/R4/Patient/{id}", "Patient"),
    ("GET", "/fhir/R4/Patient", "Patient"),
    ("POST", "/fhir/R4/Patient", "Patient"),
    ("PUT", "/fhir/R4/Patient/{id}", "Patient"),
    ("GET", "/fhir/R4/Observation", "Observation"),
    ("GET", "/fhir/R4/Observation/{id}", "Observation"),
    ("POST", "/fhir/R4/Observation", "Observation"),
    ("GET", "/fhir/R4/Encounter/{id}", "Encounter"),
    ("GET", "/fhir/R4/Encounter", "Encounter"),
    ("DELETE", "/fhir/R4/Patient/{id}", "Patient"),
    ("GET", "/fhir/R4/Patient/{id}/_history", "Patient"),
    ("GET", "/fhir/R4/metadata", ""),
]

LOAD_SQL = """
INSERT INTO usage_requestlog (time, org_id, key_id, method, route, resource_type, status,
                              latency_us, response_bytes, request_id)
SELECT %(end)s::timestamptz - (i * %(span)s::double precision / %(rows)s) * interval '1 second',
       %(org)s::uuid,
       (%(keys)s::bigint[])[1 + (i %% 3)],
       (%(methods)s::text[])[r],
       (%(routes)s::text[])[r],
       (%(types)s::text[])[r],
       CASE WHEN h < 900 THEN 200 WHEN h < 930 THEN 201 WHEN h < 960 THEN 404
            WHEN h < 975 THEN 400 WHEN h < 985 THEN 429 WHEN h < 995 THEN 401 ELSE 500 END,
       (300 + exp(random() * 6) * 200)::int,
       (200 + (i %% 4000))::bigint,
       md5(i::text)
  FROM generate_series(1::bigint, %(rows)s::bigint) AS i,
       LATERAL (SELECT 1 + (i * 7919 %% %(nroutes)s) AS r, (i * 104729) %% 1000 AS h) AS pick
"""


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "DEBUG": "true"})


def timed(client, url: str, runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    client.get(url)  # warm
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
        "max_ms": round(times[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--reuse", action="store_true", help="keep the loaded rows if present")
    args = parser.parse_args()
    run([sys.executable, "-m", "clinik.lib.services", "bootstrap"])
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "DEBUG": "true", "CLINIK_DB_AS_OWNER": "1"},
    )

    import django

    django.setup()
    from django.db import connection
    from django.test import Client

    from clinik.accounts.models import Membership, Organization, User
    from clinik.keys.models import ApiKey
    from clinik.usage import store

    user = User.objects.filter(email="usage-bench@example.com").first()
    if user is None or not args.reuse:
        Organization.objects.filter(name="Usage bench").delete()
        User.objects.filter(email="usage-bench@example.com").delete()
        user = User.objects.create_user(email="usage-bench@example.com", password="x" * 12)
        org = Organization.objects.create(name="Usage bench")
        Membership.objects.create(user=user, org=org, role="owner")
        keys = [
            ApiKey.issue(
                org=org, name=f"key {i}", scopes="read-write", expires_at=None, created_by=user
            )[0].pk
            for i in range(3)
        ]
    org = Membership.objects.get(user=user).org
    keys = list(ApiKey.objects.filter(org=org).values_list("pk", flat=True))
    end = datetime.now(UTC)
    span = timedelta(days=89, hours=23)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_requestlog WHERE org_id = %s", [org.pk])
        have = cursor.fetchone()[0]
    load_s = rollup_s = 0.0
    if have != args.rows:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM usage_requestlog WHERE org_id = %s", [org.pk])
            store.ensure_partitions((end - span).date(), end.date())
            start = time.perf_counter()
            cursor.execute(
                LOAD_SQL,
                {
                    "end": end,
                    "span": span.total_seconds(),
                    "rows": args.rows,
                    "org": str(org.pk),
                    "keys": keys,
                    "methods": [m for m, _, _ in ROUTES],
                    "routes": [r for _, r, _ in ROUTES],
                    "types": [t for _, _, t in ROUTES],
                    "nroutes": len(ROUTES),
                },
            )
            load_s = time.perf_counter() - start
            cursor.execute("ANALYZE usage_requestlog")
        start = time.perf_counter()
        first_day = (end - span).replace(hour=0, minute=0, second=0, microsecond=0)
        store.rebuild_rollups(org.pk, first_day, end + timedelta(days=1))
        rollup_s = time.perf_counter() - start
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE usage_hourlyusage")
            cursor.execute("ANALYZE usage_dailyusage")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM usage_requestlog WHERE org_id = %s", [org.pk])
        rows = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM usage_hourlyusage WHERE org_id = %s", [org.pk])
        hourly = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM usage_dailyusage WHERE org_id = %s", [org.pk])
        daily = cursor.fetchone()[0]
    connection.force_debug_cursor = False
    from django.conf import settings

    settings.DEBUG = False  # no query log kept per request while timing
    client = Client()
    client.force_login(user)
    base = f"/o/{org.pk}/usage/"
    results = {}
    for label, url in (
        ("page 24h", f"{base}?range=24h"),
        ("page 7d", f"{base}?range=7d"),
        ("page 30d", f"{base}?range=30d"),
        ("page 90d", f"{base}?range=90d"),
        ("htmx 90d", f"{base}?range=90d"),
        ("requests 24h", f"{base}requests/?range=24h"),
        ("requests 90d 5xx", f"{base}requests/?range=90d&status=5xx"),
        ("errors 7d", f"{base}errors/?range=7d"),
    ):
        headers = {"HX-Request": "true"} if label.startswith("htmx") else {}
        client.defaults.update(
            {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
        )
        results[label] = timed(client, url, args.runs)
        for k in headers:
            client.defaults.pop(f"HTTP_{k.upper().replace('-', '_')}", None)
    print(f"request records: {rows:,}  hourly rollup rows: {hourly:,}  daily: {daily:,}")
    if load_s:
        print(f"load (generate_series): {load_s:.0f} s  rollup rebuild: {rollup_s:.0f} s")
    print(f"{'view':<20} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for label, r in results.items():
        print(f"{label:<20} {r['median_ms']:>10} {r['p95_ms']:>8} {r['max_ms']:>8}")
    print(json.dumps({"rows": rows, "hourly": hourly, "daily": daily, "results": results}))


if __name__ == "__main__":
    main()
