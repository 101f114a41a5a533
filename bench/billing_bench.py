"""Billing: the Stripe webhook endpoint's latency, and a month's overage report to the
meter for 10,000 organizations. Stripe is the local fake of the tests
(tests/stripe_fake.py), in a process of its own, on loopback.

    export DATABASE_URL=postgres://clinik@127.0.0.1:5432/clinik_bench \\
           DATABASE_OWNER_URL=postgres://clinik_owner@127.0.0.1:5432/clinik_bench
    make db && .venv/bin/python bench/billing_bench.py [--events 2000] [--orgs 10000]

1. Webhook: gunicorn (bench/gunicorn_conf.py, 1 worker, 4 threads) receives N signed
   events one after another on a keep-alive connection (new ids: verify, store, enqueue
   the Celery task to the Redis broker), then the same event N times (verify, refused
   by the unique id); client-side latency percentiles and server CPU per request.
2. Meters: 10,000 organizations on Developer (250,000 requests included) with hourly
   rollups for a 30-day month, 4 active hours a day; 20 % of them exceed the
   included amount mid-month. Timed: the claim (one SQL statement over the month's
   rollups) and sending every meter event (8 at a time), i.e. a whole month caught up
   in one run; the hourly job's steady state is one hour of it.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stripe_fake import SECRET_KEY, WEBHOOK_SECRET, sign  # noqa: E402

PY = sys.executable
FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tests.stripe_fake import FakeStripe
fake = FakeStripe().start()
print(fake.url, flush=True)
while True:
    time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_fake() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [PY, "-c", FAKE.format(root=str(ROOT))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def env_for(fake_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "true",
        "LOG_LEVEL": "WARNING",
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": fake_url,
    }


def cpu_seconds(pid: int) -> float:
    """CPU of a process and its children (gunicorn's master and workers)."""
    out = subprocess.run(
        ["ps", "-o", "cputimes=", "--ppid", str(pid), "-p", str(pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(sum(int(x) for x in out.split()))


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": round(pick(0.50) * 1000, 2),
        "p95_ms": round(pick(0.95) * 1000, 2),
        "p99_ms": round(pick(0.99) * 1000, 2),
        "mean_ms": round(statistics.mean(values) * 1000, 2),
    }


def webhook(events: int, fake_url: str) -> dict[str, object]:
    port = free_port()
    env = {**env_for(fake_url), "WEB_CONCURRENCY": "1", "WEB_THREADS": "4"}
    server = subprocess.Popen(
        [
            PY,
            "-m",
            "gunicorn",
            "clinik.wsgi",
            "--config",
            "bench/gunicorn_conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--access-logfile",
            "/dev/null",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port)

        def post(event: dict[str, object]) -> float:
            body = json.dumps(event).encode()
            started = time.perf_counter()
            conn.request(
                "POST",
                "/billing/stripe/webhook",
                body=body,
                headers={"Content-Type": "application/json", "Stripe-Signature": sign(body)},
            )
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            return time.perf_counter() - started

        def event() -> dict[str, object]:
            return {
                "id": f"evt_bench_{uuid.uuid4().hex}",
                "object": "event",
                "type": "customer.updated",
                "created": int(time.time()),
                "data": {"object": {"id": "cus_bench", "object": "customer"}},
            }

        for _ in range(50):  # warm-up
            post(event())
        cpu0 = cpu_seconds(server.pid)
        fresh = [post(event()) for _ in range(events)]
        cpu1 = cpu_seconds(server.pid)
        same = event()
        post(same)
        duplicates = [post(same) for _ in range(events)]
        return {
            "new_events": percentiles(fresh),
            "duplicates": percentiles(duplicates),
            "server_cpu_ms_per_new_event": round((cpu1 - cpu0) * 1000 / events, 2),
            "events_per_second_one_client": round(events / sum(fresh), 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=60)


def meters(orgs: int, fake_url: str, claim_only: bool = False) -> dict[str, object]:
    os.environ.update(env_for(fake_url))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
    import django

    django.setup()
    from datetime import timedelta

    from django.db import connection
    from django.utils import timezone

    from clinik.billing import meters as billing_meters
    from clinik.billing.models import MeterReport, Plan

    month = billing_meters.month_start(timezone.now() - timedelta(days=40))
    plan = Plan.objects.get(slug="developer")
    Plan.objects.filter(pk=plan.pk).update(stripe_price_id="price_developer")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM billing_meterreport")
        cursor.execute("DELETE FROM usage_hourlyusage WHERE route = 'bench-billing'")
        cursor.execute("DELETE FROM billing_account WHERE stripe_customer_id LIKE 'cus_bench_%%'")
        cursor.execute("DELETE FROM accounts_organization WHERE name LIKE 'billing-bench %%'")
        cursor.execute(
            "CREATE TEMP TABLE bench_orgs AS SELECT gen_random_uuid() AS id, i"
            " FROM generate_series(1, %s) i",
            [orgs],
        )
        cursor.execute(
            "INSERT INTO accounts_organization (id, name, status, created_at)"
            " SELECT id, 'billing-bench ' || i, 'active', now() FROM bench_orgs"
        )
        cursor.execute(
            "INSERT INTO billing_account (org_id, plan_id, stripe_customer_id,"
            " stripe_subscription_id, subscription_status, billing_email, updated_at)"
            " SELECT id, %s, 'cus_bench_' || i, 'sub_bench_' || i, 'active', '', now()"
            " FROM bench_orgs",
            [plan.pk],
        )
        # 4 active hours a day for 30 days; one org in five makes 3,000 requests an
        # hour (360,000 a month: it crosses 250,000 on day 21), the others 100.
        cursor.execute(
            "INSERT INTO usage_hourlyusage (org_id, dim, bucket, key_id, route, method,"
            " status, requests, client_errors, server_errors, throttled, response_bytes,"
            " latency_us_sum, hist)"
            " SELECT o.id, 'all', %s + make_interval(hours => d * 24 + h), NULL,"
            " 'bench-billing', '', 0, CASE WHEN o.i %% 5 = 0 THEN 3000 ELSE 100 END,"
            " 0, 0, 0, 0, 0, '{}'"
            " FROM bench_orgs o, generate_series(0, 29) d, unnest(ARRAY[9, 12, 15, 18]) h",
            [month],
        )
        cursor.execute("SELECT count(*) FROM usage_hourlyusage WHERE route = 'bench-billing'")
        (rows,) = cursor.fetchone()
    loaded = time.perf_counter() - started
    as_of = month + timedelta(days=30)  # the 30 days loaded (October has 31)
    t0 = time.perf_counter()
    claimed = billing_meters.claim(as_of)
    t1 = time.perf_counter()
    sent = 0 if claim_only else billing_meters.send()
    t2 = time.perf_counter()
    total = sum(MeterReport.objects.values_list("quantity", flat=True))
    return {
        "organizations": orgs,
        "rollup_rows": rows,
        "load_seconds": round(loaded, 1),
        "claim_seconds": round(t1 - t0, 2),
        "meter_events": claimed,
        "send_seconds": round(t2 - t1, 1),
        "events_per_second": round(sent / (t2 - t1), 1) if sent else None,
        "month_total_seconds": round(t2 - t0, 1),
        "overage_requests_reported": int(total),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--skip-webhook", action="store_true")
    parser.add_argument("--claim-only", action="store_true", help="do not send the events")
    args = parser.parse_args()
    fake, url = start_fake()
    try:
        result: dict[str, object] = {"load_average": os.getloadavg()}
        if not args.skip_webhook:
            result["webhook"] = webhook(args.events, url)
        result["meters"] = meters(args.orgs, url, args.claim_only)
        result["load_average_after"] = os.getloadavg()
        print(json.dumps(result, indent=2))
    finally:
        fake.kill()


if __name__ == "__main__":
    main()
