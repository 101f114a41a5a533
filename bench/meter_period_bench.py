"""The meter claim per billing period against the previous one per calendar month, on
the data bench/billing_bench.py loads (10,000 organizations, a 30-day month of hourly
rollups): run that first with --skip-webhook --claim-only, then

    .venv/bin/python bench/meter_period_bench.py [--rounds 3]

A (main's calendar-month SQL) and B (clinik.billing.meters.claim) run alternately,
the report table emptied before each; timed: wall clock, this process's CPU (the
Python side: accounts and periods) and the PostgreSQL backend's CPU (/proc). B runs
twice per round: the accounts on calendar months (no Stripe period held), then with a
Stripe period starting on the 17th at 09:23 (two windows per organization)."""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
    import django

    django.setup()
    from datetime import UTC, timedelta

    from django.db import connection

    from clinik.billing import meters

    old_source = subprocess.run(
        ["git", "show", "cf4341b:clinik/billing/meters.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    old_sql = old_source.split('_CLAIM = """', 1)[1].split('"""', 1)[0]
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(bucket) FROM usage_hourlyusage WHERE route = 'bench-billing'")
        (month,) = cursor.fetchone()
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    month = month.astimezone(UTC).replace(day=1, hour=0)
    as_of = month + timedelta(days=30)
    until = meters.finished_until(as_of)
    boundary = month + timedelta(days=5, hours=9, minutes=23)

    def periods(held: bool) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE billing_account SET current_period_start = %s, current_period_end = %s"
                " WHERE stripe_customer_id LIKE 'cus_bench_%%'",
                [boundary if held else None, boundary + timedelta(days=30) if held else None],
            )

    def timed(run) -> dict[str, float]:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM billing_meterreport")
        b0, c0, t0 = backend_cpu(pid), time.process_time(), time.perf_counter()
        rows = run()
        t1, c1, b1 = time.perf_counter(), time.process_time(), backend_cpu(pid)
        with connection.cursor() as cursor:
            cursor.execute("SELECT coalesce(sum(quantity), 0) FROM billing_meterreport")
            (total,) = cursor.fetchone()
        return {
            "wall_s": round(t1 - t0, 2),
            "python_cpu_s": round(c1 - c0, 2),
            "postgres_cpu_s": round(b1 - b0, 2),
            "rows": rows,
            "overage": int(total),
        }

    def old() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                old_sql, {"month": meters.month_start(until - timedelta(seconds=1)), "until": until}
            )
            return int(cursor.rowcount)

    results: dict[str, list[dict[str, float]]] = {
        "A_calendar_sql": [],
        "B_calendar": [],
        "B_stripe_6th": [],
    }
    for _ in range(args.rounds):
        periods(False)
        results["A_calendar_sql"].append(timed(old))
        results["B_calendar"].append(timed(lambda: meters.claim(as_of)))
        periods(True)
        results["B_stripe_6th"].append(timed(lambda: meters.claim(as_of)))
    periods(False)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
