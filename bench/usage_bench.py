"""What request logging and auditing cost the API, and whether any record is lost.

    make db && .venv/bin/python bench/usage_bench.py [--duration 10] [--rounds 3]

1. Throughput, in one run: gunicorn (bench/gunicorn_conf.py) serving GET
   Patient/{id} three ways, driven by wrk in alternating rounds (medians):
   `full` (request log + audit, as shipped), `no-log` (audit only) and `bare`
   (neither; bench/usage_off_settings.py). Ratios: full/no-log is what request
   logging costs; full/bare what logging and auditing cost together.
2. Records lost, counted: a separate Redis (port 6391, append-only file) holds the
   usage buffer; a client sends exactly N requests (reads, 404s, 401s) with known
   request ids at full speed while that Redis is shut down for a few seconds and
   started again mid-run; a drainer thread runs meanwhile; then gunicorn is stopped
   (its workers flush at exit), the buffer drained, and the records counted.
"""

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bench.common import create_org  # noqa: E402

PY = sys.executable
HIGH = str(10**9)
ENV = {
    **os.environ,
    "DEBUG": "true",
    "LOG_LEVEL": "WARNING",
    "RATE_LIMIT_IP_REQUESTS": HIGH,
    "RATE_LIMIT_KEY_REQUESTS": HIGH,
    "RATE_LIMIT_ORG_REQUESTS": HIGH,
}
CONFIGS = {
    "full": {},
    "no-log": {"DJANGO_SETTINGS_MODULE": "bench.usage_off_settings", "USAGE_BENCH_OFF": "log"},
    "bare": {"DJANGO_SETTINGS_MODULE": "bench.usage_off_settings", "USAGE_BENCH_OFF": "log,audit"},
}
LOSS_REDIS_PORT = 6391


def start(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
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
        env={**ENV, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/fhir/R4/metadata", timeout=1)
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("gunicorn did not start")


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    server.wait(timeout=60)


def wrk(port: int, key: str, ids_file: str, duration: int, connections: int) -> dict:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "-s",
            str(BENCH / "wrk" / "get_patient.lua"),
            f"http://127.0.0.1:{port}",
        ],
        env={**ENV, "API_KEY": key, "IDS_FILE": ids_file, "BENCH_DIR": str(BENCH)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def ensure_patients(port: int, key: str, wanted: int) -> list[str]:
    body = (BENCH / "wrk" / "patient.json").read_bytes()
    ids = []
    for _ in range(wanted):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/fhir/R4/Patient",
            data=body,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            ids.append(json.loads(response.read())["id"])
    return ids


def throughput(args: argparse.Namespace, org: dict[str, str]) -> dict[str, dict]:
    server = start(8011, {})
    try:
        ids = ensure_patients(8011, org["api_key"], args.patients)
    finally:
        stop(server)
    ids_file = tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False)  # noqa: SIM115
    Path(ids_file.name).write_text("\n".join(ids) + "\n")
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):
        for name, env in CONFIGS.items():
            server = start(8012, env)
            try:
                wrk(8012, org["api_key"], ids_file.name, 2, args.connections)  # warm up
                runs[name].append(
                    wrk(8012, org["api_key"], ids_file.name, args.duration, args.connections)
                )
            finally:
                stop(server)
    return {
        name: {
            "rps": statistics.median(r["rps"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "rounds": [round(r["rps"]) for r in results],
        }
        for name, results in runs.items()
    }


def redis_server(directory: str) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(LOSS_REDIS_PORT),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            directory,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if (
            subprocess.run(
                ["redis-cli", "-p", str(LOSS_REDIS_PORT), "ping"], capture_output=True, text=True
            ).stdout.strip()
            == "PONG"
        ):
            return server
        time.sleep(0.05)
    raise RuntimeError("redis did not start")


def loss(args: argparse.Namespace, org: dict[str, str], patient: str) -> dict[str, int]:
    """Exactly N requests with known ids; Redis down for a while in the middle."""
    directory = tempfile.mkdtemp(prefix="usage-bench-redis-")
    usage_redis = f"redis://127.0.0.1:{LOSS_REDIS_PORT}/0"
    os.environ["USAGE_REDIS_URL"] = usage_redis
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
    import django

    django.setup()
    from django.db import connection

    from clinik.usage import store

    redis_proc = redis_server(directory)
    server = start(8013, {"USAGE_REDIS_URL": usage_redis})
    run = uuid.uuid4().hex[:8]
    sent = [0] * args.clients
    stop_drainer = threading.Event()
    drained = [0]

    def drainer() -> None:
        while not stop_drainer.is_set():
            try:
                drained[0] += store.drain()
            except Exception as error:  # Redis is down on purpose for a while
                print(f"drain failed ({type(error).__name__}); retrying", file=sys.stderr)
            stop_drainer.wait(0.5)
        connection.close()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", 8013, timeout=30)
        for i in range(n, args.requests, args.clients):
            kind = i % 10
            path = f"/fhir/R4/Patient/{patient}" if kind < 8 else "/fhir/R4/Patient/nope"
            headers = {"X-Request-ID": f"loss-{run}-{i:07d}"}
            if kind != 9:
                headers["Authorization"] = f"Bearer {org['api_key']}"
            conn.request("GET", path, headers=headers)
            conn.getresponse().read()
            sent[n] += 1

    drain_thread = threading.Thread(target=drainer)
    drain_thread.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.outage_after)
    subprocess.run(["redis-cli", "-p", str(LOSS_REDIS_PORT), "shutdown"], capture_output=True)
    redis_proc.wait(timeout=10)
    time.sleep(args.outage)
    redis_proc = redis_server(directory)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    stop(server)  # the workers flush their buffers at exit
    stop_drainer.set()
    drain_thread.join()
    store.drain()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT request_id) FROM usage_requestlog"
            " WHERE request_id LIKE %s",
            [f"loss-{run}-%"],
        )
        rows, distinct = cursor.fetchone()
    subprocess.run(
        ["redis-cli", "-p", str(LOSS_REDIS_PORT), "shutdown", "nosave"], capture_output=True
    )
    redis_proc.wait(timeout=10)
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "requests_sent": sum(sent),
        "records": rows,
        "distinct_records": distinct,
        "lost": sum(sent) - distinct,
        "duplicates": rows - distinct,
        "seconds": round(elapsed, 1),
        "redis_down_seconds": args.outage,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--outage-after", type=float, default=3.0)
    parser.add_argument("--outage", type=float, default=4.0)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    org = create_org("Usage bench", "usage@example.com", env=ENV)
    results: dict = {}
    if not args.skip_throughput:
        results["throughput"] = tp = throughput(args, org)
        print(f"{'config':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  rounds")
        for name, r in tp.items():
            print(
                f"{name:<8} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
                f" {r['errors']:>7}  {r['rounds']}"
            )
        print(f"full/no-log (request logging): {tp['full']['rps'] / tp['no-log']['rps']:.1%}")
        print(f"full/bare (logging + audit):   {tp['full']['rps'] / tp['bare']['rps']:.1%}")
    server = start(8014, {})
    try:
        patient = ensure_patients(8014, org["api_key"], 1)[0]
    finally:
        stop(server)
    results["loss"] = lost = loss(args, org, patient)
    print(
        f"records lost: {lost['lost']} of {lost['requests_sent']} requests"
        f" (Redis down {lost['redis_down_seconds']} s mid-run; {lost['duplicates']} duplicates;"
        f" {lost['seconds']} s)"
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
