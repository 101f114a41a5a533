"""FHIR search at volume: throughput and latency of three searches, plus their plans.

    make db && .venv/bin/python bench/search_bench.py [--duration 10] [--connections 8]
        [--patients 10000] [--observations 1000000] [--org ORG_ID --key API_KEY]
        [--explain-only]

1. Creates an organization and key (`create_org`) unless --org/--key name an
   existing bench organization that is already loaded (then loading is skipped).
2. Loads 100 Organizations and --patients Patients through the store (the API's own
   code path: resource, history and index rows in one transaction each), then
   --observations Observations straight into fhir_resource and the index tables
   with INSERT ... SELECT FROM generate_series, as the application role with the
   tenant set (row-level security applies), 100,000 per transaction. A sample of
   the generated observations is checked against `extract()`: the SQL must write
   exactly the index rows the application would. Then ANALYZE (as the owner role).
3. Prints EXPLAIN (ANALYZE, BUFFERS) of each search kind, run as the application
   role inside a tenant transaction, i.e. under row-level security.
4. Serves the application with gunicorn (bench/gunicorn_conf.py) and drives it
   with wrk (bench/search_wrk.lua) for each workload:
     family  GET Patient?family=X                      (10 hits, with Bundle.total)
     obs     GET Observation?subject=Patient/x&code=system|code   (10 hits)
     chain   GET Observation?subject.organization.name=X&code=system|code
             (two-level chain: 1,000 hits per organization and code; page 20 + total)

Rate limits are raised so every request is served. wrk runs on this machine and
competes with the server for the two cores.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from bench.common import create_org  # noqa: E402
from clinik.fhir.search.extract import IndexRows, extract  # noqa: E402
from clinik.fhir.search.query import parse_search  # noqa: E402
from clinik.fhir.store.postgres import PostgresStore  # noqa: E402
from clinik.fhir.tenancy import TENANT_SYSTEM, tenant_transaction  # noqa: E402

PY = sys.executable
HIGH = str(10**9)
BENCH_ENV = {
    "DEBUG": "true",
    "LOG_LEVEL": "WARNING",
    "RATE_LIMIT_IP_REQUESTS": HIGH,
    "RATE_LIMIT_KEY_REQUESTS": HIGH,
    "RATE_LIMIT_ORG_REQUESTS": HIGH,
}
ORGANIZATIONS = 100
CODES = [
    "8480-6",
    "8462-4",
    "8867-4",
    "9279-1",
    "8310-5",
    "2708-6",
    "29463-7",
    "8302-2",
    "39156-5",
    "85354-9",
]
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
BATCH = 100_000


def database_url(owner: bool = False) -> str:
    db = settings.DATABASES["default"]
    user = settings.DATABASE_OWNER_CREDENTIALS["USER"] if owner else db["USER"]
    password = settings.DATABASE_OWNER_CREDENTIALS["PASSWORD"] if owner else db["PASSWORD"]
    auth = f"{user}:{password}" if password else user
    return f"postgresql://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


# --- loading -----------------------------------------------------------------------------


def patient_id(i: int) -> str:
    return f"bp-{i:05d}"


def family(i: int) -> str:
    return f"Fam{i // 10:04d}"  # ten patients per family name


def org_id(j: int) -> str:
    return f"bo-{j:03d}"


def load_people(org: str, patients: int) -> None:
    store = PostgresStore()
    for j in range(ORGANIZATIONS):
        store.create(
            org,  # type: ignore[arg-type]
            {
                "resourceType": "Organization",
                "name": f"Org{j:03d}",
                "identifier": [{"system": "urn:bench:org", "value": f"O{j:03d}"}],
            },
            resource_id=org_id(j),
        )
    for i in range(patients):
        store.create(
            org,  # type: ignore[arg-type]
            {
                "resourceType": "Patient",
                "identifier": [{"system": "urn:bench:mrn", "value": str(i)}],
                "name": [{"family": family(i), "given": [f"Given{i}"]}],
                "gender": "female" if i % 2 else "male",
                "birthDate": f"{1940 + i % 60}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                "managingOrganization": {"reference": f"Organization/{org_id(i % ORGANIZATIONS)}"},
            },
            resource_id=patient_id(i),
        )


# One statement per batch: the resources and all their index rows, from one series.
# Consecutive observations belong to the same patient, so most index inserts append.
# The SQL text holds constants only (no values from outside): noqa S608.
OBSERVATIONS_SQL = f"""
WITH s AS (
  SELECT 'bx-' || lpad(g::text, 7, '0') AS id,
         'bp-' || lpad(((g / %(per_patient)s::int) %% %(patients)s::int)::text, 5, '0')
           AS patient,
         (%(codes)s::text[])[(g %% 10) + 1] AS code,
         (60 + (g * 7) %% 100)::float8 AS value,
         timestamptz '2020-01-01 00:00:00+00' + (g %% 1000) * interval '1 day'
           + (g %% 24) * interval '1 hour' AS at
  FROM generate_series(%(start)s::int, %(stop)s::int) g
), r AS (
  INSERT INTO fhir_resource (org_id, resource_type, id, version_id, last_updated, content)
  SELECT %(org)s::uuid, 'Observation', id, 1, now(), json_build_object(
    'resourceType', 'Observation', 'id', id,
    'meta', json_build_object('versionId', '1',
      'lastUpdated', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
      'tag', json_build_array(json_build_object('system', '{TENANT_SYSTEM}',
        'code', %(org_text)s::text))),
    'status', 'final',
    'category', json_build_array(json_build_object('coding', json_build_array(
      json_build_object('system', '{CATEGORY}', 'code', 'vital-signs')))),
    'code', json_build_object('coding', json_build_array(
      json_build_object('system', '{LOINC}', 'code', code))),
    'subject', json_build_object('reference', 'Patient/' || patient),
    'effectiveDateTime', to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
    'valueQuantity', json_build_object('value', value::int, 'unit', 'mmHg',
      'system', '{UCUM}', 'code', 'mm[Hg]'))::text
  FROM s
), t AS (
  INSERT INTO fhir_idx_token (org_id, resource_type, id, param, system, code, subject_type,
    subject_id)
  SELECT %(org)s::uuid, 'Observation', id, p.param, p.system, p.code, 'Patient', patient
  FROM s, LATERAL (VALUES
    ('category', '{CATEGORY}', 'vital-signs'), ('code', '{LOINC}', s.code),
    ('status', '', 'final')) p(param, system, code)
), d AS (
  INSERT INTO fhir_idx_date (org_id, resource_type, id, param, low, high)
  SELECT %(org)s::uuid, 'Observation', id, 'date', at, at + interval '999999 microseconds' FROM s
), q AS (
  INSERT INTO fhir_idx_quantity (org_id, resource_type, id, param, low, high, system, code, unit)
  SELECT %(org)s::uuid, 'Observation', id, 'value-quantity', value, value, '{UCUM}', 'mm[Hg]',
    'mmHg'
  FROM s
), f AS (
  INSERT INTO fhir_idx_reference (org_id, resource_type, id, param, target_type, target_id)
  SELECT %(org)s::uuid, 'Observation', id, p, 'Patient', patient
  FROM s, unnest(ARRAY['subject']) p
)
INSERT INTO fhir_idx_composite (org_id, resource_type, id, param, system1, code1, system2,
  code2, low2, high2)
