"""Billing: the Stripe webhook endpoint's latency, and a month's overage report to the
meter for 10,000 organizations. Stripe is the local fake of the tests
(tests/stripe_fake.py), in a process of its own, on loopback.

    export DATABASE_URL=postgres://clinik@127.0.0.1:5432/clinik_bench \\
           DATABASE_OWNER_URL=postgres://clinik_owner@127.0.0.1:5432/clinik_bench
    make db && .venv/bin/python bench/billing_bench.py [--events 2000] [--orgs 10000] \
        [--baseline DIR] [--v1-seconds 60]

1. Webhook: the production server (`python -m clinik.serve`, granian; --gunicorn for
   bench/gunicorn_conf.py as in the first pass), 1 worker x 4 threads, receives signed
   events one after another on a keep-alive connection (new ids: verify, store, enqueue
   the Celery task to the Redis broker), then the same event again and again (verify,
   refused by the unique id); client-side latency percentiles and the server's CPU per
   event (/proc, main process + worker). With --baseline DIR (a checkout of another commit,
   e.g. `git archive <commit> | tar -x -C DIR`, with its clinik/fhir/definitions and
   var/fhir), a second server runs that code on the same database, and the two are
   measured alternately, in rounds of 250 events (A/B/A/B...), so the load of the
   machine weighs on both alike.
2. Meters: 10,000 organizations on Developer (250,000 requests included) with hourly
   rollups for a 30-day month, 4 active hours a day; 20 % of them exceed the
   included amount mid-month. Timed: the claim (one SQL statement over the month's
   rollups), then sending every meter event on Stripe's v2 meter event stream (100 a
   request, 4 requests at once), i.e. a whole month caught up in one run; the hourly
   job's steady state is one hour of it. Then the local Stripe's totals are compared
   with the ledger. Before it, for comparison, the previous way (one v1 API call per
   event, 8 at a time) runs for --v1-seconds against another local Stripe, and its
   rate gives the month's time by extrapolation (0 skips it).
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.stripe_fake import SECRET_KEY, WEBHOOK_SECRET, sign  # noqa: E402

PY = sys.executable
FAKE = """
import sys, time
sys.path.insert(0, {root!r})
from tests.stripe_fake import FakeStripe
fake = FakeStripe().start()
fake.clock_offset = {clock_offset!r}
for i in range(1, {customers} + 1):
    fake.customers[f"cus_bench_{{i}}"] = {{"id": f"cus_bench_{{i}}", "object": "customer"}}
print(fake.url, fake.meter_url, flush=True)
while True:
    time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_fake(
    customers: int = 0, clock_offset: float = 0.0
) -> tuple[subprocess.Popen[str], str, str]:
    code = FAKE.format(root=str(ROOT), customers=customers, clock_offset=clock_offset)
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    api, meter = proc.stdout.readline().split()
    return proc, api, meter


def env_for(fake_url: str, meter_url: str = "") -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "true",
        "LOG_LEVEL": "WARNING",
        "STRIPE_SECRET_KEY": SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": fake_url,
        "STRIPE_METER_EVENTS_API_BASE": meter_url,
    }


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU (user + system) of a process and its children: the server's main and
    worker, from /proc in clock ticks (ps rounds to whole seconds)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for one in pids:
        fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": round(pick(0.50) * 1000, 2),
        "p95_ms": round(pick(0.95) * 1000, 2),
        "p99_ms": round(pick(0.99) * 1000, 2),
        "mean_ms": round(statistics.mean(values) * 1000, 2),
    }


