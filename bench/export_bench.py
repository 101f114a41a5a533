"""Memory of a bulk export: flat however large the tenant.

    make db && .venv/bin/python bench/export_bench.py [--sizes 2000,20000,200000]

For each size N: creates a throwaway organization in the development database,
inserts N current resources straight into the store's table by SQL (generate_series;
Patient, Observation and Encounter, ~600 bytes each, tenant tag included), and runs
the export job function (clinik.fhir.export.run_export) in this process into a
temporary directory, twice:

1. plain, measuring the growth of the process's peak RSS (VmHWM, reset through
   /proc/self/clear_refs just before) and the time taken;
2. under tracemalloc, reporting the peak of Python allocations during the export.

A warm-up export of 100 resources runs first, so one-time costs (lazy imports,
first use of the server-side cursor) are not counted. Then it checks the counts
against the rows inserted and deletes the organization's rows, job rows and files.
Prints a table and one JSON line per size.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from clinik.accounts.models import Organization  # noqa: E402
from clinik.fhir import export  # noqa: E402
from clinik.fhir.store import get_store  # noqa: E402
from clinik.fhir.tenancy import TENANT_SYSTEM, tenant_transaction  # noqa: E402
from clinik.privacy.models import ExportJob  # noqa: E402

TYPES = ("Patient", "Observation", "Encounter")


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def insert(org_id: object, count: int) -> None:
    per_type = count // len(TYPES)
    for number, resource_type in enumerate(TYPES):
        rows = per_type if number < len(TYPES) - 1 else count - per_type * (len(TYPES) - 1)
        with tenant_transaction(org_id), connection.cursor() as cursor:  # type: ignore[arg-type]
            cursor.execute(
                "INSERT INTO fhir_resource (org_id, resource_type, id, version_id,"
                " last_updated, content) SELECT %s, %s, 'b' || g, 1, now(),"
                " json_build_object('resourceType', %s::text, 'id', 'b' || g,"
                "  'meta', json_build_object('versionId', '1', 'tag', json_build_array("
                "   json_build_object('system', %s::text, 'code', %s::text))),"
                "  'text', json_build_object('status', 'generated',"
                "   'div', '<div xmlns=\"http://www.w3.org/1999/xhtml\">' || repeat('x', 400)"
                "   || '</div>'))::text"
                " FROM generate_series(1, %s) g",
                [org_id, resource_type, resource_type, TENANT_SYSTEM, str(org_id), rows],
            )


def run_once(org: Organization, trace: bool) -> tuple[ExportJob, float, int, int]:
    job = ExportJob.objects.create(org=org, requested_by_type="user", requested_by_id="0")
    reset_peak_rss()
    rss_before = status_kb("VmRSS")
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    status = export.run_export(job.pk)
    elapsed = time.perf_counter() - started
    traced_peak = 0
    if trace:
        _current, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_growth = status_kb("VmHWM") - rss_before
    assert status == "completed", status
    job.refresh_from_db()
    return job, elapsed, rss_growth, traced_peak


def measure(count: int) -> dict[str, object]:
    org = Organization.objects.create(name=f"export-bench-{count}")
    try:
        insert(org.pk, count)
        plain, elapsed, rss_growth, _ = run_once(org, trace=False)
        assert sum(plain.counts.values()) == count, plain.counts
        size = sum(f["bytes"] for f in plain.files)
        traced, _elapsed, _rss, traced_peak = run_once(org, trace=True)
        assert traced.counts == plain.counts
        return {
            "resources": count,
            "files": len(plain.files),
            "mb_written": round(size / 1e6, 1),
            "seconds": round(elapsed, 2),
            "resources_per_s": round(count / elapsed),
            "peak_rss_growth_mb": round(rss_growth / 1024, 1),
            "tracemalloc_peak_mb": round(traced_peak / 1e6, 2),
        }
    finally:
        get_store().purge_tenant(org.pk)
        for job in ExportJob.objects.filter(org=org):
            export.get_storage().delete_prefix(export.job_prefix(job))
        ExportJob.objects.filter(org=org).delete()
        org.delete()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000,200000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="export-bench-") as directory:
        settings.EXPORT_DIR = Path(directory)
        settings.EXPORT_S3_BUCKET = ""
        settings.EXPORT_FILE_MAX_BYTES = 64 * 1024 * 1024
        measure(100)  # warm-up: lazy imports and first-use allocations are not the export's
        results = [measure(int(n)) for n in args.sizes.split(",")]
    print(
        f"{'resources':>10} {'files':>5} {'MB':>7} {'s':>7} {'res/s':>8}"
        f" {'ΔRSS MB':>8} {'tracemalloc MB':>15}"
    )
    for r in results:
        print(
            f"{r['resources']:>10} {r['files']:>5} {r['mb_written']:>7} {r['seconds']:>7}"
            f" {r['resources_per_s']:>8} {r['peak_rss_growth_mb']:>8}"
            f" {r['tracemalloc_peak_mb']:>15}"
        )
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
