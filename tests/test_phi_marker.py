"""One planted PHI marker, end to end (policy §3 "We do not access, analyze, or use PHI
except as strictly necessary", §5 "PostHog — for anonymized product analytics (no
PHI)"; docs/privacy.md). Resources carrying a unique marker go through every API path:
create, update, patch, conditional create, search (GET and POST), reads with the marker
in parameters, validation and parse errors, batch and transaction bundles, history,
delete, bulk export with a _typeFilter, a subscription whose criteria carry the marker,
its change notification and a ping. Then every place that is not the clinical store
is searched: every database table except the FHIR store's resource/history tables
(the subscriptions' tables behind row-level security included), the request-log buffer
and the cache in Redis, the captured application logs and stderr, the PostgreSQL
server's log, the emails that reached a real SMTP server, the events that reached the
PostHog stand-in, the webhook notifications and the dashboard's pages."""

import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit
from uuid import uuid4

import orjson
import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.test import override_settings

from clinik.fhir.export import purge_expired_exports
from clinik.fhir.tenancy import tenant_transaction
from clinik.privacy import analytics
from clinik.privacy.models import ExportJob
from clinik.subscriptions import dispatch
from clinik.subscriptions.models import Subscription
from clinik.subscriptions.tasks import dispatch_subscriptions
from clinik.usage import requestlog, store
from tests.conftest import Api, Persona, _api_for
from tests.pglog import ServerLog, admin
from tests.posthog_server import PostHogServer
from tests.smtp_server import SmtpServer, free_port
from tests.test_db_errors import locking
from tests.webhook_receiver import Receiver, serving

# Where PHI belongs: the PostgreSQL FHIR store's resources, their versions and their
# search index (fhir_idx_*). Its other tables (erasure queue, idempotency) are searched.
CLINICAL_TABLES = {"fhir_resource", "fhir_history"}
CLINICAL_PREFIX = "fhir_idx_"
CANCELLED = "canceling statement due to statement timeout"
POST_PATIENT = {"method": "POST", "url": "Patient"}
MARKER = f"Zq{uuid4().hex[:12]}"


@pytest.fixture
def posthog() -> Iterator[PostHogServer]:
    server = PostHogServer().start()
    with override_settings(POSTHOG_API_KEY="phc_marker", POSTHOG_HOST=server.url):
        yield server
    server.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    server.start()
    with override_settings(MAILERS=server.mailers()):
        yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serving() as running:
        yield running


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    with admin() as session:
        log = ServerLog(session)
        log.mark()
        yield log


def _patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": MARKER, "given": [f"{MARKER}given"]}],
        "identifier": [{"system": "urn:mrn", "value": f"MRN-{MARKER}"}],
        "telecom": [{"system": "email", "value": f"{MARKER}@patient.test"}],
        "birthDate": "1961-02-03",
        **extra,
    }


