"""The Audit log page: filters, keyset paging, detail, and the copy of the audit log
(CSV, NDJSON, FHIR Bundle of AuditEvent) of exactly the current filter, streamed or
written by a background job with progress."""

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from clinik import audit
from clinik.audit.models import AuditEvent, AuditExport
from clinik.fhir.validation import validate_resource

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path) -> Any:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    return tmp_path


@pytest.fixture
def trail(owner, outsider) -> list[AuditEvent]:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    made = []
    for i in range(120):
        with time_machine.travel(start + timedelta(minutes=i), tick=False):
            action, outcome = ("fhir.read", "success") if i % 3 else ("fhir.update", "denied")
            made.append(
                audit.record(
                    action,
                    org=owner.org,
                    actor=("key", "7"),
                    target=("Patient", f"p{i}"),
                    outcome=outcome,
                )
            )
    made.append(audit.record("org.update", org=owner.org, actor=owner.user, target=owner.org))
    audit.record("org.update", org=outsider.org, actor=outsider.user, target=outsider.org)
    return made


def test_the_log_lists_newest_first_and_pages_by_keyset(owner, trail) -> None:
    client = owner.client()
    url = f"/o/{owner.org.pk}/audit/"
    first = client.get(url)
    assert first.status_code == 200
    rows = first.context["page"].rows
    assert [e.pk for e in rows] == [e.pk for e in trail[::-1][:50]]
    found = re.search(r'href="\?([^"]*before=[^"]*)"', first.content.decode())
    assert found is not None
    older = found.group(1)
    second = client.get(f"{url}?{older.replace('&amp;', '&')}")
    assert [e.pk for e in second.context["page"].rows] == [e.pk for e in trail[::-1][50:100]]
    newer = second.context["page"].newer
    back = client.get(url, {"after": f"{newer[0].isoformat()}_{newer[1]}"})
    assert [e.pk for e in back.context["page"].rows] == [e.pk for e in trail[::-1][:50]]
    partial = client.get(url, headers={"HX-Request": "true"})
    assert b'id="audit-results"' in partial.content and b"<html" not in partial.content


def test_filters_by_actor_action_target_outcome_and_time(owner, trail) -> None:
    client = owner.client()
    url = f"/o/{owner.org.pk}/audit/"

    def pks(**params: str) -> list[int]:
        return sorted(e.pk for e in client.get(url, params).context["page"].rows)

    assert pks(actor=f"user:{owner.user.pk}") == [trail[-1].pk]
    assert pks(action="org.*") == [trail[-1].pk]
    denied = [e.pk for e in trail if e.outcome == "denied"]
    assert pks(outcome="denied") == denied
    assert pks(action="fhir.update", target_type="Patient") == denied
    assert pks(since="2026-03-01T00:10", until="2026-03-01T00:13") == [e.pk for e in trail[10:13]]
    assert not client.get(url, {"actor": "root:1"}).context["form"].is_valid()


def test_detail_shows_the_event_and_hides_ip_from_developers(owner, teammate, trail) -> None:
    event = audit.record(
        "key.revoke",
        org=owner.org,
        actor=owner.user,
        target=("keys.apikey", "3"),
        request=owner.client().get("/", REMOTE_ADDR="198.51.100.23").wsgi_request,
    )
    url = f"/o/{owner.org.pk}/audit/{event.pk}/"
    page = owner.client().get(url).content.decode()
    assert "key.revoke" in page and "198.51.100.23" in page and owner.user.email in page
    assert "198.51.100.23" not in teammate.client().get(url).content.decode()


def _export(client: Any, org: Any, fmt: str, **params: str) -> bytes:
    response = client.get(f"/o/{org.pk}/audit/export/", {"format": fmt, **params})
    assert response.status_code == 200, response.content
    return response.getvalue()


