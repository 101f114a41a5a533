"""Each hot-path mechanism's gain alone (issue 15, goal 6), in one run.

    make db && .venv/bin/python bench/mechanisms_bench.py [--requests 300] [--rounds 5]

Three mechanisms replace parts of Django on /fhir/ (docs/architecture.md, "The API's
hot path"). One worker process per configuration, each with one mechanism turned
off (and one with all on), drives the full WSGI application (every middleware, the
real PostgreSQL and Redis) one request after another, in process, for POST Patient,
GET Patient/{id} and GET Patient?family=X (10 hits). The workers take turns, round
after round, so the machine's load falls on all of them alike.

- `pgbackend`: Django's own PostgreSQL backend (bench/mechanisms_settings.py, with
  server-side binding as ours): BEGIN, the tenant's `set_config`, the key re-check,
  index and audit rows and COMMIT each take their own round trip.
- `dispatch`: the gateway hands the request to the rest of Django's middleware
  chain and its URL resolution (`GatewayMiddleware.dispatch` overridden here),
  instead of calling the view itself.
- `recheck`: every request looks its key up (`_RECHECKED_ROUTES` emptied), instead
  of its first tenant statement checking it.

Per request: CPU of the application process (user + system), CPU of its PostgreSQL
backend (/proc/<pid>/stat of `pg_backend_pid()`: PostgreSQL runs on this machine),
their sum, and wall time of the sequential request. CPU is the figure to compare on
this shared machine; each figure is the median round (min-max)."""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIGS = ("all-on", "pgbackend", "dispatch", "recheck")
WORKLOADS = ("POST", "GET", "SEARCH")
TICK = os.sysconf("SC_CLK_TCK")


def worker(off: str) -> None:
    HIGH = str(10**9)
    os.environ.update(
        {
            "DEBUG": "true",
            "LOG_LEVEL": "WARNING",
            "RATE_LIMIT_IP_REQUESTS": HIGH,
            "RATE_LIMIT_KEY_REQUESTS": HIGH,
            "RATE_LIMIT_ORG_REQUESTS": HIGH,
            "DJANGO_SETTINGS_MODULE": "bench.mechanisms_settings",
            "BENCH_MECHANISM_OFF": off,
            # One connection (one backend whose CPU is read) for the whole run.
            "DATABASE_CONN_MAX_AGE": "36000",
        }
    )
    import django

    django.setup()
    from django.db import connection

    from clinik.gateway import middleware
    from clinik.wsgi import application

    if off == "dispatch":

        def through_django(self: Any, request: Any) -> Any:
            return middleware._dispatch(request, self.get_response)

        middleware.GatewayMiddleware.dispatch = through_django  # type: ignore[method-assign]
    if off == "recheck":
        middleware._RECHECKED_ROUTES = frozenset()
    if off == "pgbackend":
        assert connection.vendor == "postgresql" and not hasattr(connection, "defer")

    org = json.loads(sys.stdin.readline())
    auth = f"Bearer {org['api_key']}"
    body = (ROOT / "bench" / "wrk" / "patient.json").read_bytes()
    statuses: list[str] = []

    def call(method: str, path: str, query: str = "", data: bytes = b"") -> bytes:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "8000",
            "HTTP_HOST": "localhost:8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(data),
            "wsgi.errors": sys.stderr,
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_AUTHORIZATION": auth,
            "HTTP_ACCEPT": "application/fhir+json",
        }
        if data:
            environ["CONTENT_TYPE"] = "application/fhir+json"
            environ["CONTENT_LENGTH"] = str(len(data))
        answer = application(environ, lambda status, headers, exc=None: statuses.append(status))
        out = b"".join(answer)
        answer.close()  # type: ignore[attr-defined]
        return out

    pid = json.loads(call("POST", "/fhir/R4/Patient", data=body))["id"]
    family = f"Mech{off.replace('-', '')}{os.getpid()}"
    for _ in range(10):
        patient = {**json.loads(body), "name": [{"family": family, "given": ["Ten"]}]}
        call("POST", "/fhir/R4/Patient", data=json.dumps(patient).encode())
    sends = {
        "POST": lambda: call("POST", "/fhir/R4/Patient", data=body),
        "GET": lambda: call("GET", f"/fhir/R4/Patient/{pid}"),
        "SEARCH": lambda: call("GET", "/fhir/R4/Patient", f"family={family}"),
    }
    assert json.loads(sends["SEARCH"]())["total"] == 10

    def backend_pid() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    def backend_cpu(backend: int) -> float:
        fields = Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    print("ready", flush=True)
    for line in sys.stdin:
        workload, count = line.split()
        send, n = sends[workload], int(count)
        for _ in range(5):
            send()  # warm (a connection idle past CONN_MAX_AGE is replaced here)
        statuses.clear()
        backend = backend_pid()
        pg0, c0, w0 = backend_cpu(backend), time.process_time(), time.perf_counter()
        for _ in range(n):
            send()
        wall, cpu, pg = (
            time.perf_counter() - w0,
            time.process_time() - c0,
            backend_cpu(backend) - pg0,
        )
        assert backend_pid() == backend, "the connection changed: its CPU is not all counted"
        assert all(s.startswith(("200", "201")) for s in statuses), set(statuses)
        print(json.dumps({"app": cpu / n * 1e3, "pg": pg / n * 1e3, "wall": wall / n * 1e3}))
        sys.stdout.flush()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    from bench.common import create_org

    org = create_org("Mechanisms", "mechanisms@example.com")
    workers = {}
    for config in CONFIGS:
        process = subprocess.Popen(
            [sys.executable, __file__, "--worker", config],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdin and process.stdout
        process.stdin.write(json.dumps(org) + "\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "ready", config
        workers[config] = process
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for workload in WORKLOADS:
            for config, process in workers.items():
                assert process.stdin and process.stdout
                process.stdin.write(f"{workload} {args.requests}\n")
                process.stdin.flush()
                results.setdefault((config, workload), []).append(
                    json.loads(process.stdout.readline())
                )
    for process in workers.values():
        assert process.stdin
        process.stdin.close()
        process.wait(timeout=30)
    print(f"{args.rounds} rounds x {args.requests} requests; ms per request, median (min-max)")
    header = "| workload | mechanism off | app CPU | PostgreSQL CPU | app + PostgreSQL | wall |"
    print(header)
    print("|---|---|---:|---:|---:|---:|")
    summary = {}
    for workload in WORKLOADS:
        base = statistics.median(r["app"] + r["pg"] for r in results[("all-on", workload)])
        for config in CONFIGS:
            rows = results[(config, workload)]
            total = [r["app"] + r["pg"] for r in rows]
            gain = (statistics.median(total) - base) / statistics.median(total) * 100
            label = "none (all on)" if config == "all-on" else config
            extra = "" if config == "all-on" else f" (mechanism saves {gain:.0f} %)"
            print(
                f"| {workload} | {label} | {spread([r['app'] for r in rows])} | "
                f"{spread([r['pg'] for r in rows])} | {spread(total)}{extra} | "
                f"{spread([r['wall'] for r in rows])} |"
            )
            summary[f"{workload} {config}"] = {
                key: statistics.median(r[key] for r in rows) for key in ("app", "pg", "wall")
            }
    print(json.dumps({"args": vars(args), "median_ms": summary}))


if __name__ == "__main__":
    main()