def _api_paths(api: Api, capture: Any, settings: Any) -> None:
    headers = {"X-Patient-Note": MARKER, "Referer": f"https://app.test/?q={MARKER}"}
    created = api.post("Patient", _patient(), headers=headers)
    assert created.status_code == 201, created.content
    pid = created.json()["id"]
    updated = _patient(id=pid, text={"status": "generated", "div": f"<div>{MARKER}</div>"})
    assert api.put(f"Patient/{pid}", updated, headers=headers).status_code == 200
    patch = [{"op": "replace", "path": "/birthDate", "value": "1961-02-04"}]
    assert api.patch(f"Patient/{pid}", patch, headers=headers).status_code == 200
    conditional = {**headers, "If-None-Exist": f"family={MARKER}"}
    assert api.post("Patient", _patient(), headers=conditional).status_code == 200
    again = {**headers, "Idempotency-Key": f"idem-{uuid4().hex}"}
    assert api.post("Patient", _patient(), headers=again).status_code == 201
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": MARKER},
        "subject": {"reference": f"Patient/{pid}"},
        "valueString": MARKER,
    }
    assert api.post("Observation", observation).status_code == 201

    searches = [
        f"Patient?family={MARKER}",
        f"Patient?identifier=urn:mrn|MRN-{MARKER}&_count=5",
        f"Patient?name={MARKER}&_sort=family",
        f"Observation?code:text={MARKER}&_include=Observation:subject",
        f"Patient/{pid}?_elements={MARKER}",
        f"Patient/{pid}/_history?_since={MARKER}",  # a 400: not an instant
        f"Patient?birthdate={MARKER}",  # a 400: not a date
        f"Patient?{MARKER}=1",  # unknown parameter
        f"Patient?family:{MARKER}=x",  # unknown modifier
        f"Patient?_id={MARKER}",
        f"{MARKER}?name=x",  # unknown resource type
    ]
    for path in searches:
        assert api.get(path, headers=headers).status_code < 500, path
    form = api.send(
        "POST",
        "Patient/_search",
        f"family={MARKER}",
        headers=headers,
        content_type="application/x-www-form-urlencoded",
    )
    assert form.status_code == 200

    # refusals: a validation error, unparsable JSON, a wrong type, an oversized body
    invalid = {**_patient(), "gender": MARKER, f"x{MARKER}": 1}
    assert api.post("Patient", invalid, headers=headers).status_code == 400
    assert api.post("Patient", '{"name": "' + MARKER, headers=headers).status_code == 400
    assert api.post("Observation", _patient(), headers=headers).status_code == 400
    huge = json.dumps({**_patient(), "note": MARKER * 500_000})
    assert api.post("Patient", huge, headers=headers).status_code == 413

    transaction_bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": f"Patient?family={MARKER}"}},
        ],
    }
    assert api.post("", transaction_bundle, headers=headers).status_code == 200
    failing_transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": {**_patient(), "gender": MARKER}, "request": POST_PATIENT},
        ],
    }
    assert api.post("", failing_transaction, headers=headers).status_code == 400
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": f"Patient?family={MARKER}"}},
            {"request": {"method": "GET", "url": f"Patient?birthdate={MARKER}"}},
            {"resource": {"resourceType": "Patient", "gender": MARKER}, "request": POST_PATIENT},
        ],
    }
    response = api.post("", batch, headers=headers)
    assert response.status_code == 200, response.content

    # a search the database cancels (its error reaches the PostgreSQL server's log)
    usual = settings.API_STATEMENT_TIMEOUT_MS
    settings.API_STATEMENT_TIMEOUT_MS = 300
    with locking():
        cancelled = api.get(f"Patient?family={MARKER}&identifier=urn:x|{MARKER}", headers=headers)
    assert cancelled.status_code == 400 and cancelled.json()["issue"][0]["code"] == "too-costly"
    settings.API_STATEMENT_TIMEOUT_MS = usual

    assert api.get(f"Patient/{pid}/_history").status_code == 200
    assert api.delete(f"Patient/{pid}").status_code in (200, 204)
    assert api.delete(f"Patient?family={MARKER}&birthdate=1961-02-03").status_code < 500

    # bulk export with the marker in a _typeFilter, downloaded, then expired and purged
    type_filter = quote(f"Observation?code:text={MARKER}", safe="")
    with capture(execute=True):
        kickoff = api.get(
            f"$export?_type=Observation&_typeFilter={type_filter}",
            headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
        )
    assert kickoff.status_code == 202, kickoff.content
    status = urlsplit(kickoff["Content-Location"])
    manifest = api.get(f"{status.path[len('/fhir/R4/') :]}?{status.query}").json()
    [output] = manifest["output"]
    url = urlsplit(output["url"])
    download = api.get(
        f"{url.path[len('/fhir/R4/') :]}?{url.query}", headers={"Accept": "application/fhir+ndjson"}
    )
    assert MARKER.encode() in b"".join(download.streaming_content)  # the customer's own data
    job = ExportJob.objects.get(org_id=api.org.pk)
    ExportJob.objects.filter(pk=job.pk).update(expires_at=job.created_at)
    assert purge_expired_exports() == 1


def _subscription_paths(owner: Persona, api: Api, receiver: Receiver, capture: Any) -> None:
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "tests",
        "criteria": f"Patient?family={MARKER}",
        "channel": {"type": "rest-hook", "endpoint": receiver.url},
    }
    created = api.post("Subscription", body)
    assert created.status_code == 201, created.content
    broken = {**body, "criteria": f"Patient?{MARKER}=x"}
    assert api.post("Subscription", broken).status_code == 400
    dispatch.check_subscriptions()
    mirror = Subscription.objects.get(org=owner.org, resource_id=created.json()["id"])
    assert mirror.status == "active"
    assert api.post("Patient", _patient()).status_code == 201
    dispatch_subscriptions()
    with capture(execute=True):
        ping = owner.client().post(f"/o/{owner.org.pk}/webhooks/{mirror.pk}/ping/")
    assert ping.status_code == 302
    assert len(receiver.requests) == 2  # the change notification and the ping


