"""The `obs` and `chain` searches of bench/search_bench.py served by two code trees in
alternating rounds against one loaded database: latency at N connections and the CPU
that PostgreSQL spends per search.

    .venv/bin/python bench/search_bench.py --explain-only        # loads; prints org id
    .venv/bin/python bench/search_ab_bench.py --org ORG --key KEY \\
        --tree before=/path/to/old/checkout --tree after=. [--rounds 3] [--duration 10]

Each round serves each tree with gunicorn (bench/gunicorn_conf.py, 2 workers x 4
threads, settings.DEBUG off) on a loopback port, warms it up for 3 s, then runs wrk
(--connections, default 8) on each workload. CPU per request is read from /proc: the
PostgreSQL backends whose process title names this database (so other databases'
work on the shared machine is left out) and the server's processes. Both trees must
work with the database's schema (migrate with the newer one first).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.search_bench import BENCH_ENV, PY, check, workloads, wrk  # noqa: E402

_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
_DB = os.environ.get("DATABASE_URL", "postgres://clinik@127.0.0.1:5432/clinik")
_DB_NAME = f" {_DB.rsplit('/', 1)[-1].split('?')[0]} ".encode()


def _cpu(server_pid: int) -> dict[str, dict[int, float]]:
    """CPU ms so far of our database's backends and of the server's processes."""
    parents: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
        ticks = sum(int(field) for field in fields[11:13])
        stats[int(entry.name)] = (raw[raw.index("(") + 1 : raw.rindex(")")], ticks * _TICK_MS)
    totals: dict[str, dict[int, float]] = {"app": {}, "postgres": {}}
    for pid, (name, ms) in stats.items():
        ancestor = pid
        while ancestor not in (0, 1, server_pid) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == server_pid:
            totals["app"][pid] = ms
        elif name == "postgres":
            try:
                if _DB_NAME in Path(f"/proc/{pid}/cmdline").read_bytes():
                    totals["postgres"][pid] = ms
            except OSError:
                pass
    return totals


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(ms - before.get(pid, 0.0) for pid, ms in after.items())


def _start(tree: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **BENCH_ENV,
        "WEB_CONCURRENCY": "2",
        "WEB_THREADS": "4",
        "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
        "PYTHONPATH": str(tree),
    }
    server = subprocess.Popen(
        [
            *(PY, "-m", "gunicorn", "clinik.wsgi", "--config", "bench/gunicorn_conf.py"),
            *("--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"),
        ],
        cwd=tree,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/fhir/R4/metadata", timeout=2)
            return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("gunicorn did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--org", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--tree", action="append", required=True, help="label=path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--port", type=int, default=8047)
    parser.add_argument("--workloads", default="obs,chain")
    args = parser.parse_args()
    trees = [(label, Path(path).resolve()) for label, path in (t.split("=", 1) for t in args.tree)]
    paths = {k: v for k, v in workloads(args.patients).items() if k in args.workloads.split(",")}
    rows = []
    for round_number in range(1, args.rounds + 1):
        for label, tree in trees:
            server = _start(tree, args.port)
            try:
                for name, workload in paths.items():
                    total = check(args.port, args.key, workload[0]).get("total")
                    warm = argparse.Namespace(**{**vars(args), "duration": 3})
                    wrk(args.port, args.key, workload, warm)
                    before = _cpu(server.pid)
                    result = wrk(args.port, args.key, workload, args)
                    after = _cpu(server.pid)
                    requests = max(1, result["requests"])
                    row = {
                        "round": round_number,
                        "tree": label,
                        "workload": name,
                        "total": total,
                        "rps": round(result["rps"], 1),
                        "p50_ms": round(result["p50_ms"], 2),
                        "p95_ms": round(result["p95_ms"], 2),
                        "db_cpu_ms": round(
                            _delta(before["postgres"], after["postgres"]) / requests, 3
                        ),
                        "app_cpu_ms": round(_delta(before["app"], after["app"]) / requests, 3),
                        "errors": result["errors"],
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                server.terminate()
                server.wait(timeout=30)
    print("\n| round | tree | workload | hits | req/s | p50 ms | p95 ms | DB CPU ms/search |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['round']} | {r['tree']} | {r['workload']} | {r['total']} | {r['rps']}"
            f" | {r['p50_ms']} | {r['p95_ms']} | {r['db_cpu_ms']} |"
        )


if __name__ == "__main__":
    main()