SELECT %(org)s::uuid, 'Observation', id, 'code-value-quantity', '{LOINC}', code, '{UCUM}',
  'mm[Hg]', value, value
FROM s
"""  # noqa: S608


def load_observations(org: str, observations: int, patients: int) -> None:
    with psycopg.connect(database_url()) as conn:
        for start in range(0, observations, BATCH):
            stop = min(start + BATCH, observations) - 1
            with conn.transaction():
                conn.execute("SELECT set_config('clinik.org_id', %s, true)", [org])
                conn.execute(
                    OBSERVATIONS_SQL,  # type: ignore[arg-type]
                    {
                        "org": org,
                        "org_text": org,
                        "start": start,
                        "stop": stop,
                        "patients": patients,
                        "per_patient": max(1, observations // patients),
                        "codes": CODES,
                    },
                )
            print(f"  observations: {stop + 1:,}", file=sys.stderr)


def _stored_rows(conn: Any, resource_id: str) -> IndexRows:
    rows = IndexRows()
    queries = {
        "string": "SELECT param, value, exact FROM fhir_idx_string",
        "token": "SELECT param, system, code FROM fhir_idx_token",
        "date": "SELECT param, low, high FROM fhir_idx_date",
        "number": "SELECT param, low, high FROM fhir_idx_number",
        "quantity": "SELECT param, low, high, system, code, unit FROM fhir_idx_quantity",
        "reference": "SELECT param, target_type, target_id FROM fhir_idx_reference",
        "uri": "SELECT param, value FROM fhir_idx_uri",
        "composite": "SELECT param, system1, code1, system2, code2, text2, low2, high2,"
        " dlow2, dhigh2, low3, high3 FROM fhir_idx_composite",
    }
    for attribute, sql in queries.items():
        found = conn.execute(
            f"{sql} WHERE resource_type = 'Observation' AND id = %s", [resource_id]
        ).fetchall()
        getattr(rows, attribute).update(tuple(r) for r in found)
    return rows


def check_sample(org: str, observations: int) -> None:
    """The generated index rows must be exactly what the application would write."""
    with psycopg.connect(database_url()) as conn, conn.transaction():
        conn.execute("SELECT set_config('clinik.org_id', %s, true)", [org])
        for n in random.sample(range(observations), 5):
            resource_id = f"bx-{n:07d}"
            (content,) = conn.execute(
                "SELECT content FROM fhir_resource WHERE resource_type = 'Observation' AND id = %s",
                [resource_id],
            ).fetchone()
            if extract(json.loads(content)) != _stored_rows(conn, resource_id):
                raise SystemExit(f"generated index rows of {resource_id} differ from extract()")
            subject = json.loads(content)["subject"]["reference"].split("/")
            subjects = conn.execute(
                "SELECT DISTINCT subject_type, subject_id FROM fhir_idx_token"
                " WHERE resource_type = 'Observation' AND id = %s",
                [resource_id],
            ).fetchall()
            if subjects != [tuple(subject)]:  # the subject on the token rows (0008)
                raise SystemExit(f"token rows of {resource_id} lack their subject")


def analyze() -> None:
    tables = ["fhir_resource"] + [f"fhir_idx_{t}" for t in ("string", "token", "date", "reference")]
    tables += ["fhir_idx_quantity", "fhir_idx_composite"]
    try:
        with psycopg.connect(database_url(owner=True), autocommit=True) as conn:
            for table in tables:
                conn.execute(f"VACUUM (ANALYZE) {table}")
    except psycopg.Error as error:
        print(f"ANALYZE as the owner failed ({error}); plans may be off", file=sys.stderr)


# --- plans ----------------------------------------------------------------------------------

# Every kind of search, on the bench data: (type or None for system search, query).
EXPLAINED: dict[str, tuple[str | None, str]] = {
    "string (prefix)": ("Patient", "family=Fam0042"),
    "string :exact": ("Patient", "family:exact=Fam0042"),
    "string :contains": ("Patient", "family:contains=m004"),
    "token code only": ("Patient", "gender=female&_count=5"),
    "token system|code": ("Patient", "identifier=urn:bench:mrn|4242"),
    "token :not": ("Patient", "gender:not=male&_count=5"),
    "token :text": ("Observation", "code:text=systolic"),
    "token _id": ("Patient", "_id=bp-00042,bp-00043"),
    "date eq": ("Patient", "birthdate=1962-03-05"),
    "date gt (range)": ("Observation", "date=gt2022-09-20&_count=5"),
    "date _lastUpdated": ("Patient", "_lastUpdated=gt2000-01-01&_count=5&_total=none"),
    "quantity": ("Observation", "value-quantity=gt158||mm[Hg]&_count=5"),
    "reference + token (benchmark obs)": (
        "Observation",
        f"subject=Patient/bp-01234&code={LOINC}|8480-6",
    ),
    "reference :missing": ("Patient", "organization:missing=true"),
    "composite": ("Observation", f"code-value-quantity={LOINC}|8480-6$gt158&_count=5"),
    "chain, two levels (benchmark chain)": (
        "Observation",
        f"subject.organization.name=Org042&code={LOINC}|8480-6",
    ),
    "_has": ("Patient", f"_has:Observation:subject:code={LOINC}|8480-6&family=Fam0042"),
    "_include": ("Observation", "subject=Patient/bp-01234&_include=Observation:subject"),
    "_revinclude": ("Patient", "_id=bp-00042&_revinclude=Observation:subject&_count=5"),
    "_sort": ("Patient", "family=Fam004&_sort=-birthdate"),
    "system-level (_type)": (None, "_type=Patient,Organization&_id=bp-00042,bo-042"),
}


def explain(org: str, name: str, *, tag_wall: bool = True) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of every statement a search runs, as the application
    role inside a tenant transaction: row-level security applies."""
    resource_type, qs = EXPLAINED[name]
    from urllib.parse import parse_qsl

    query = parse_search(parse_qsl(qs), [resource_type] if resource_type else None)
    captured: list[tuple[str, Any]] = []

    def capture(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not sql.startswith("SELECT set_config") and "pg_type" not in sql:
            captured.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        PostgresStore(tag_wall=tag_wall).search(org, query)  # type: ignore[arg-type]
    plans = []
    with tenant_transaction(org), connection.cursor() as cursor:  # type: ignore[arg-type]
        cursor.execute("SELECT current_user, current_setting('row_security')")
        role, row_security = cursor.fetchone()
        for sql, params in captured:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    header = f"GET {resource_type or ''}?{qs}   (role {role}, row_security {row_security})"
    return header + "\n" + "\n--\n".join(plans)


# --- workloads ------------------------------------------------------------------------------


def workloads(patients: int) -> dict[str, list[str]]:
    rng = random.Random(7)
    families = [f"Fam{n:04d}" for n in range(patients // 10)]
    code = f"{LOINC}|{CODES[0]}"
    return {
        # The floor: a plain read through the same stack (gateway, tenancy, audit).
        "read": [f"/fhir/R4/Patient/{patient_id(rng.randrange(patients))}" for _ in range(2000)],
        "family": [f"/fhir/R4/Patient?family={rng.choice(families)}" for _ in range(2000)],
        "obs": [
            f"/fhir/R4/Observation?subject=Patient/{patient_id(rng.randrange(patients))}"
            f"&code={LOINC}|{rng.choice(CODES)}"
            for _ in range(2000)
        ],
        "chain": [
            f"/fhir/R4/Observation?subject.organization.name=Org{rng.randrange(ORGANIZATIONS):03d}"
            f"&code={code}"
            for _ in range(2000)
        ],
    }


def start(port: int, workers: int, threads: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **BENCH_ENV,
        "WEB_CONCURRENCY": str(workers),
        "WEB_THREADS": str(threads),
        # settings.DEBUG off as in production (bench/nodebug_settings.py)
        "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
    }
    server = subprocess.Popen(
        [
            *(PY, "-m", "gunicorn", "clinik.wsgi", "--config", "bench/gunicorn_conf.py"),
            *("--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"),
        ],
        cwd=ROOT,
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


def check(port: int, key: str, path: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {key}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wrk(port: int, key: str, paths: list[str], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".paths", delete=False) as handle:
        handle.write("\n".join(paths) + "\n")
    env = {**os.environ, "API_KEY": key, "PATHS_FILE": handle.name, "BENCH_DIR": str(BENCH)}
    out = subprocess.run(
        [
            *(
                "wrk",
                f"-t{min(2, args.connections)}",
                f"-c{args.connections}",
                f"-d{args.duration}s",
                "--latency",
            ),
            *("-s", str(BENCH / "search_wrk.lua"), f"http://127.0.0.1:{port}"),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--org")
    parser.add_argument("--key")
    parser.add_argument("--explain-only", action="store_true")
    args = parser.parse_args()
    if args.org and args.key:
        org = {"org_id": args.org, "api_key": args.key}
    else:
        org = create_org("Search bench", "search@bench.test")
        began = time.monotonic()
        load_people(org["org_id"], args.patients)
        print(f"people loaded in {time.monotonic() - began:.0f} s", file=sys.stderr)
        began = time.monotonic()
        load_observations(org["org_id"], args.observations, args.patients)
        print(f"observations loaded in {time.monotonic() - began:.0f} s", file=sys.stderr)
        check_sample(org["org_id"], args.observations)
        analyze()
        print(json.dumps(org), file=sys.stderr)
    for name in EXPLAINED:
        print(f"\n#### {name}\n\n```\n{explain(org['org_id'], name)}\n```")
    rls_only = explain(org["org_id"], "string (prefix)", tag_wall=False)
    print(f"\n#### RLS alone (tag wall off)\n\n```\n{rls_only}\n```")
    if args.explain_only:
        return
    port = 8031
    server = start(port, args.workers, args.threads)
    results = {}
    try:
        for name, paths in workloads(args.patients).items():
            sample = check(port, org["api_key"], paths[0])
            total = sample.get("total", 1)
            wrk(port, org["api_key"], paths, argparse.Namespace(**{**vars(args), "duration": 3}))
            results[name] = {**wrk(port, org["api_key"], paths, args), "total": total}
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\n| workload | hits | req/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['total']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f}"
            f" | {r['p99_ms']:.2f} | {r['errors']} |"
        )
    print(json.dumps({"args": vars(args) | {"key": None}, "results": results}))


if __name__ == "__main__":
    main()