def _dashboard(owner: Persona, capture: Any) -> list[str]:
    client = owner.client()
    org = f"/o/{owner.org.pk}"
    with capture(execute=True):  # a security email and a PostHog event
        client.post(f"{org}/keys/new/", {"name": "marker", "scopes": "read", "expires": "90"})
    pages = [
        f"{org}/usage/?range=24h",
        f"{org}/usage/requests.csv?range=24h",
        f"{org}/audit/",
        f"{org}/audit/export/?format=csv",
        f"{org}/audit/export/?format=ndjson",
        f"{org}/audit/export/?format=fhir",
        f"{org}/webhooks/",
        f"{org}/privacy/",
        f"{org}/keys/",
    ]
    texts = []
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        texts.append(response.getvalue().decode())
    return texts


def _database() -> dict[str, str]:
    found: dict[str, str] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, c.relrowsecurity FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " ORDER BY 1"
        )
        tables = cursor.fetchall()
    names = {name for name, _ in tables}
    assert names >= CLINICAL_TABLES and {"notify_emailrecord", "fhir_idempotency"} <= names
    for table, walled in tables:
        if table in CLINICAL_TABLES or table.startswith(CLINICAL_PREFIX):
            continue
        query = f'SELECT t::text FROM "{table}" t'  # noqa: S608 (catalog names)
        if walled:  # read as each tenant: row-level security admits one at a time
            rows: list[str] = []
            for org_id in _org_ids():
                with tenant_transaction(org_id), connection.cursor() as cursor:
                    cursor.execute(query)
                    rows.extend(row[0] for row in cursor.fetchall())
        else:
            with connection.cursor() as cursor:
                cursor.execute(query)
                rows = [row[0] for row in cursor.fetchall()]
        found[table] = "\n".join(rows)
    return found


def _org_ids() -> list[Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM accounts_organization")
        return [row[0] for row in cursor.fetchall()]


def _redis() -> str:
    chunks: list[str] = []
    urls = {django_settings.REDIS_URL, django_settings.USAGE_REDIS_URL}
    for url in urls:
        client = redis.Redis.from_url(url, decode_responses=False)
        for key in client.scan_iter(count=1000):
            found = client.type(key)
            kind = found.decode() if isinstance(found, bytes) else str(found)
            chunks.append(str(key))
            if kind == "string":
                chunks.append(str(client.get(key)))
            elif kind == "list":
                chunks.extend(str(item) for item in client.lrange(key, 0, -1))
            elif kind == "hash":
                chunks.extend(str(item) for item in client.hgetall(key).items())
            elif kind in ("set", "zset"):
                members = client.smembers(key) if kind == "set" else client.zrange(key, 0, -1)
                chunks.extend(str(item) for item in members)
    return "\n".join(chunks)


@pytest.mark.django_db(transaction=True)
def test_a_planted_phi_marker_reaches_nothing_but_the_clinical_store(
    owner: Persona,
    posthog: PostHogServer,
    smtp: SmtpServer,
    receiver: Receiver,
    server_log: ServerLog,
    settings: Any,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    settings.EXPORT_POLL_MIN_SECONDS = 0
    settings.SUBSCRIPTIONS_ALLOW_PRIVATE_ENDPOINTS = True
    caplog.set_level(logging.DEBUG)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # the SMTP stand-in's own
    capture = django_capture_on_commit_callbacks
    api = _api_for(owner)

    _api_paths(api, capture, settings)
    _subscription_paths(owner, api, receiver, capture)
    requestlog.flush()
    buffered = _redis()
    store.drain()
    pages = _dashboard(owner, capture)
    analytics.flush()

    places: dict[str, str] = {
        **{f"table {name}": text for name, text in _database().items()},
        "redis (request-log buffer, cache, rate limits)": buffered + _redis(),
        "application logs": caplog.text,
        "stderr and stdout": "".join(capfd.readouterr()),
        "postgresql server log": "\n".join(
            server_log.wait_for(lambda lines: any(CANCELLED in line for line in lines))
        ),
        "emails": "\n".join(message.as_string() for message in smtp.messages),
        "posthog": posthog.raw(),
        "webhook notifications": "\n".join(
            f"{r.headers}\n{r.body.decode('utf-8', 'replace')}" for r in receiver.requests
        ),
        "dashboard pages": "\n".join(pages),
    }
    # the places searched are not empty: the search would find the marker there
    assert smtp.messages and posthog.events() and len(receiver.requests) == 2
    assert "usage_requestlog" in " ".join(places) and places["table audit_auditevent"]
    assert places["table usage_requestlog"].count("\n") >= 30
    assert CANCELLED in places["postgresql server log"]
    leaks = {place for place, text in places.items() if MARKER.lower() in text.lower()}
    assert leaks == set()
    for payload in receiver.requests:  # id-only notifications carry no content
        assert all("resource" not in entry for entry in orjson.loads(payload.body)["entry"])