def start_server(
    tree: Path, fake_url: str, gunicorn: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """The production server (`python -m clinik.serve`: granian), or gunicorn gthread
    as the first pass measured; 1 worker x 4 threads either way."""
    port = free_port()
    env = {
        **env_for(fake_url),
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "4",
        "BIND": f"127.0.0.1:{port}",
    }
    argv = [PY, "-m", "clinik.serve"]
    if gunicorn:
        argv = [PY, "-m", "gunicorn", "clinik.wsgi", "--config", "bench/gunicorn_conf.py"]
        argv += ["--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"]
    server = subprocess.Popen(
        argv, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return server, port


def event() -> dict[str, object]:
    return {
        "id": f"evt_bench_{uuid.uuid4().hex}",
        "object": "event",
        "type": "customer.updated",
        "created": int(time.time()),
        "data": {"object": {"id": "cus_bench", "object": "customer"}},
    }


class Target:
    """One server under test, its keep-alive client and what was measured."""

    def __init__(self, name: str, server: subprocess.Popen[bytes], port: int) -> None:
        self.name, self.server, self.port = name, server, port
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.fresh: list[float] = []
        self.duplicates: list[float] = []
        self.cpu = 0.0
        self.same = event()

    def post(self, body_of: dict[str, object]) -> float:
        body = json.dumps(body_of).encode()
        started = time.perf_counter()
        self.conn.request(
            "POST",
            "/billing/stripe/webhook",
            body=body,
            headers={"Content-Type": "application/json", "Stripe-Signature": sign(body)},
        )
        response = self.conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        return time.perf_counter() - started

    def round(self, events: int) -> None:
        # the server may have closed the keep-alive connection while the other ran
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port)
        self.post(event())  # not measured: opens the connection
        cpu0 = cpu_seconds(self.server.pid)
        self.fresh += [self.post(event()) for _ in range(events)]
        self.cpu += cpu_seconds(self.server.pid) - cpu0
        self.duplicates += [self.post(self.same) for _ in range(events // 5)]

    def result(self) -> dict[str, object]:
        return {
            "new_events": percentiles(self.fresh),
            "duplicates": percentiles(self.duplicates),
            "server_cpu_ms_per_new_event": round(self.cpu * 1000 / len(self.fresh), 2),
            "events_per_second_one_client": round(len(self.fresh) / sum(self.fresh), 1),
        }


def webhook(events: int, fake_url: str, baseline: Path | None, gunicorn: bool) -> dict[str, object]:
    targets: list[Target] = []
    try:
        trees = [("this tree", ROOT)] + ([("baseline", baseline)] if baseline else [])
        for name, tree in trees:
            targets.append(Target(name, *start_server(tree, fake_url, gunicorn)))
        for target in targets:  # warm-up
            for _ in range(50):
                target.post(event())
            target.post(target.same)
        per_round = 250
        for _ in range(max(1, events // per_round)):
            for target in targets:
                target.round(per_round)
        return {target.name: target.result() for target in targets}
    finally:
        for target in targets:
            target.server.terminate()
            target.server.wait(timeout=60)


def send_v1(seconds: float, concurrency: int = 8) -> tuple[int, float]:
    """The previous sender, for comparison: one v1 meter event API call per report
    (8 at a time), for at most `seconds`. Returns (events sent, seconds taken)."""
    from concurrent.futures import ThreadPoolExecutor

    from django.conf import settings

    from clinik.billing import stripe_api
    from clinik.billing.models import Account, MeterReport

    api = stripe_api.client().v1
    customers = dict(Account.objects.values_list("org_id", "stripe_customer_id"))

    def one(report: MeterReport) -> None:
        api.billing.meter_events.create(
            params={
                "event_name": settings.STRIPE_METER_EVENT_NAME,
                "identifier": report.identifier,
                "timestamp": int(report.hour.timestamp()),
                "payload": {
                    "stripe_customer_id": customers[report.org_id],
                    "value": str(report.quantity),
                },
            }
        )

    sent, started = 0, time.perf_counter()
    reports = iter(MeterReport.objects.order_by("pk").iterator(chunk_size=2000))
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        while time.perf_counter() - started < seconds:
            chunk = [r for _, r in zip(range(200), reports, strict=False)]
            if not chunk:
                break
            list(pool.map(one, chunk))
            sent += len(chunk)
    return sent, time.perf_counter() - started


def fake_meter(url: str) -> dict[str, int]:
    asked = urllib.request.Request(
        f"{url}/_fake/meter", headers={"Authorization": f"Bearer {SECRET_KEY}"}
    )
    with urllib.request.urlopen(asked, timeout=30) as answer:
        return dict(json.load(answer))


def meters(orgs: int, claim_only: bool, v1_seconds: float) -> dict[str, object]:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    month = (now - timedelta(days=40)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    as_of = month + timedelta(days=30)  # the 30 days loaded (October has 31)
    # Stripe takes events of the last 35 days: its clock says the month just ended.
    offset = as_of.timestamp() - now.timestamp()
    fakes = [start_fake(orgs, offset) for _ in range(2 if v1_seconds else 1)]
    try:
        return _meters(orgs, claim_only, v1_seconds, month, as_of, fakes)
    finally:
        for fake, _, _ in fakes:
            fake.kill()


def _meters(
    orgs: int,
    claim_only: bool,
    v1_seconds: float,
    month: Any,
    as_of: Any,
    fakes: list[tuple[subprocess.Popen[str], str, str]],
) -> dict[str, object]:
    _, api_url, meter_url = fakes[0]
    os.environ.update(env_for(api_url, meter_url))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    from clinik.billing import meters as billing_meters
    from clinik.billing.models import MeterReport, Plan

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
    t0 = time.perf_counter()
    claimed = billing_meters.claim(as_of)
    t1 = time.perf_counter()
    result: dict[str, object] = {
        "organizations": orgs,
        "rollup_rows": rows,
        "load_seconds": round(loaded, 1),
        "claim_seconds": round(t1 - t0, 2),
        "meter_events": claimed,
    }
    total = sum(MeterReport.objects.values_list("quantity", flat=True))
    result["overage_requests_claimed"] = int(total)
    if claim_only:
        return result
    if v1_seconds:
        _, v1_api, v1_meter = fakes[1]
        settings.STRIPE_API_BASE, settings.STRIPE_METER_EVENTS_API_BASE = v1_api, v1_meter
        sent, took = send_v1(v1_seconds)
        settings.STRIPE_API_BASE, settings.STRIPE_METER_EVENTS_API_BASE = api_url, meter_url
        rate = sent / took
        result["before_v1_one_call_per_event"] = {
            "events_sent": sent,
            "seconds": round(took, 1),
            "events_per_second": round(rate, 1),
            "month_send_seconds_extrapolated": round(claimed / rate, 1),
            "month_total_seconds_extrapolated": round(t1 - t0 + claimed / rate, 1),
        }
    cpu0, fake_cpu0 = time.process_time(), cpu_seconds(fakes[0][0].pid)
    t2 = time.perf_counter()
    sent = billing_meters.send()
    t3 = time.perf_counter()
    cpu, fake_cpu = time.process_time() - cpu0, cpu_seconds(fakes[0][0].pid) - fake_cpu0
    stripe_side = fake_meter(api_url)
    result["after_v2_stream"] = {
        "events_sent": sent,
        "send_seconds": round(t3 - t2, 1),
        "events_per_second": round(sent / (t3 - t2), 1) if sent else None,
        "sender_cpu_seconds": round(cpu, 1),
        "local_stripe_cpu_seconds": round(fake_cpu, 1),
        "month_total_seconds": round(t3 - t2 + t1 - t0, 1),
        "stripe_events_counted": stripe_side["events"],
        "stripe_total_equals_ledger": stripe_side["total"] == total,
        "stripe_dropped_events": stripe_side["errors"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--skip-webhook", action="store_true")
    parser.add_argument("--skip-meters", action="store_true")
    parser.add_argument("--claim-only", action="store_true", help="do not send the events")
    parser.add_argument("--baseline", type=Path, help="a checkout to compare the webhook with")
    parser.add_argument("--gunicorn", action="store_true", help="gunicorn instead of granian")
    parser.add_argument(
        "--v1-seconds", type=float, default=60, help="run the previous sender this long"
    )
    args = parser.parse_args()
    result: dict[str, object] = {"load_average": os.getloadavg()}
    if not args.skip_webhook:
        fake, url, _ = start_fake()
        try:
            result["webhook"] = webhook(args.events, url, args.baseline, args.gunicorn)
        finally:
            fake.kill()
        result["load_average_after_webhook"] = os.getloadavg()
    if not args.skip_meters:
        result["meters"] = meters(args.orgs, args.claim_only, args.v1_seconds)
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
