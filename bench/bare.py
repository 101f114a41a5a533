"""The floor to compare with: bare Django sending exactly the SQL the application
sends for the benchmark's requests, and nothing else.

bench/bare_capture.py records the application's statements for one POST Patient,
one GET Patient/{id} and one GET Patient?family=X (key re-check, resource and
history rows, every index row, the audit row; the read with its audit row; the
search with its total and its audit row), with the request's own values marked.
This app replays them, with the values of each request put back, in one round trip
per request (the fewest possible: one simple-query string, in a transaction when it
writes). No gateway, no validation, no index extraction, no rate limit (Redis), no
request log, no JSON parsing of results: what is left is Django's request handling,
the URL resolver and the database round trip, served by the same server as the app:

    BARE_STATEMENTS=statements.json python -m clinik.serve --app bench.bare:application

It serves the benchmark's key only (any other Authorization is 401).
"""

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import dj_database_url
import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
    DATABASES={
        "default": {
            **dj_database_url.parse(
                os.environ.get("DATABASE_URL", "postgres://clinik@127.0.0.1:5432/clinik"),
                conn_max_age=600,
            ),
        }
    },
)
django.setup()

CONTROL = ("BEGIN", "COMMIT")


def _one_round_trip(statements: list[str], writes: bool) -> str:
    """The statements as the application's database backend logged them, which lists
    a deferred statement alone and again inside the batch that carried it: keep the
    batches, drop the copies, and join everything into one string."""
    kept = [s for n, s in enumerate(statements) if not any(s in t for t in statements[n + 1 :])]
    parts = [p for s in kept for p in s.split(";\n") if p.strip().rstrip(";") not in CONTROL]
    if writes:
        parts = ["BEGIN", *parts, "COMMIT"]
    return ";\n".join(parts)


_CAPTURED = json.loads(Path(os.environ["BARE_STATEMENTS"]).read_text())
CREATE = _one_round_trip(_CAPTURED["create"], writes=True)
READ = _one_round_trip(_CAPTURED["read"], writes=False)
SEARCH = _one_round_trip(_CAPTURED["search"], writes=True)
DIGEST = _CAPTURED["digest"][0]


def _authorized(request: HttpRequest) -> bool:
    key = request.headers.get("Authorization", "")[7:]
    return hashlib.sha256(key.encode()).hexdigest() == DIGEST


def _run(text: str, **values: str) -> list[tuple[Any, ...]]:
    """Send the text with its markers replaced; the rows of its last row set."""
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    connection.ensure_connection()
    rows: list[tuple[Any, ...]] = []
    with connection.connection.cursor() as cursor:
        cursor.execute(text.encode())
        while True:
            if cursor.description is not None:
                rows = cursor.fetchall()
            if not cursor.nextset():
                break
    return rows


def read(request: HttpRequest, rid: str) -> HttpResponse:
    if not _authorized(request):
        return HttpResponse(status=401)
    rows = _run(READ, DIGEST=DIGEST, ID=rid, REQUEST=uuid.uuid4().hex)
    if not rows or rows[0][2] is None:
        return HttpResponse(status=404)
    response = HttpResponse(rows[0][2], content_type="application/fhir+json")
    response["ETag"] = f'W/"{rows[0][0]}"'
    return response


def create_or_search(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        return HttpResponse(status=401)
    if request.method == "GET":
        family = request.GET.get("family", "").lower()
        rows = _run(SEARCH, DIGEST=DIGEST, FAMILY=family, REQUEST=uuid.uuid4().hex)
        total = rows[0][5] if rows else 0
        entries = ",".join('{"resource":' + row[4] + "}" for row in rows if row[4] is not None)
        body = f'{{"resourceType":"Bundle","type":"searchset","total":{total},"entry":[{entries}]}}'
        return HttpResponse(body, content_type="application/fhir+json")
    rid = str(uuid.uuid4())
    _run(CREATE, DIGEST=DIGEST, ID=rid, REQUEST=uuid.uuid4().hex)
    resource = json.loads(request.body)
    resource["id"] = rid
    response = HttpResponse(json.dumps(resource), status=201, content_type="application/fhir+json")
    response["Location"] = f"/fhir/R4/Patient/{rid}/_history/1"
    return response


urlpatterns = [
    path("fhir/R4/Patient/<str:rid>", read),
    path("fhir/R4/Patient", create_or_search),
]

application = get_wsgi_application()
