"""FHIR API throughput against the bare-Django floor, in one run.

    make db && .venv/bin/python bench/fhir_bench.py [--duration 10] [--connections 8]

Starts gunicorn twice with the same worker settings: the full application (gateway,
validation, tenancy, audit) and bench/bare.py (only the essential SQL), loads
--patients patients, warms both up, then drives them with wrk in alternation for
--rounds rounds (POST Patient, then GET Patient/{id}) and prints the median round of
each plus a JSON line with every round. wrk runs on this machine, so it competes
with the servers for the two cores: compare full with bare, not runs with runs.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import create_org  # noqa: E402

BENCH = ROOT / "bench"
PY = sys.executable
DB = os.environ.get("DATABASE_URL", "postgres://clinik@127.0.0.1:5432/clinik")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(app: str, port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            PY,
            "-m",
            "gunicorn",
            app,
            "--config",
            "clinik/gunicorn_conf.py",
            "--bind",
            f"127.0.0.1:{port}",
            "--access-logfile",
            "/dev/null",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DEBUG": "true",
            # settings.DEBUG off as in production (bench/nodebug_settings.py)
            "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
            "LOG_LEVEL": "WARNING",
            # The benchmark measures throughput, not the plan's rate limits.
            "RATE_LIMIT_IP_REQUESTS": "100000000",
            "RATE_LIMIT_KEY_REQUESTS": "100000000",
            "RATE_LIMIT_ORG_REQUESTS": "100000000",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/fhir/R4/Patient/x", timeout=1)
        except urllib.error.HTTPError:
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"{app} did not start")


_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_by_process(app_pid: int) -> dict[str, float]:
    """CPU milliseconds used so far by the app server under test (gunicorn master and
    workers), PostgreSQL's processes, Redis and wrk, read from /proc."""
    parents: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        # Own time plus that of reaped children (PostgreSQL backends that exited).
        ticks = sum(int(field) for field in fields[11:15])
        stats[int(entry.name)] = (name, ticks * _TICK_MS)
    totals = {"app": 0.0, "postgres": 0.0, "redis": 0.0, "wrk": 0.0}
    for pid, (name, ms) in stats.items():
        ancestor = pid
        while ancestor not in (0, 1, app_pid) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == app_pid:
            totals["app"] += ms
        elif name == "postgres":
            totals["postgres"] += ms
        elif name.startswith("redis-server"):
            totals["redis"] += ms
        elif name == "wrk":
            totals["wrk"] += ms
    return totals


def wrk(
    script: str,
    port: int,
    key: str,
    ids_file: str,
    args: argparse.Namespace,
    duration: int | None = None,
) -> dict:
    env = {**os.environ, "API_KEY": key, "IDS_FILE": ids_file, "BENCH_DIR": str(BENCH)}
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(2, args.connections)}",
            f"-c{args.connections}",
            f"-d{duration or args.duration}s",
            "-s",
            str(BENCH / "wrk" / script),
            f"http://127.0.0.1:{port}",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def patient_ids(org_id: str, limit: int) -> list[str]:
    with psycopg.connect(DB) as conn, conn.transaction():
        conn.execute("SELECT set_config('clinik.org_id', %s, true)", [org_id])
        rows = conn.execute(
            "SELECT id FROM fhir_resource WHERE resource_type = 'Patient' LIMIT %s", [limit]
        ).fetchall()
    return [r[0] for r in rows]


def ensure_patients(org_id: str, port: int, key: str, wanted: int) -> list[str]:
    ids = patient_ids(org_id, wanted)
    body = (BENCH / "wrk" / "patient.json").read_bytes()
    while len(ids) < wanted:
        for _ in range(wanted - len(ids)):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/fhir/R4/Patient",
                data=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"},
            )
            urllib.request.urlopen(request, timeout=10).read()
        ids = patient_ids(org_id, wanted)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=3, help="seconds per workload, unmeasured")
    parser.add_argument("--rounds", type=int, default=3, help="full and bare alternate")
    args = parser.parse_args()
    org = create_org("Bench", "bench@example.com")
    ids_file = tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False)  # noqa: SIM115
    ports = {"full": free_port(), "bare": free_port()}  # other benchmarks may run
    servers = [start("clinik.wsgi", ports["full"]), start("bench.bare:application", ports["bare"])]
    runs: dict[str, list[dict]] = {}
    try:
        ids = ensure_patients(org["org_id"], ports["full"], org["api_key"], args.patients)
        Path(ids_file.name).write_text("\n".join(ids) + "\n")
        # Warm up every worker thread and connection (lazy definition tables, the
        # search registry, first queries), then measure the steady state: full and
        # bare alternate, round after round, and the median of the rounds is reported
        # (this machine's speed drifts by ±20 % over minutes).
        for port in ports.values():
            for script in ("post_patient.lua", "get_patient.lua"):
                wrk(script, port, org["api_key"], ids_file.name, args, duration=args.warmup)
        for _ in range(args.rounds):
            for verb, script in (("POST", "post_patient.lua"), ("GET", "get_patient.lua")):
                for (name, port), server in zip(ports.items(), servers, strict=True):
                    before = cpu_by_process(server.pid)
                    result = wrk(script, port, org["api_key"], ids_file.name, args)
                    after = cpu_by_process(server.pid)
                    # wrk's own CPU is gone with its process; its share is the rest.
                    requests = max(1, result["requests"])
                    result["cpu_ms_per_request"] = {
                        what: round((after[what] - before[what]) / requests, 3)
                        for what in ("app", "postgres", "redis")
                    }
                    runs.setdefault(f"{name} {verb}", []).append(result)
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=30)
    results = {
        name: min(rounds, key=lambda r: abs(r["rps"] - statistics.median(x["rps"] for x in rounds)))
        for name, rounds in runs.items()
    }
    print(
        f"{'run':<10} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
        "   CPU ms per request: app / postgres / redis"
    )
    for name, r in results.items():
        cpu = r["cpu_ms_per_request"]
        print(
            f"{name:<10} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f}"
            f" {r['p99_ms']:>8.2f} {r['errors']:>7}"
            f"   {cpu['app']:.2f} / {cpu['postgres']:.2f} / {cpu['redis']:.2f}"
        )
    for verb in ("POST", "GET"):
        ratio = results[f"full {verb}"]["rps"] / results[f"bare {verb}"]["rps"]
        print(f"full/bare {verb}: {ratio:.0%}")
    print(json.dumps({"args": vars(args), "results": results, "rounds": runs}))


if __name__ == "__main__":
    main()
