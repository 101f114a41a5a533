"""One batch of three statements (two set_config and a SELECT, as a tenant read
sends them), as the backend sent it before issue 13 (values mogrified into one
simple-protocol string), with bind parameters in psycopg's Pipeline (the first
version), and as the backend sends it now (bind parameters, one libpq batch with one
Sync, read once): CPU and wall time per batch, same connection, alternating.

    make db && .venv/bin/python bench/pipeline_micro.py [--batches 1000]
"""

import argparse
import os
import time

import django
import psycopg

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
django.setup()

from clinik.lib.pgbackend import base as backend  # noqa: E402

URL = os.environ.get("DATABASE_URL", "postgres://clinik@127.0.0.1:5432/clinik")
QUEUED = [
    ("SELECT set_config('clinik.org_id', %s, true)", ["2aa07527-a1fc-4790-9e8b-123456789012"]),
    ("SELECT set_config('clinik.probe', %s, true)", ["abc"]),
]
MAIN = ("SELECT %s::int + 1", [41])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=1000)
    args = parser.parse_args()
    conn = psycopg.connect(URL, autocommit=True, prepare_threshold=None)

    def mogrified() -> None:
        with psycopg.ClientCursor(conn) as cursor:
            text = ";\n".join([cursor.mogrify(*s) for s in [*QUEUED, MAIN]])
            cursor.execute(text)
            cursor.nextset()
            cursor.nextset()
            cursor.fetchall()

    def pipelined() -> None:
        with conn.pipeline():
            with psycopg.Cursor(conn) as helper:
                for statement in QUEUED:
                    helper.execute(*statement)
            cursor = psycopg.Cursor(conn)
            cursor.execute(*MAIN)
        cursor.fetchall()

    def batched() -> None:  # what clinik.lib.pgbackend does now
        cursor = psycopg.Cursor(conn)
        conn.wait(cursor._start_query(MAIN[0]))
        main = cursor._convert_query(*MAIN)
        statements = [*backend._converted(conn, QUEUED), main]
        results = conn.wait(backend._batch_gen(conn, statements))
        cursor._query = main
        cursor._set_results(results)
        cursor.fetchall()

    for run in (mogrified, pipelined, batched, mogrified, pipelined, batched):
        run()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(args.batches):
            run()
        cpu_us = (time.process_time() - cpu) / args.batches * 1e6
        wall_us = (time.perf_counter() - wall) / args.batches * 1e6
        print(f"{run.__name__:<10} CPU {cpu_us:6.0f} µs  wall {wall_us:6.0f} µs per batch")


if __name__ == "__main__":
    main()
