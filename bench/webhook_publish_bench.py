"""The webhook's publish of a stored Stripe event with the Celery broker down (nothing
listening on the port: connection refused) and up, before and after billrecon (#16):

    .venv/bin/python bench/webhook_publish_bench.py [--rounds 3] [--broker-up URL]

A: the app's pooled publish, `process_stripe_event.apply_async(retry=False)` (main's
   enqueue_stripe_event): kombu's connection retries hold it ~6 s with the broker down.
B: clinik.billing.tasks.enqueue_stripe_event: its own connection, one connect attempt
   of at most PUBLISH_TIMEOUT, no retries.
Run alternately; wall clock and this process's CPU per publish. With --broker-up the
same on a live Redis broker (the queue is emptied afterwards: use your own database
number). This is the only part of the webhook's answer the broker changes; the rest
(signature check, one INSERT) is in billing_bench.py's webhook figures."""

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run(broker: str, rounds: int, repeat: int) -> None:
    os.environ["CELERY_BROKER_URL"] = broker
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
    import django

    django.setup()
    from kombu.exceptions import OperationalError

    from clinik.billing.tasks import enqueue_stripe_event, process_stripe_event

    def a() -> None:
        with contextlib.suppress(OperationalError, OSError):
            process_stripe_event.apply_async((0,), retry=False)

    def b() -> None:
        enqueue_stripe_event(0)

    results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    for _ in range(rounds):
        for name, fun in (("A", a), ("B", b)):
            for _ in range(repeat):
                wall, cpu = time.perf_counter(), time.process_time()
                fun()
                results[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    for name, rows in results.items():
        walls = sorted(r[0] for r in rows)
        cpus = sorted(r[1] for r in rows)
        print(
            f"{broker} {name}: n={len(rows)} wall median {walls[len(walls) // 2] * 1000:.1f} ms"
            f" max {walls[-1] * 1000:.1f} ms; CPU median {cpus[len(cpus) // 2] * 1000:.2f} ms"
        )
    if "127.0.0.1:1/" not in broker:
        import redis

        redis.Redis.from_url(broker).delete("celery")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--broker-up", default=None)
    args = parser.parse_args()
    if os.environ.get("_BENCH_BROKER"):
        run(
            os.environ["_BENCH_BROKER"],
            args.rounds,
            1 if "127.0.0.1:1/" in os.environ["_BENCH_BROKER"] else 20,
        )
        return
    import subprocess

    brokers = ["redis://127.0.0.1:1/0"] + ([args.broker_up] if args.broker_up else [])
    for broker in brokers:  # one process each: Django is set up once per broker
        subprocess.run(
            [sys.executable, __file__, "--rounds", str(args.rounds)],
            env={**os.environ, "_BENCH_BROKER": broker, "PYTHONPATH": str(ROOT)},
            check=True,
            timeout=300,
        )


if __name__ == "__main__":
    main()
