"""CPU of `POST Observation` (with a subject) in the application process and in its
PostgreSQL backend, for one code tree: what writing the index rows costs.

    .venv/bin/python bench/observation_post_cpu.py --tree . [--requests 300] [--rounds 3]

Run it alternately with --tree pointing at two checkouts (same database, migrated
with the newer one) to compare them. In process, through the full middleware stack
(Django's test client), one request after another for a new organization's key;
the backend's CPU is read from /proc/<pid>/stat of the connection the requests use.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
parser.add_argument("--requests", type=int, default=300)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()
TREE = Path(args.tree).resolve()
sys.path.insert(0, str(TREE))
os.chdir(TREE)
HIGH = str(10**9)
os.environ.update(
    {
        "DEBUG": "true",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMIT_IP_REQUESTS": HIGH,
        "RATE_LIMIT_KEY_REQUESTS": HIGH,
        "RATE_LIMIT_ORG_REQUESTS": HIGH,
        "DJANGO_SETTINGS_MODULE": "bench.nodebug_settings",
    }
)

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402

from bench.common import create_org  # noqa: E402

_TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def _backend_ms(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_MS


def main() -> None:
    org = create_org("Post bench", "post@bench.test")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {org['api_key']}")
    patient = client.post(
        "/fhir/R4/Patient",
        json.dumps({"resourceType": "Patient", "name": [{"family": "Post"}]}),
        content_type="application/fhir+json",
    ).json()["id"]
    body = json.dumps(
        {
            "resourceType": "Observation",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "effectiveDateTime": "2024-01-01T10:00:00Z",
            "valueQuantity": {
                "value": 120,
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
        }
    )

    def send() -> None:
        response = client.post("/fhir/R4/Observation", body, content_type="application/fhir+json")
        assert response.status_code == 201, response.content[:200]

    send()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    app, db = [], []
    for _ in range(args.rounds):
        c0, d0 = time.process_time(), _backend_ms(pid)
        for _ in range(args.requests):
            send()
        app.append((time.process_time() - c0) / args.requests * 1000)
        db.append((_backend_ms(pid) - d0) / args.requests)
    print(
        json.dumps(
            {
                "tree": str(TREE),
                "app_cpu_ms_median": round(statistics.median(app), 3),
                "db_cpu_ms_median": round(statistics.median(db), 3),
                "app_cpu_ms": [round(x, 3) for x in app],
                "db_cpu_ms": [round(x, 3) for x in db],
            }
        )
    )


if __name__ == "__main__":
    main()