def test_exports_hold_exactly_the_filtered_events(owner, trail) -> None:
    client = owner.client()
    denied = {str(e.pk) for e in trail if e.outcome == "denied"}
    rows = list(
        csv.DictReader(io.StringIO(_export(client, owner.org, "csv", outcome="denied").decode()))
    )
    assert {r["id"] for r in rows} == denied and rows[0]["action"] == "fhir.update"
    lines = _export(client, owner.org, "ndjson", outcome="denied").decode().splitlines()
    assert {str(json.loads(line)["id"]) for line in lines} == denied
    bundle = json.loads(_export(client, owner.org, "fhir", outcome="denied"))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [entry["resource"] for entry in bundle["entry"]]
    assert {r["id"] for r in resources} == denied
    for resource in resources:
        assert (
            validate_resource(resource, resource_type="AuditEvent", resource_id=resource["id"])
            == []
        )
    assert resources[0]["entity"][0]["what"]["reference"].startswith("Patient/")
    assert resources[0]["action"] == "U" and resources[0]["outcome"] == "4"
    assert AuditEvent.objects.filter(org_id=owner.org.pk, action="audit.export").count() == 3


def test_large_exports_run_in_the_background_with_progress(
    owner, trail, settings, django_capture_on_commit_callbacks
) -> None:
    settings.AUDIT_EXPORT_INLINE_MAX = 10
    client = owner.client()
    offer = client.get(
        f"/o/{owner.org.pk}/audit/export/", {"format": "ndjson", "action": "fhir.read"}
    )
    assert offer.status_code == 200 and b"Prepare the export" in offer.content
    with django_capture_on_commit_callbacks(execute=True):
        started = client.post(
            f"/o/{owner.org.pk}/audit/exports/", {"format": "ndjson", "action": "fhir.read"}
        )
    export = AuditExport.objects.get(org_id=owner.org.pk)
    assert started["Location"] == f"/o/{owner.org.pk}/audit/exports/{export.pk}/"
    assert (export.status, export.total, export.written) == ("done", 80, 80)
    status = client.get(started["Location"], headers={"HX-Request": "true"})
    assert b"hx-trigger" not in status.content and b"Ready: 80 events" in status.content
    download = client.get(f"/o/{owner.org.pk}/audit/exports/{export.pk}/download/")
    lines = b"".join(download.streaming_content).decode().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(
        e.pk for e in trail if e.action == "fhir.read"
    )


def test_a_running_export_polls_until_it_is_done(owner) -> None:
    export = AuditExport.objects.create(
        org_id=owner.org.pk, format="csv", status="running", total=100, written=40
    )
    page = owner.client().get(
        f"/o/{owner.org.pk}/audit/exports/{export.pk}/", headers={"HX-Request": "true"}
    )
    assert b'hx-trigger="every 1s"' in page.content and b'value="40"' in page.content


@pytest.mark.parametrize(
    "path",
    ["", "{event}/", "export/?format=csv", "exports/{export}/", "exports/{export}/download/"],
)
def test_outsiders_get_404_and_wrong_methods_405(owner, outsider, trail, path: str) -> None:
    export = AuditExport.objects.create(org_id=owner.org.pk, format="csv")
    url = f"/o/{owner.org.pk}/audit/" + path.format(event=trail[0].pk, export=export.pk)
    assert outsider.client().get(url).status_code == 404
    assert owner.client().post(url).status_code == 405
    assert owner.client().get(f"/o/{owner.org.pk}/audit/exports/").status_code == 405
    assert (
        outsider.client().post(f"/o/{owner.org.pk}/audit/exports/", {"format": "csv"}).status_code
        == 404
    )


def test_outsiders_see_none_of_another_organizations_trail(owner, outsider, trail) -> None:
    own = outsider.client().get(f"/o/{outsider.org.pk}/audit/").context["page"].rows
    assert [e.org_id for e in own] == [outsider.org.pk]
    assert outsider.client().get(f"/o/{outsider.org.pk}/audit/{trail[0].pk}/").status_code == 404
    lines = _export(outsider.client(), outsider.org, "ndjson").decode().splitlines()
    # Its own trail only (the export itself is on record before the file is written).
    assert {json.loads(line)["action"] for line in lines} == {"org.update", "audit.export"}


def test_developers_may_read_but_not_export(teammate, trail) -> None:
    client = teammate.client()
    assert client.get(f"/o/{teammate.org.pk}/audit/").status_code == 200
    assert client.get(f"/o/{teammate.org.pk}/audit/export/", {"format": "csv"}).status_code == 403
