"""The organization's Data & privacy page: exports with live progress, closure and
its cancellation. Every view: 404 for outsiders, 405 for the wrong method, 403 for
roles that may not act."""

from pathlib import Path

import pytest

from clinik.accounts.models import Organization
from clinik.fhir import export, export_actions
from clinik.fhir.store import get_store
from clinik.privacy.models import Closure, ExportJob

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path: Path) -> Path:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    return tmp_path


def _url(org, tail: str = "") -> str:
    return f"/o/{org.pk}/privacy/{tail}"


def _job(persona, **fields) -> ExportJob:
    return ExportJob.objects.create(
        org=persona.org,
        requested_by_type="user",
        requested_by_id=str(persona.user.pk),
        **fields,
    )


# --- the page and its fragment --------------------------------------------------------


def test_page_renders_for_every_member_and_hides_clinical_content(owner, teammate) -> None:
    get_store().create(owner.org.pk, {"resourceType": "Patient", "name": [{"family": "Zebediah"}]})
    job = export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
    )
    export.run_export(job.pk)
    for persona in (owner, teammate):
        response = persona.client().get(_url(owner.org))
        assert response.status_code == 200
        body = response.content.decode()
        assert "Bulk export" in body and "Patient 1" in body
        assert "Zebediah" not in body
        assert f"$export-poll-status?_jobId={job.pk}" in body
    assert "Close Acme Health" in owner.client().get(_url(owner.org)).content.decode()
    developer_page = teammate.client().get(_url(owner.org)).content.decode()
    assert "Close Acme Health" not in developer_page
    assert 'action="/o/' + str(owner.org.pk) + '/privacy/exports/start/"' not in developer_page


def test_page_is_private(owner, outsider, client) -> None:
    assert outsider.client().get(_url(owner.org)).status_code == 404
    assert owner.client().post(_url(owner.org)).status_code == 405
    assert client.get(_url(owner.org)).status_code == 302


def test_fragment_polls_while_a_job_runs_and_stops_when_done(owner) -> None:
    job = _job(owner, status="running")
    client = owner.client()
    running = client.get(_url(owner.org, "exports/"), headers={"HX-Request": "true"})
    assert running.status_code == 200
    body = running.content.decode()
    assert 'hx-trigger="every 2s"' in body and "<html" not in body
    assert 'id="exports"' in body
    page = client.get(_url(owner.org)).content.decode()
    assert 'hx-trigger="every 2s"' in page
    ExportJob.objects.filter(pk=job.pk).update(status="completed")
    done = client.get(_url(owner.org, "exports/")).content.decode()
    assert "hx-trigger" not in done and 'id="exports"' in done


def test_fragment_is_private(owner, outsider) -> None:
    assert outsider.client().get(_url(owner.org, "exports/")).status_code == 404
    assert owner.client().post(_url(owner.org, "exports/")).status_code == 405


# --- starting and cancelling exports ------------------------------------------------------


def test_admin_starts_an_export(admin, django_capture_on_commit_callbacks) -> None:
    get_store().create(admin.org.pk, {"resourceType": "Patient"})
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.client().post(_url(admin.org, "exports/start/"))
    assert response.status_code == 302
    job = ExportJob.objects.get(org=admin.org)
    assert job.status == "completed" and job.counts == {"Patient": 1}
    assert (job.requested_by_type, job.requested_by_id) == ("user", str(admin.user.pk))


def test_one_export_at_a_time_from_the_dashboard(owner) -> None:
    _job(owner, status="running")
    response = owner.client().post(_url(owner.org, "exports/start/"), follow=True)
    assert "allows 1 concurrent bulk exports" in response.content.decode()
    assert ExportJob.objects.filter(org=owner.org).count() == 1


def test_export_start_access(owner, teammate, outsider) -> None:
    assert teammate.client().post(_url(owner.org, "exports/start/")).status_code == 403
    assert outsider.client().post(_url(owner.org, "exports/start/")).status_code == 404
    assert owner.client().get(_url(owner.org, "exports/start/")).status_code == 405
    assert not ExportJob.objects.exists()


def test_a_closing_org_starts_no_export(owner) -> None:
    Organization.objects.filter(pk=owner.org.pk).update(status="closing")
    owner.client().post(_url(owner.org, "exports/start/"))
    assert not ExportJob.objects.exists()


def test_cancel_an_export(owner, teammate, outsider) -> None:
    job = _job(owner, status="running")
    path = _url(owner.org, f"exports/{job.pk}/cancel/")
    assert teammate.client().post(path).status_code == 403
    assert outsider.client().post(path).status_code == 404
    theirs = _job(outsider, status="running")
    assert owner.client().post(_url(owner.org, f"exports/{theirs.pk}/cancel/")).status_code == 404
    assert owner.client().get(path).status_code == 405
    assert owner.client().post(path).status_code == 302
    assert ExportJob.objects.get(pk=job.pk).status == "cancelled"
    assert ExportJob.objects.get(pk=theirs.pk).status == "running"


# --- closure ------------------------------------------------------------------------------


def test_closure_needs_the_exact_name(owner) -> None:
    response = owner.client().post(_url(owner.org, "close/"), {"confirm_name": "acme health"})
    assert response.status_code == 400
    assert "not the organization" in response.content.decode()
    owner.org.refresh_from_db()
    assert owner.org.status == "active" and not Closure.objects.exists()


def test_owner_closes_and_cancels(owner) -> None:
    client = owner.client()
    response = client.post(_url(owner.org, "close/"), {"confirm_name": "Acme Health"}, follow=True)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Acme Health is closing" in body and "Cancel the closure" in body
    owner.org.refresh_from_db()
    assert owner.org.status == "closing"
    assert client.post(_url(owner.org, "close/cancel/")).status_code == 302
    owner.org.refresh_from_db()
    assert owner.org.status == "active"
    assert Closure.objects.get(org=owner.org).status == "cancelled"
    assert client.post(_url(owner.org, "close/cancel/")).status_code == 404  # nothing open


def test_only_owners_close(owner, admin, teammate, outsider) -> None:
    data = {"confirm_name": "Acme Health"}
    assert admin.client().post(_url(owner.org, "close/"), data).status_code == 403
    assert teammate.client().post(_url(owner.org, "close/"), data).status_code == 403
    assert outsider.client().post(_url(owner.org, "close/"), data).status_code == 404
    assert owner.client().get(_url(owner.org, "close/")).status_code == 405
    assert not Closure.objects.exists()


def test_only_owners_cancel_a_closure(owner, admin, outsider) -> None:
    owner.client().post(_url(owner.org, "close/"), {"confirm_name": "Acme Health"})
    assert admin.client().post(_url(owner.org, "close/cancel/")).status_code == 403
    assert outsider.client().post(_url(owner.org, "close/cancel/")).status_code == 404
    assert owner.client().get(_url(owner.org, "close/cancel/")).status_code == 405
    assert Closure.objects.get(org=owner.org).status == "pending"


def test_a_running_deletion_cannot_be_cancelled(owner) -> None:
    client = owner.client()
    client.post(_url(owner.org, "close/"), {"confirm_name": "Acme Health"})
    Closure.objects.filter(org=owner.org).update(status="running")
    response = client.post(_url(owner.org, "close/cancel/"), follow=True)
    assert "already started" in response.content.decode()
    owner.org.refresh_from_db()
    assert owner.org.status == "closing"
