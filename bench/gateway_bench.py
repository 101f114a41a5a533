"""What the gateway costs per API request, in one run.

    make db && .venv/bin/python bench/gateway_bench.py [--duration 10] [--rounds 3]

Three configurations: `debug` (DEBUG=true, like `make run`), `no-debug`
(settings.DEBUG off: no query log, as in production) and `no-debug+prepared` (also
API_KEY_PREPARED_LOOKUP: the key lookup as a prepared statement). For each:

1. In process: GatewayMiddleware around a view that does nothing, called with
   prepared requests, against the same view called directly: microseconds per
   authenticated GET and per `metadata`, the parts (Redis round trip, key lookup,
   path guard), and database queries per authenticated request.
2. Over HTTP: gunicorn (bench/gunicorn_conf.py, one worker) serving the trivial
   endpoint GET /fhir/R4/Patient/{id} of tests/gateway_probe_urls.py with the gateway
   (bench/gateway_settings.py) and without it (bench/gateway_off_settings.py), driven
   by wrk, alternating rounds.

Rate limits are raised so that every request is served (the limiter still runs:
the cost is the same). wrk runs on this machine and competes with the server for
the cores: compare the columns of one run, not absolutes across machines.
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HIGH = str(10**9)
BENCH_ENV = {
    "DEBUG": "true",  # the environment's; bench/gateway_settings.py may turn it off
    "LOG_LEVEL": "WARNING",
    "RATE_LIMIT_IP_REQUESTS": HIGH,
    "RATE_LIMIT_KEY_REQUESTS": HIGH,
    "RATE_LIMIT_ORG_REQUESTS": HIGH,
    "WEB_CONCURRENCY": "1",
}
os.environ.update(BENCH_ENV)
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.gateway_settings"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, reset_queries  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import RequestFactory, override_settings  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from clinik.gateway import checks  # noqa: E402
from clinik.gateway.middleware import GatewayMiddleware  # noqa: E402
from clinik.gateway.ratelimit import Policy, limiter  # noqa: E402
from clinik.keys import tokens  # noqa: E402
from clinik.keys.models import ApiKey  # noqa: E402

PATH = "/fhir/R4/Patient/bench-123"
# name: (settings.DEBUG, API_KEY_PREPARED_LOOKUP)
CONFIGS = {
    "debug": (True, False),
    "no-debug": (False, False),
    "no-debug+prepared": (False, True),
}
GUNICORN = [sys.executable, "-m", "gunicorn", "clinik.wsgi", "--config", "bench/gunicorn_conf.py"]


def per_call_us(function: Callable[[], object], number: int) -> float:
    """Best of 5 runs, wall-clock microseconds per call."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(number):
            function()
        runs.append((time.perf_counter() - started) / number * 1e6)
    return min(runs)


def cpu_us(function: Callable[[], object], number: int) -> float:
    """Best of 5 runs, CPU microseconds of this process per call (I/O waits excluded)."""
    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(number):
            function()
        runs.append((time.process_time() - started) / number * 1e6)
    return min(runs)


def in_process(key: str, number: int) -> dict[str, float]:
    def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse(b'{"ok": true}', content_type="application/fhir+json")

    gateway = GatewayMiddleware(view)
    factory = RequestFactory()

    def through(path: str, auth: bool, wrapped: bool) -> Callable[[], object]:
        extra = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if auth else {}
        target = gateway if wrapped else view
        return lambda: target(factory.get(path, **extra))

    gateway(factory.get(PATH, HTTP_AUTHORIZATION=f"Bearer {key}"))  # warm up, last_used
    bare = per_call_us(through(PATH, True, False), number)
    bare_cpu = cpu_us(through(PATH, True, False), number)
    ip = Policy("ip", 10**9, 60)
    reset_queries()
    with CaptureQueriesContext(connection) as queries:
        for _ in range(100):
            gateway(factory.get(PATH, HTTP_AUTHORIZATION=f"Bearer {key}"))
    return {
        "authenticated GET: wall": per_call_us(through(PATH, True, True), number) - bare,
        "authenticated GET: CPU": cpu_us(through(PATH, True, True), number) - bare_cpu,
        "metadata (no key): wall": per_call_us(through("/fhir/R4/metadata", False, True), number)
        - bare,
        "  one limiter call (Redis round trip)": per_call_us(
            lambda: limiter.hit([(ip, "127.0.0.1")]), number
        ),
        "  key lookup (one indexed query)": per_call_us(
            lambda: ApiKey.objects.authenticate(key), number
        ),
        "  path guard": per_call_us(lambda: checks.guard_path(PATH), number),
        "  checksum of a key (no I/O)": per_call_us(lambda: tokens.is_well_formed(key), number),
        "queries per authenticated request": len(queries.captured_queries) / 100,
    }


