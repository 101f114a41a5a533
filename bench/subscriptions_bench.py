"""What FHIR Subscriptions cost a write, and how fast a notification arrives.

    DATABASE_URL=postgres://clinik@127.0.0.1:5432/clinik_<name> \
    DATABASE_OWNER_URL=postgres://clinik_owner@127.0.0.1:5432/clinik_<name> \
    REDIS_URL=redis://127.0.0.1:6379/<n> make db
    (same env) .venv/bin/python bench/subscriptions_bench.py [--posts 200] [--rounds 5]

1. Write cost, in process through the full middleware stack (django.test.Client),
   alternating rounds of --posts `POST Observation` for three organizations:
   `none` (no subscription; also a `no-trigger` round for it with the outbox trigger
   disabled through the owner role: the baseline before this feature), `other-type`
   (100 active subscriptions on Patient: the trigger's index probe finds none for
   Observation) and `non-matching` (100 active
   subscriptions on Observation whose criteria never match: every write also writes
   an outbox row). Median wall time and process CPU per POST, ratios to `no-trigger`.
1c. Commit order: --committers connections commit --commits one-row transactions of
   one organization (a watched type), rounds alternating with the commit-order trigger
   (migration 0004) disabled and enabled: commits per second and per commit.
   --skip-latency stops here.
2. Commit to delivery: a Celery worker with beat (the 1 s tick) and the
   `subscriptions_listen` waker (LISTEN/NOTIFY), as in the Procfile, and a receiver
   on 127.0.0.1; the part-1 organizations' subscriptions turned off first (idle);
   an organization with 1 matching and 99 non-matching subscriptions;
   --latency-posts POSTs, one every 0.3 s; latency = arrival at the
   receiver - the POST's response (its commit). Then a burst of --burst POSTs and the
   notifications per second until the last one arrives.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("USAGE_FLUSH_THREAD", "false")
os.environ.setdefault("RATE_LIMIT_KEY_REQUESTS", "1000000000")
os.environ.setdefault("RATE_LIMIT_ORG_REQUESTS", "1000000000")
os.environ.setdefault("RATE_LIMIT_IP_REQUESTS", "1000000000")

from bench.common import create_org  # noqa: E402

ARRIVALS: dict[str, float] = {}


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        now = time.monotonic()
        for entry in json.loads(body).get("entry", []):
            ARRIVALS.setdefault(entry["fullUrl"].rsplit("/", 1)[1], now)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def observation(code: str) -> str:
    return json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        }
    )


def subscription(endpoint: str, criteria: str) -> str:
    return json.dumps(
        {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "bench",
            "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": endpoint},
        }
    )


ORG_IDS: dict[str, str] = {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-posts", type=int, default=30)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--committers", type=int, default=4)
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    import django

    django.setup()
    from django.test import Client

    from clinik.subscriptions.dispatch import check_subscriptions

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/hook"
    stamp = str(int(time.time()))

    def client_for(name: str) -> Client:
        org = create_org(f"subs-bench-{name}-{stamp}", f"{name}-{stamp}@bench.test")
        ORG_IDS[name] = org["org_id"]
        return Client(HTTP_AUTHORIZATION=f"Bearer {org['api_key']}")

    def post(client: Client, path: str, body: str) -> Any:
        response = client.post(f"/fhir/R4/{path}", body, content_type="application/fhir+json")
        assert response.status_code == 201, response.content
        return response

    clients = {name: client_for(name) for name in ("none", "other-type", "non-matching")}
    for i in range(100):
        post(clients["other-type"], "Subscription", subscription(endpoint, f"Patient?name=x{i}"))
        post(
            clients["non-matching"],
            "Subscription",
            subscription(endpoint, f"Observation?code=http://x|never-{i}"),
        )
    check_subscriptions()

    # --- 1. write cost -----------------------------------------------------------
    for client in clients.values():  # warm up
        for _ in range(20):
            post(client, "Observation", observation("warm"))
    import psycopg

    owner = psycopg.connect(os.environ["DATABASE_OWNER_URL"], autocommit=True)

    def trigger(enabled: bool) -> None:
        verb = "ENABLE" if enabled else "DISABLE"
        owner.execute(f"ALTER TABLE fhir_history {verb} TRIGGER subscriptions_outbox")

    modes = ["no-trigger", *clients]
    wall: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    try:
        for _round in range(args.rounds):
            for name in modes:
                client = clients["none" if name == "no-trigger" else name]
                trigger(name != "no-trigger")
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(args.posts):
                    post(client, "Observation", observation("1234-5"))
                wall[name].append((time.perf_counter() - started) / args.posts * 1000)
                cpu[name].append((time.process_time() - cpu_started) / args.posts * 1000)
    finally:
        trigger(True)
    base_wall, base_cpu = (
        statistics.median(wall["no-trigger"]),
        statistics.median(cpu["no-trigger"]),
    )
    print(f"write cost: {args.rounds} alternating rounds of {args.posts} POST Observation")
    for name in modes:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(
            f"  {name:13s} {w:6.2f} ms/POST ({w / base_wall:5.1%} of no-trigger)"
            f"  CPU {c:5.2f} ms ({c / base_cpu:5.1%})  rounds: "
            + " ".join(f"{x:.2f}" for x in wall[name])
        )

    # --- 1b. the trigger alone, in SQL: 20,000 history rows per statement --------
    org_ids = {
        "none": ORG_IDS["none"],
        "other-type": ORG_IDS["other-type"],
        "non-matching": ORG_IDS["non-matching"],
    }
    sql_times: dict[str, list[float]] = {name: [] for name in ["no-trigger", *org_ids]}
    for _round in range(args.rounds):
        for name in sql_times:
            org_id = org_ids["none" if name == "no-trigger" else name]
            with owner.transaction(force_rollback=True):
                owner.execute("SELECT set_config('clinik.org_id', %s, true)", [org_id])
                if name == "no-trigger":
                    owner.execute("ALTER TABLE fhir_history DISABLE TRIGGER subscriptions_outbox")
                started = time.perf_counter()
                owner.execute(
                    "INSERT INTO fhir_history (org_id, resource_type, id, version_id,"
                    " last_updated, method, content) SELECT %s, 'Observation', 'b' || i, 1,"
                    " now(), 'create', '{}' FROM generate_series(1, 20000) i",
                    [org_id],
                )
                sql_times[name].append((time.perf_counter() - started) / 20000 * 1e6)
    print("trigger alone: INSERT of 20,000 fhir_history rows, rolled back, per row:")
    for name, values in sql_times.items():
        print(f"  {name:13s} {statistics.median(values):6.2f} us/row")

    # --- 1c. numbering at COMMIT (commit order): committed transactions --------------
    # --committers connections each commit --commits one-row transactions of the
    # non-matching organization (a watched type: an outbox row each), alternating
    # rounds with the commit-order trigger disabled and enabled. The trigger's lock
    # serializes one organization's commits from the trigger to the end of COMMIT.
    def commit_round(ordered: bool, tag: str) -> tuple[float, float]:
        verb = "ENABLE" if ordered else "DISABLE"
        owner.execute(
            f"ALTER TABLE subscriptions_outbox {verb} TRIGGER subscriptions_outbox_commit_order"
        )
        org_id = ORG_IDS["non-matching"]
        barrier = threading.Barrier(args.committers + 1)
        per_commit: list[float] = []

        def committer(n: int) -> None:
            with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
                barrier.wait()
                took = 0.0
                for i in range(args.commits):
                    started = time.perf_counter()
                    with conn.transaction():
                        conn.execute("SELECT set_config('clinik.org_id', %s, true)", [org_id])
                        conn.execute(
                            "INSERT INTO fhir_history (org_id, resource_type, id, version_id,"
                            " last_updated, method, content) VALUES (%s, 'Observation', %s, 1,"
                            " now(), 'create', '{}')",
                            [org_id, f"bench-c-{tag}-{n}-{i}"],
                        )
                    took += time.perf_counter() - started
                per_commit.append(took / args.commits * 1e6)

        threads = [threading.Thread(target=committer, args=(n,)) for n in range(args.committers)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        return args.committers * args.commits / elapsed, statistics.median(per_commit)

    commit_figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for round_ in range(args.rounds):
            for ordered in (False, True):
                commit_figures[ordered].append(commit_round(ordered, f"{round_}{int(ordered)}"))
    finally:
        owner.execute(
            "ALTER TABLE subscriptions_outbox ENABLE TRIGGER subscriptions_outbox_commit_order"
        )
        owner.execute("SELECT set_config('clinik.org_id', %s, false)", [ORG_IDS["non-matching"]])
        owner.execute("DELETE FROM fhir_history WHERE id LIKE 'bench-c-%%'")
        owner.execute("DELETE FROM subscriptions_outbox WHERE resource_id LIKE 'bench-c-%%'")
        owner.execute("SELECT set_config('clinik.org_id', '', false)")
    print(
        f"commit order: {args.committers} connections x {args.commits} one-row commits"
        " of one organization (watched type), median of rounds:"
    )
    for ordered, figures in commit_figures.items():
        rate = statistics.median(f[0] for f in figures)
        latency = statistics.median(f[1] for f in figures)
        label = "numbered at COMMIT" if ordered else "trigger disabled"
        print(
            f"  {label:19s} {rate:7.0f} commits/s, {latency:7.0f} us per commit; rounds: "
            + " ".join(f"{f[0]:.0f}" for f in figures)
        )
    if args.skip_latency:
        server.shutdown()
        return

    # --- 2. commit to delivery ---------------------------------------------------
    live = client_for("latency")
    post(live, "Subscription", subscription(endpoint, "Observation?code=http://loinc.org|8867-4"))
    for i in range(99):
        post(live, "Subscription", subscription(endpoint, f"Observation?code=http://x|never-{i}"))
    # An idle system: the write-cost organizations' subscriptions (and every earlier
    # run's) are turned off and their outbox backlog dropped.
    from clinik.fhir.tenancy import tenant_transaction
    from clinik.subscriptions.models import OutboxEvent, Subscription

    live_org = Subscription.objects.filter(criteria_type="Observation").latest("pk").org_id
    others = Subscription.objects.exclude(org_id=live_org)
    for other_org in set(others.values_list("org_id", flat=True)):
        with tenant_transaction(other_org):
            OutboxEvent.objects.filter(org_id=other_org).delete()
    others.update(status="off")
    listener = subprocess.Popen(
        [sys.executable, "manage.py", "subscriptions_listen"], cwd=ROOT, env=os.environ.copy()
    )
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "clinik",
            "worker",
            "-B",
            "--pool",
            "threads",
            "--concurrency",
            "4",
            "--loglevel",
            "WARNING",
            "--schedule",
            str(Path(tempfile.gettempdir()) / f"subs-bench-beat-{stamp}"),
        ],
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        time.sleep(8)  # worker and beat up, subscriptions checked
        sent: dict[str, float] = {}
        for _ in range(args.latency_posts):
            response = post(live, "Observation", observation("8867-4"))
            sent[json.loads(response.content)["id"]] = time.monotonic()
            time.sleep(0.3)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(k in ARRIVALS for k in sent):
            time.sleep(0.05)
        latencies = sorted((ARRIVALS[k] - t) * 1000 for k, t in sent.items() if k in ARRIVALS)
        print(
            f"commit to delivery ({len(latencies)}/{len(sent)} arrived, 1 matching +"
            f" 99 non-matching subscriptions): p50 {statistics.median(latencies):.0f} ms,"
            f" p95 {latencies[int(len(latencies) * 0.95) - 1]:.0f} ms,"
            f" max {latencies[-1]:.0f} ms"
        )
        burst: list[str] = []
        started = time.monotonic()
        for _ in range(args.burst):
            response = post(live, "Observation", observation("8867-4"))
            burst.append(json.loads(response.content)["id"])
        posted = time.monotonic() - started
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(k in ARRIVALS for k in burst):
            time.sleep(0.05)
        arrived = [ARRIVALS[k] for k in burst if k in ARRIVALS]
        span = max(arrived) - started
        print(
            f"burst: {args.burst} POSTs in {posted:.1f} s; {len(arrived)} notifications,"
            f" the last {span:.1f} s after the first POST ({len(arrived) / span:.0f}/s)"
        )
    finally:
        listener.terminate()
        worker.terminate()
        listener.wait(30)
        worker.wait(30)
        server.shutdown()


if __name__ == "__main__":
    main()
