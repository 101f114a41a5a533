"""CPU of one API request inside the application process, without the network, the
HTTP server or the load tool: what the Python side of each hot path costs.

    make db && .venv/bin/python bench/request_cpu.py [--requests 500] [--rounds 5]

Drives the full WSGI application (every middleware, the gateway, views, the real
PostgreSQL and Redis) with Django's test client, one request after another, for a
key the process knows, and reports per request the process's CPU time (best and
median round; PostgreSQL's and Redis's own work is not in it) and the wall time.
CPU time of one process doing one thing at a time is far steadier on this shared
machine than req/s under wrk, so this is the figure to compare before and after a
change to the Python path; fhir_bench.py says what it buys under load.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HIGH = str(10**9)
os.environ.update(
    {
        "DEBUG": "true",  # the environment's; bench/nodebug_settings.py turns it off
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_IP_REQUESTS": HIGH,
        "RATE_LIMIT_KEY_REQUESTS": HIGH,
        "RATE_LIMIT_ORG_REQUESTS": HIGH,
        "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
    }
)

import django  # noqa: E402

django.setup()

from django.test import Client  # noqa: E402

from bench.common import create_org  # noqa: E402


def measure(send, requests: int, rounds: int) -> dict[str, float]:
    send()  # warm: lazy tables, the key known to the gateway
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(requests):
            send()
        cpu.append((time.process_time() - c0) / requests * 1e6)
        wall.append((time.perf_counter() - w0) / requests * 1e6)
    return {
        "cpu_us_best": round(min(cpu)),
        "cpu_us_median": round(statistics.median(cpu)),
        "wall_us_median": round(statistics.median(wall)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    org = create_org("CPU", "cpu@example.com")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {org['api_key']}")
    body = (ROOT / "bench" / "wrk" / "patient.json").read_bytes()

    def post():
        response = client.post("/fhir/R4/Patient", body, content_type="application/fhir+json")
        assert response.status_code == 201, response.content
        return response

    pid = post().json()["id"]
    # Ten patients of their own family, as in fhir_bench's search (≈10 hits).
    family = f"Cpu{os.getpid()}"
    for _ in range(10):
        patient = {**json.loads(body), "name": [{"family": family, "given": ["Ten"]}]}
        response = client.post("/fhir/R4/Patient", patient, content_type="application/fhir+json")
        assert response.status_code == 201, response.content

    def get():
        assert client.get(f"/fhir/R4/Patient/{pid}").status_code == 200

    def search():
        found = client.get("/fhir/R4/Patient", {"family": family})
        assert found.status_code == 200 and found.json()["total"] == 10

    results = {
        "POST Patient": measure(post, args.requests, args.rounds),
        "GET Patient/{id}": measure(get, args.requests, args.rounds),
        "GET Patient?family=X (10 hits)": measure(search, args.requests, args.rounds),
    }
    print(f"{'request':<36} {'CPU µs best':>12} {'CPU µs median':>14} {'wall µs median':>15}")
    for name, r in results.items():
        print(
            f"{name:<36} {r['cpu_us_best']:>12} {r['cpu_us_median']:>14} {r['wall_us_median']:>15}"
        )
    print(json.dumps({"args": vars(args), "results": results}))


if __name__ == "__main__":
    main()
