"""What a dashboard request pays for product analytics: `analytics.capture()` with
PostHog unset (A), with PostHog set to a local capture server that takes 500 ms to
answer each batch (B), and one indexed SELECT for reference (C: capture() makes one,
for the user's analytics id), alternating rounds in one run. Sending happens in
background threads, so B must cost about C however slow the server is.

Run (your own database, `make db` first):
    DATABASE_URL=postgres://clinik@127.0.0.1:5432/clinik_<NAME> \\
    .venv/bin/python bench/analytics_bench.py
Bounded: 6 rounds of 2000 calls each side, loopback only."""

import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
os.environ.setdefault("DEBUG", "true")

import django

django.setup()

from django.test import override_settings  # noqa: E402

from clinik.accounts.models import User  # noqa: E402
from clinik.privacy import analytics  # noqa: E402

ROUNDS, CALLS = 6, 2000


class Slow(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.5)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


def one_round(user: User, reference: bool = False) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(CALLS):
        if reference:  # the one indexed SELECT capture() makes (the analytics id)
            User.objects.filter(pk=user.pk).values_list("pk", flat=True).first()
        else:
            analytics.capture(user, "usage_page_viewed", range="7d")
    return (time.perf_counter() - wall) / CALLS * 1e6, (time.process_time() - cpu) / CALLS * 1e6


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_address[1]}"
    user, _ = User.objects.get_or_create(email="analytics-bench@bench.test", name="Bench")
    on = override_settings(POSTHOG_API_KEY="phc_bench", POSTHOG_HOST=host)
    results: dict[str, list[tuple[float, float]]] = {
        "A unset": [],
        "B slow host": [],
        "C one SELECT": [],
    }
    for _ in range(ROUNDS):
        results["A unset"].append(one_round(user))
        with on:
            results["B slow host"].append(one_round(user))
        results["C one SELECT"].append(one_round(user, reference=True))
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"{name:12} median {wall:7.1f} us/call wall, {cpu:7.1f} us/call CPU")
    ratio = statistics.median(r[0] for r in results["B slow host"]) / statistics.median(
        r[0] for r in results["C one SELECT"]
    )
    print(f"B/C wall ratio {ratio:.2f}; the capture server answered 500 ms per batch")
    print("(CPU counts every thread of the process: B includes the sender threads)")
    server.shutdown()


if __name__ == "__main__":
    main()
