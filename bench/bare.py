"""The floor to compare with: bare Django serving the same two requests with only the
essential SQL on the same tables — key lookup, then the row read, or the insert of
the resource with its history and audit rows. No gateway, validation or tenancy
helpers; one transaction per request. Served by gunicorn exactly like the app:

    gunicorn bench.bare:application --config clinik/gunicorn_conf.py --bind 127.0.0.1:8002
"""

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime

import dj_database_url
import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.db import connection, transaction
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


def _org_for(request: HttpRequest) -> str | None:
    key = request.headers.get("Authorization", "")[7:]
    digest = hashlib.sha256(key.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, org_id FROM keys_apikey WHERE key_hash = %s AND revoked_at IS NULL",
            [digest],
        )
        row = cursor.fetchone()
    return str(row[1]) if row else None


def read(request: HttpRequest, rid: str) -> HttpResponse:
    org = _org_for(request)
    if org is None:
        return HttpResponse(status=401)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('clinik.org_id', %s, true)", [org])
        cursor.execute(
            "SELECT version_id, content FROM fhir_resource"
            " WHERE org_id = %s AND resource_type = 'Patient' AND id = %s",
            [org, rid],
        )
        row = cursor.fetchone()
        cursor.execute(
            "INSERT INTO audit_auditevent (time, org_id, actor_type, actor_id, action,"
            " target_type, target_id, outcome, request_id, user_agent)"
            " VALUES (now(), %s, 'key', '1', 'fhir.read', 'Patient', %s, 'success', '', '')",
            [org, rid],
        )
    if row is None:
        return HttpResponse(status=404)
    response = HttpResponse(row[1], content_type="application/fhir+json")
    response["ETag"] = f'W/"{row[0]}"'
    return response


def create(request: HttpRequest) -> HttpResponse:
    org = _org_for(request)
    if org is None:
        return HttpResponse(status=401)
    resource = json.loads(request.body)
    rid = str(uuid.uuid4())
    now = datetime.now(UTC)
    resource["id"] = rid
    resource["meta"] = {"versionId": "1", "lastUpdated": now.isoformat()}
    content = json.dumps(resource)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('clinik.org_id', %s, true)", [org])
        cursor.execute(
            "INSERT INTO fhir_resource (org_id, resource_type, id, version_id, last_updated,"
            " content) VALUES (%s, 'Patient', %s, 1, %s, %s)",
            [org, rid, now, content],
        )
        cursor.execute(
            "INSERT INTO fhir_history (org_id, resource_type, id, version_id, last_updated,"
            " method, content) VALUES (%s, 'Patient', %s, 1, %s, 'create', %s)",
            [org, rid, now, content],
        )
        cursor.execute(
            "INSERT INTO audit_auditevent (time, org_id, actor_type, actor_id, action,"
            " target_type, target_id, outcome, request_id, user_agent)"
            " VALUES (now(), %s, 'key', '1', 'fhir.create', 'Patient', %s, 'success', '', '')",
            [org, rid],
        )
    response = HttpResponse(content, status=201, content_type="application/fhir+json")
    response["Location"] = f"/fhir/R4/Patient/{rid}/_history/1"
    return response


urlpatterns = [
    path("fhir/R4/Patient/<str:rid>", read),
    path("fhir/R4/Patient", create),
]

application = get_wsgi_application()
