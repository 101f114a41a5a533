"""Transaction bundle throughput against a running server.

    make db && .venv/bin/python bench/bundle_bench.py [--bundles 20] [--entries 300]

Creates an organization and key, starts gunicorn (as `make run` does, rate limits
raised), POSTs Synthea-style patient transactions of --entries entries one after
another from one client (after --warmup bundles, not measured), and reports the time
per bundle (p50/p95) and the sustained resources per second."""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import create_org  # noqa: E402
from tests.synthea import patient_bundle  # noqa: E402

ENV = {
    **os.environ,
    "DEBUG": "true",
    "LOG_LEVEL": "WARNING",
    "RATE_LIMIT_IP_REQUESTS": "10000000",
    "RATE_LIMIT_KEY_REQUESTS": "10000000",
    "RATE_LIMIT_ORG_REQUESTS": "10000000",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundles", type=int, default=20)
    parser.add_argument("--entries", type=int, default=300)
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument(
        "--warmup", type=int, default=4, help="bundles sent first, not measured (both workers)"
    )
    args = parser.parse_args()
    key = create_org("Bundles", "b@example.com", env=ENV)["api_key"]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "clinik.wsgi",
            "--config",
            "bench/gunicorn_conf.py",
            "--bind",
            f"127.0.0.1:{args.port}",
            "--access-logfile",
            "/dev/null",
        ],
        cwd=ROOT,
        env={**ENV, "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/fhir/R4/metadata", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        bodies = [
            json.dumps(patient_bundle(args.entries, seed=i)).encode() for i in range(args.bundles)
        ]
        warmup = [
            json.dumps(patient_bundle(args.entries, seed=-1 - i)).encode()
            for i in range(args.warmup)
        ]

        def post(body: bytes) -> None:
            request = urllib.request.Request(
                f"{base}/fhir/R4/",
                data=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"},
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 200
                response.read()

        for body in warmup:  # lazy tables, first queries, the key known to the worker
            post(body)
        times = []
        started = time.perf_counter()
        for body in bodies:
            t0 = time.perf_counter()
            post(body)
            times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    times.sort()
    p95 = times[max(0, int(len(times) * 0.95) - 1)]
    result = {
        "bundles": args.bundles,
        "entries": args.entries,
        "p50_s": round(statistics.median(times), 3),
        "p95_s": round(p95, 3),
        "resources_per_s": round(args.bundles * args.entries / elapsed),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
