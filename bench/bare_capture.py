"""The SQL the application sends for the benchmark's three requests, captured so the
floor (bench/bare.py) can send exactly the same statements.

    .venv/bin/python bench/bare_capture.py API_KEY PATIENT_ID FAMILY > statements.json

Runs the requests in process through the whole middleware stack (django.test.Client,
bench.nodebug_settings with the query log on), each once to warm up and once under
CaptureQueriesContext, so the captured statements are those of a process that has
seen the key before (the steady state of a server). Prints JSON: for "create",
"read" and "search", the statements in order, with the request's own values (new
id, read id, family, key digest, request id) replaced by @@NAME@@ markers.
"""

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.nodebug_settings"
os.environ.setdefault("DEBUG", "true")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from clinik.keys import tokens  # noqa: E402

CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")

# Statements sent through a cursor are logged with `$1` placeholders (server-side
# binding: Django shows the text psycopg sent); the floor replays them as text, so
# compose them with their values here, as the backend does for queued statements.
_compose = connection.ops.compose_sql  # type: ignore[attr-defined]
connection.ops.last_executed_query = (  # type: ignore[method-assign]
    lambda cursor, sql, params: sql if params is None else _compose(sql, params)
)


def main() -> None:
    key, patient_id, family = sys.argv[1:4]
    client = Client(
        HTTP_AUTHORIZATION=f"Bearer {key}", headers={"X-Request-ID": "benchrequest0001"}
    )
    body = (ROOT / "bench" / "wrk" / "patient.json").read_bytes()
    digest = tokens.digest(key)

    def markers(statements: list[str], **values: str) -> list[str]:
        out = []
        for sql in statements:
            if sql.strip().upper() in CONTROL:
                continue
            for name, value in {**values, "DIGEST": digest, "REQUEST": "benchrequest0001"}.items():
                sql = sql.replace(value, f"@@{name}@@")
            out.append(sql)
        return out

    captured = {}
    for _warm in range(2):
        with CaptureQueriesContext(connection) as queries:
            response = client.post("/fhir/R4/Patient", body, content_type="application/fhir+json")
        assert response.status_code == 201, response.content
    new_id = json.loads(response.content)["id"]
    captured["create"] = markers([q["sql"] for q in queries.captured_queries], ID=new_id)
    for _warm in range(2):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/fhir/R4/Patient/{patient_id}")
        assert response.status_code == 200, response.content
    captured["read"] = markers([q["sql"] for q in queries.captured_queries], ID=patient_id)
    for _warm in range(2):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/fhir/R4/Patient?family={family}")
        assert response.status_code == 200, response.content
    assert json.loads(response.content)["total"] > 0
    captured["search"] = markers(
        [q["sql"] for q in queries.captured_queries], FAMILY=family.lower()
    )
    captured["digest"] = [digest]
    print(json.dumps(captured, indent=1))


if __name__ == "__main__":
    main()
