"""The audit trail at volume: page render times, the sealer's and verifier's speed,
and what audit.record costs per call.

    .venv/bin/python bench/audit_bench.py [--events 2000000] [--runs 15]

Uses the database of bench/usage_page_bench.py (clinik_usage_bench, created and
migrated here). Loads --events audit events for one organization with one INSERT
... SELECT generate_series (a year of FHIR reads, searches, updates and denied
attempts by three keys, plus dashboard actions), then:

1. seals them all (`seal.seal_all`) and verifies the chain, timed;
2. renders the Audit log page as a signed-in owner: first page, a filtered page
   (denied updates), and a page 10,000 events deep (keyset cursor), median/p95;
3. times `audit.record` (one INSERT) against the ORM's create, in process.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DB = "clinik_usage_bench"
os.environ.setdefault("DATABASE_URL", f"postgres://clinik@127.0.0.1:5432/{DB}")
os.environ.setdefault("DATABASE_OWNER_URL", f"postgres://clinik_owner@127.0.0.1:5432/{DB}")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clinik.settings")
os.environ.setdefault("DEBUG", "true")
os.environ.setdefault("LOG_LEVEL", "WARNING")
sys.path.insert(0, str(ROOT))

LOAD_SQL = """
INSERT INTO audit_auditevent (time, org_id, actor_type, actor_id, action, target_type,
                              target_id, outcome, request_id, ip, user_agent)
SELECT %(end)s::timestamptz - (i * 31536000.0 / %(events)s) * interval '1 second',
       %(org)s::uuid, 'key', (%(keys)s::text[])[1 + (i %% 3)],
       (ARRAY['fhir.read','fhir.read','fhir.read','fhir.search','fhir.update','fhir.create',
              'fhir.read','fhir.search','fhir.delete','key.create'])[1 + (i %% 10)],
       'Patient', 'p' || (i %% 100000), CASE WHEN i %% 97 = 0 THEN 'denied' ELSE 'success' END,
       md5(i::text), '203.0.113.7', 'bench-client/1.0'
  FROM generate_series(1::bigint, %(events)s::bigint) AS i
"""


def timed(client, url: str, runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    client.get(url)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--reuse", action="store_true", help="time pages on the loaded events")
    args = parser.parse_args()
    env = {**os.environ, "DEBUG": "true"}
    subprocess.run(
        [sys.executable, "-m", "clinik.lib.services", "bootstrap"], cwd=ROOT, env=env, check=True
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v0"],
        cwd=ROOT,
        check=True,
        env={**env, "CLINIK_DB_AS_OWNER": "1"},
    )
    import django

    django.setup()
    from django.db import connection

    from clinik.accounts.models import Membership, Organization, User
    from clinik.audit import seal

    out: dict = {"events": args.events}
    if args.reuse:
        user = User.objects.get(email="audit-bench@example.com")
        org = Membership.objects.get(user=user).org
        return timings(args, org, user, out)
    with connection.cursor() as cursor:  # a clean table each run
        cursor.execute("SELECT count(*) FROM audit_auditevent")
        if cursor.fetchone()[0]:
            raise SystemExit("audit_auditevent is not empty: TRUNCATE it as the owner first")
    Organization.objects.filter(name="Audit bench").delete()
    User.objects.filter(email="audit-bench@example.com").delete()
    user = User.objects.create_user(email="audit-bench@example.com", password="x" * 12)
    org = Organization.objects.create(name="Audit bench")
    Membership.objects.create(user=user, org=org, role="owner")
    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            LOAD_SQL,
            {
                "end": datetime.now(UTC),
                "events": args.events,
                "org": str(org.pk),
                "keys": ["1", "2", "3"],
            },
        )
        cursor.execute("ANALYZE audit_auditevent")
    out["load_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    sealed = seal.seal_all(batch=20_000)
    out["seal_s"] = round(time.perf_counter() - start, 1)
    out["sealed"] = sealed
    start = time.perf_counter()
    checked, broken = seal.verify(str(org.pk))
    out["verify_s"] = round(time.perf_counter() - start, 1)
    out["verified"] = checked
    assert broken is None, broken
    timings(args, org, user, out)


def timings(args: argparse.Namespace, org: Any, user: Any, out: dict) -> None:
    from django.conf import settings
    from django.test import Client

    from clinik import audit
    from clinik.audit.models import AuditEvent

    settings.DEBUG = False
    client = Client()
    client.force_login(user)
    base = f"/o/{org.pk}/audit/"
    deep = next(
        iter(
            AuditEvent.objects.filter(org_id=org.pk)
            .order_by("-time", "-id")
            .values_list("time", "id")[10_000:10_001]
        )
    )
    pages = {
        "first page": base,
        "denied updates": f"{base}?action=fhir.update&outcome=denied",
        "10,000 deep": f"{base}?before={deep[0].isoformat()}_{deep[1]}",
        "one key, 30 days": f"{base}?actor=key:2&since=2026-01-01T00:00",
    }
    out["pages"] = {label: timed(client, url, args.runs) for label, url in pages.items()}

    from django.db import transaction

    def per_call(fn, n: int = 2000) -> float:  # type: ignore[no-untyped-def]
        """Inside one transaction, as in a FHIR interaction (no commit per call)."""
        with transaction.atomic():
            start = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - start) / n * 1e6

    raw = per_call(
        lambda: audit.record("fhir.read", org=org, actor=("key", "1"), target=("Patient", "x"))
    )
    orm = per_call(
        lambda: AuditEvent.objects.create(
            org_id=org.pk,
            actor_type="key",
            actor_id="1",
            action="fhir.read",
            target_type="Patient",
            target_id="x",
            outcome="success",
        )
    )
    out["record_us"] = {"audit.record (raw INSERT)": round(raw), "ORM create": round(orm)}
    if "seal_s" in out:
        print(
            f"events: {args.events:,}  load {out['load_s']} s  seal {out['seal_s']} s"
            f" ({out['sealed'] / max(out['seal_s'], 0.001):,.0f}/s)  verify {out['verify_s']} s"
        )
    print(f"{'audit page':<20} {'median ms':>10} {'p95 ms':>8}")
    for label, r in out["pages"].items():
        print(f"{label:<20} {r['median_ms']:>10} {r['p95_ms']:>8}")
    print(f"audit.record: {raw:.0f} µs per call; ORM create: {orm:.0f} µs (in a transaction)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
