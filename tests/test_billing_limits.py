"""Plan limits beyond requests: concurrent bulk exports per plan, counted race-free
under concurrent kick-offs through the production server, answered by the API with an
OperationOutcome naming the plan, its limit and the upgrade URL, and by the dashboard
with a clear error."""

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from clinik.billing.actions import do_assign_plan
from clinik.billing.models import Plan
from clinik.fhir import export, export_actions
from clinik.gateway import limits
from clinik.gateway.ratelimit import known_keys, limiter
from clinik.privacy.models import ExportJob
from tests.conftest import _api_for
from tests.liveserver import database_url, serve
from tests.stripe_fake import paid_plans

__all__ = ["paid_plans"]

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture(autouse=True)
def _fresh_limiter(settings: Any, tmp_path: Path) -> Any:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    limiter.reset()
    known_keys.clear()
    yield
    known_keys.clear()


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _kick(base: str, key: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    request = urllib.request.Request(
        f"{base}/fhir/R4/$export", headers={**ASYNC, "Authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, _lower(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers), json.loads(error.read())


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_kickoffs_on_a_plan_of_two_start_exactly_two(
    owner, paid_plans, tmp_path
) -> None:
    developer = Plan.objects.get(slug="developer")
    assert developer.max_exports == 2
    do_assign_plan(org=owner.org, plan=developer, actor=None)
    key = _api_for(owner).key
    env = {
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        # Queued, never run: no worker consumes this broker during the test.
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "EXPORT_DIR": str(tmp_path / "exports"),
        "EXPORT_S3_BUCKET": "",
    }
    limits.forget(owner.org.pk)
    answers: list[tuple[int, dict[str, str], dict[str, Any]]] = []
    try:
        with serve(tmp_path, env=env, threads=8) as server:
            barrier = threading.Barrier(10)

            def kick() -> None:
                barrier.wait()
                answers.append(_kick(server.base, key))

            threads = [threading.Thread(target=kick) for _ in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        from clinik.celery import app

        app.control.purge()
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [202, 202] + [429] * 8
    assert ExportJob.objects.filter(org=owner.org).active().count() == 2
    for status, headers, body in answers:
        if status != 429:
            continue
        assert body["resourceType"] == "OperationOutcome"
        issue = body["issue"][0]
        assert issue["code"] == "throttled"
        text = issue["diagnostics"]
        assert "The Developer plan allows 2 concurrent bulk exports" in text
        assert f"{settings.SITE_URL}/o/{owner.org.pk}/billing/" in text
        assert int(headers["retry-after"]) > 0
    connection.close()


def test_a_finished_or_cancelled_export_frees_its_slot(owner, paid_plans) -> None:
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="free"), actor=None)
    limits.forget(owner.org.pk)

    def start() -> ExportJob:
        return export_actions.start_export(
            org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
        )

    first = start()
    with pytest.raises(export.ExportBusy, match="The Free plan allows 1 concurrent"):
        start()
    assert export_actions.cancel_export(job=first, actor=owner.user, request=None)
    second = start()
    ExportJob.objects.filter(pk=second.pk).update(status=ExportJob.Status.COMPLETED)
    start()
    assert ExportJob.objects.filter(org=owner.org).count() == 3


def test_an_unlimited_plan_and_a_raised_limit(owner, paid_plans) -> None:
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="enterprise"), actor=None)
    limits.forget(owner.org.pk)
    for _ in range(6):
        export_actions.start_export(
            org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
        )
    assert ExportJob.objects.filter(org=owner.org).active().count() == 6
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="scale"), actor=None)
    limits.forget(owner.org.pk)  # (what the plan change does after commit)
    with pytest.raises(export.ExportBusy, match="The Scale plan allows 5"):
        export_actions.start_export(
            org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
        )


def test_the_dashboard_says_the_plan_limit(owner, paid_plans) -> None:
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="free"), actor=None)
    limits.forget(owner.org.pk)
    export_actions.start_export(
        org=owner.org, actor=owner.user, params=export.ExportParams(), request=None
    )
    response = owner.client().post(f"/o/{owner.org.pk}/privacy/exports/start/", follow=True)
    page = response.content.decode()
    assert response.status_code == 200
    assert "The Free plan allows 1 concurrent bulk exports" in page
    assert "upgrade the plan on the Billing page" in page
    assert ExportJob.objects.filter(org=owner.org).count() == 1


def test_the_api_kickoff_beyond_the_plan_is_an_operation_outcome(owner, paid_plans) -> None:
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="free"), actor=None)
    limits.forget(owner.org.pk)
    api = _api_for(owner)
    assert api.get("$export", headers=ASYNC).status_code == 202  # queued, not run here
    refused = api.get("$export", headers=ASYNC)
    assert refused.status_code == 429
    assert refused["Content-Type"].startswith("application/fhir+json")
    text = refused.json()["issue"][0]["diagnostics"]
    assert "The Free plan allows 1 concurrent bulk exports" in text
    assert f"/o/{owner.org.pk}/billing/" in text
    assert refused["Retry-After"] == "60"


def test_the_per_minute_limit_says_whose_it_is_and_where_to_upgrade(owner, paid_plans) -> None:
    Plan.objects.filter(slug="free").update(key_requests_per_minute=2)
    do_assign_plan(org=owner.org, plan=Plan.objects.get(slug="free"), actor=None)
    limits.forget(owner.org.pk)
    api = _api_for(owner)
    assert [api.get("Patient").status_code for _ in range(2)] == [200, 200]
    refused = api.get("Patient")
    assert refused.status_code == 429
    text = refused.json()["issue"][0]["diagnostics"]
    assert "the plan allows 2 requests per 60 s for this API key" in text
    assert f"/o/{owner.org.pk}/billing/" in text
    assert int(refused["Retry-After"]) > 0