def start(settings_module: str, config: str, port: int) -> subprocess.Popen[bytes]:
    debug, prepared = CONFIGS[config]
    server = subprocess.Popen(
        [*GUNICORN, "--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "BENCH_DJANGO_DEBUG": str(debug).lower(),
            "API_KEY_PREPARED_LOOKUP": str(prepared).lower(),
        },
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
    raise RuntimeError(f"gunicorn with {settings_module} did not start")


def wrk(port: int, key: str, args: argparse.Namespace) -> dict[str, float]:
    wrk_args = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s"]
    out = subprocess.run(
        [
            *wrk_args,
            "-s",
            str(ROOT / "bench" / "wrk" / "gateway_get.lua"),
            f"http://127.0.0.1:{port}",
        ],
        env={**os.environ, "API_KEY": key, "BENCH_PATH": PATH},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, float] = json.loads(next(x for x in out.splitlines() if x.startswith("{")))
    return result


def over_http(key: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Every configuration with the gateway, and without it where that differs."""
    servers = {f"{config}, with gateway": ("bench.gateway_settings", config) for config in CONFIGS}
    servers["debug, without gateway"] = ("bench.gateway_off_settings", "debug")
    servers["no-debug, without gateway"] = ("bench.gateway_off_settings", "no-debug")
    ports = {name: 8021 + i for i, name in enumerate(servers)}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    started = {name: start(*servers[name], ports[name]) for name in servers}
    try:
        for name in servers:
            wrk(ports[name], key, argparse.Namespace(connections=args.connections, duration=2))
        for _ in range(args.rounds):
            for name in servers:
                runs[name].append(wrk(ports[name], key, args))
    finally:
        for server in started.values():
            server.terminate()
            server.wait(timeout=30)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    out = io.StringIO()
    call_command(
        "create_org", "--name", "Gateway bench", "--email", "bench@example.com", stdout=out
    )
    key = json.loads(out.getvalue().strip().splitlines()[-1])["api_key"]

    micro: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):  # configurations interleaved, the best of the rounds kept
        for config, (debug, prepared) in CONFIGS.items():
            with override_settings(DEBUG=debug, API_KEY_PREPARED_LOOKUP=prepared):
                measured = in_process(key, args.number)
            best = micro.setdefault(config, measured)
            for name, value in measured.items():
                best[name] = min(best[name], value)
    print(f"In process (best of {5 * args.rounds}, µs per request, gateway minus the bare view):")
    print(f"  {'':<40}" + "".join(f"{config:>19}" for config in CONFIGS))
    for name in micro["debug"]:
        print(f"  {name:<40}" + "".join(f"{micro[c][name]:>19.1f}" for c in CONFIGS))

    runs = over_http(key, args)
    rps = {name: statistics.median(r["rps"] for r in results) for name, results in runs.items()}
    p50 = {name: statistics.median(r["p50_ms"] for r in results) for name, results in runs.items()}
    errors = {name: sum(int(r["errors"]) for r in results) for name, results in runs.items()}
    print(
        f"\nOver HTTP (gunicorn, 1 worker; wrk -c{args.connections}, "
        f"{args.rounds} x {args.duration}s, median):"
    )
    print(f"  {'':<32} {'req/s':>9} {'p50 ms':>8} {'errors':>7}")
    for name in runs:
        print(f"  {name:<32} {rps[name]:>9.0f} {p50[name]:>8.2f} {errors[name]:>7}")
    for config in CONFIGS:
        baseline = "debug" if config == "debug" else "no-debug"
        added = 1e6 / rps[f"{config}, with gateway"] - 1e6 / rps[f"{baseline}, without gateway"]
        print(f"  gateway cost per request at saturation, {config}: {added:.0f} µs of worker time")
    print(json.dumps({"in_process_us": micro, "http": runs}))


if __name__ == "__main__":
    main()
