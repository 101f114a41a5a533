"""Account closure: the request (keys revoked, members told, read-only), cancel, and
the deletion job, checked with SQL across every table that has an org_id column.

The kill tests run the job in a real subprocess and SIGKILL it at a step boundary,
or while it is blocked inside the store's purge; the rerun must reach the same end."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import time_machine
from django.apps import apps
from django.conf import settings as django_settings
from django.core import mail
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from clinik.accounts.models import Membership, Organization, User
from clinik.audit.erasure import erase_actor_details
from clinik.audit.models import AuditEvent
from clinik.fhir import export, export_actions
from clinik.fhir.store import get_store
from clinik.fhir.tenancy import tenant_transaction
from clinik.keys.models import ApiKey
from clinik.privacy import closure as closure_module
from clinik.privacy.closure import do_cancel_closure, do_request_closure, run_closure
from clinik.privacy.models import LEASE, Closure, ExportJob
from clinik.privacy.tasks import deletion_safety_net_now
from clinik.usage.models import HourlyUsage
from tests.factories import MembershipFactory, UserFactory

ROOT = Path(__file__).resolve().parent.parent
# The audit trail and its copies, the closure record, and request/error logs (their
# daily partitions too), which age out after 90 days. Nothing else may keep a row.
KEPT_TABLES = ("audit_", "privacy_closure", "usage_requestlog", "usage_errorlog", "billing_")


@pytest.fixture(autouse=True)
def _export_dir(settings, tmp_path: Path) -> Path:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    return tmp_path


def _org_tables() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND column_name = 'org_id' ORDER BY table_name"
        )
        return [row[0] for row in cursor.fetchall()]


def _rows_per_table(org_id) -> dict[str, int]:
    """Every table with an org_id column, read inside the tenant's transaction so
    row-level security admits the tenant's rows."""
    counts = {}
    with tenant_transaction(org_id), connection.cursor() as cursor:
        for table in _org_tables():
            cursor.execute(f"SELECT count(*) FROM {table} WHERE org_id = %s", [org_id])  # noqa: S608
            counts[table] = cursor.fetchone()[0]
    return counts


def _populate(owner, outsider, api) -> dict[str, Any]:
    """A lived-in organization: resources with history, a deleted one, search index
    rows, a finished export on disk, cache and rate-limit entries, audit rows with
    IP addresses, a teammate who is only here and an admin who is also elsewhere."""
    store = get_store()
    org = owner.org
    pid = store.create(org.pk, {"resourceType": "Patient", "name": [{"family": "Secret"}]}).id
    store.update(org.pk, {"resourceType": "Patient", "gender": "male"}, pid)
    store.create(
        org.pk,
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "glucose"},
            "subject": {"reference": f"Patient/{pid}"},
        },
    )
    gone = store.create(org.pk, {"resourceType": "Patient"}).id
    store.delete(org.pk, "Patient", gone)
    theirs = store.create(outsider.org.pk, {"resourceType": "Patient"}).id
    job = export_actions.start_export(
        org=org, actor=owner.user, params=export.ExportParams(), request=None
    )
    export.run_export(job.pk)  # in autocommit tests the eager worker already ran it
    job.refresh_from_db()
    assert job.status == "completed"
    cache.set(f"something:{org.pk}", "cached")
    HourlyUsage.objects.create(
        org_id=org.pk,
        bucket=timezone.now().replace(minute=0, second=0, microsecond=0),
        route="/fhir/R4/Patient",
        method="GET",
        status=200,
        requests=3,
        response_bytes=900,
        latency_us_sum=3000,
        hist=[3],
    )
    assert api.get("Patient").status_code in (200, 404)  # leaves rate-limit buckets behind
    teammate = UserFactory(email="dev@acme.test", name="Devon Dev")
    MembershipFactory(user=teammate, org=org, role="developer")
    elsewhere = UserFactory(email="admin@acme.test", name="Ada Admin")
    MembershipFactory(user=elsewhere, org=org, role="admin")
    MembershipFactory(user=elsewhere, org=outsider.org, role="developer")
    return {"patient": pid, "theirs": theirs, "teammate": teammate, "elsewhere": elsewhere}


def _request_closure(owner, django_capture_on_commit_callbacks) -> Closure:
    client = owner.client()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/o/{owner.org.pk}/privacy/close/",
            {"confirm_name": owner.org.name},
            REMOTE_ADDR="203.0.113.7",
            HTTP_USER_AGENT="Mozilla/5.0 test",
        )
    assert response.status_code == 302
    return Closure.objects.get(org=owner.org)


def _assert_closed(org_id, facts: dict[str, Any], export_dir: Path, outsider) -> None:
    leftovers = {
        t: n for t, n in _rows_per_table(org_id).items() if n and not t.startswith(KEPT_TABLES)
    }
    assert leftovers == {}
    assert {"fhir_resource", "fhir_history", "fhir_erasure", "fhir_idx_token"} <= set(_org_tables())
    org = Organization.objects.get(pk=org_id)
    assert (org.name, org.status) == ("", "closed")
    assert not [p for p in export_dir.rglob("*") if p.is_file()]
    assert cache.get(f"something:{org_id}") is None
    client = redis.Redis.from_url(django_settings.GATEWAY_REDIS_URL)
    assert list(client.scan_iter(match=f"*{org_id}*")) == []
    trail = AuditEvent.objects.filter(org_id=org_id)
    assert trail.filter(action="closure.request").exists()
    assert trail.filter(action="closure.complete").exists()
    assert not trail.exclude(ip=None).exists() and not trail.exclude(user_agent="").exists()
    teammate = User.objects.get(pk=facts["teammate"].pk)
    assert teammate.email == f"erased-{teammate.pk}@erased.invalid" and teammate.name == ""
    assert not teammate.is_active and not teammate.has_usable_password()
    elsewhere = User.objects.get(pk=facts["elsewhere"].pk)
    assert elsewhere.email == "admin@acme.test" and elsewhere.is_active
    assert Membership.objects.filter(user=elsewhere).count() == 1
    assert get_store().read(outsider.org.pk, "Patient", facts["theirs"]) is not None
    closure = Closure.objects.get(org_id=org_id)
    assert closure.status == "completed" and closure.completed_at is not None
    assert closure.notify_emails == [] and closure.org_name == ""
    assert "fhir_history" in closure.deleted and "users_erased" in closure.deleted


def _due(closure: Closure):
    return time_machine.travel(closure.scheduled_for + timedelta(minutes=1), tick=False)


@pytest.mark.django_db
def test_closure_request_revokes_keys_notifies_members_and_freezes_the_org(
    owner, teammate, api, django_capture_on_commit_callbacks
) -> None:
    other_key, _ = ApiKey.issue(
        org=owner.org, name="ci", scopes="read", expires_at=None, created_by=owner.user
    )
    closure = _request_closure(owner, django_capture_on_commit_callbacks)
    owner.org.refresh_from_db()
    assert owner.org.status == "closing" and closure.status == "pending"
    assert closure.scheduled_for == closure.requested_at + timedelta(days=7)
    assert closure.deadline == closure.requested_at + timedelta(days=30)
    assert not ApiKey.objects.filter(org=owner.org, revoked_at=None).exists()
    revoked = AuditEvent.objects.filter(action="key.revoke", org_id=owner.org.pk)
    assert revoked.count() == 2 and {e.target_id for e in revoked} >= {str(other_key.pk)}
    notices = [m for m in mail.outbox if "is closing" in m.subject]
    assert sorted(to for m in notices for to in m.to) == ["dev@acme.test", "owner@acme.test"]
    assert all("Secret" not in notice.body for notice in notices)
    assert api.get("Patient").status_code == 401  # its key is revoked


@pytest.mark.django_db
def test_gateway_refuses_writes_of_a_closing_org(owner, django_capture_on_commit_callbacks) -> None:
    from tests.conftest import Api

    _request_closure(owner, django_capture_on_commit_callbacks)
    _key, plaintext = ApiKey.issue(
        org=owner.org, name="late", scopes="read-write", expires_at=None, created_by=None
    )
    late = Api(plaintext, owner.org)
    response = late.post("Patient", {"resourceType": "Patient"})
    assert response.status_code == 403
    assert "closing" in response.json()["issue"][0]["diagnostics"]
    assert late.get("Patient").status_code != 403


@pytest.mark.django_db
def test_only_one_closure_at_a_time(owner) -> None:
    do_request_closure(org=owner.org, actor=owner.user, request=None)
    with pytest.raises(closure_module.ClosureRefused):
        do_request_closure(org=owner.org, actor=owner.user, request=None)


@pytest.mark.django_db
def test_cancel_brings_the_org_back_and_keeps_keys_revoked(
    owner, api, django_capture_on_commit_callbacks
) -> None:
    closure = do_request_closure(org=owner.org, actor=owner.user, request=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert do_cancel_closure(closure=closure, actor=owner.user, request=None)
    owner.org.refresh_from_db()
    assert owner.org.status == "active"
    assert not ApiKey.objects.filter(org=owner.org, revoked_at=None).exists()
    assert "was cancelled" in mail.outbox[-1].subject
    with _due(closure):
        assert run_closure(closure.pk) == "skipped"
    assert not do_cancel_closure(closure=closure, actor=owner.user, request=None)


@pytest.mark.django_db
def test_the_job_waits_for_its_grace_period(owner) -> None:
    closure = do_request_closure(org=owner.org, actor=owner.user, request=None)
    assert run_closure(closure.pk) == "skipped"
    with time_machine.travel(closure.scheduled_for - timedelta(minutes=1), tick=False):
        assert run_closure(closure.pk) == "skipped"
    assert Closure.objects.get(pk=closure.pk).status == "pending"


@pytest.mark.django_db
def test_closure_deletes_every_trace_of_phi_and_account_data(
    owner, outsider, api, _export_dir, django_capture_on_commit_callbacks
) -> None:
    facts = _populate(owner, outsider, api)
    before = _rows_per_table(owner.org.pk)
    assert before["fhir_history"] >= 4 and before["fhir_erasure"] == 1
    assert before["fhir_idx_token"] > 0 and before["privacy_exportjob"] == 1
    assert before["usage_hourlyusage"] == 1
    assert [p for p in _export_dir.rglob("*") if p.is_file()]
    closure = _request_closure(owner, django_capture_on_commit_callbacks)
    signed_in = owner.client()
    assert signed_in.get(f"/o/{owner.org.pk}/privacy/").status_code == 200
    mail.outbox.clear()
    with _due(closure):
        assert run_closure(closure.pk) == "completed"
    _assert_closed(owner.org.pk, facts, _export_dir, outsider)
    owner_row = User.objects.get(pk=owner.user.pk)
    assert not owner_row.is_active and owner_row.name == ""
    [done] = mail.outbox
    assert done.to == ["owner@acme.test"] and "is closed" in done.subject
    counted = AuditEvent.objects.filter(org_id=owner.org.pk, action="closure.deleted")
    kinds = {e.target_type: int(e.target_id) for e in counted}
    assert kinds["fhir_resource"] == before["fhir_resource"]
    assert kinds["fhir_history"] == before["fhir_history"]
    assert kinds["export_files"] == 2 and kinds["users_erased"] == 2
    with _due(closure):
        assert run_closure(closure.pk) == "skipped"  # done: nothing more happens
    _assert_closed(owner.org.pk, facts, _export_dir, outsider)
    assert signed_in.get(f"/o/{owner.org.pk}/privacy/").status_code == 302  # signed out


@pytest.mark.django_db
def test_safety_net_runs_a_closure_whose_deadline_passed(owner, outsider) -> None:
    long_ago = timezone.now() - timedelta(days=31)
    with time_machine.travel(long_ago, tick=False):
        lost = do_request_closure(org=owner.org, actor=owner.user, request=None)
    get_store().create(owner.org.pk, {"resourceType": "Patient"})
    early = do_request_closure(org=outsider.org, actor=outsider.user, request=None)
    results = deletion_safety_net_now()
    assert results == {f"closure:{lost.pk}": "completed"}
    assert Closure.objects.get(pk=lost.pk).status == "completed"
    assert Closure.objects.get(pk=early.pk).status == "pending"
    leftovers = {t: n for t, n in _rows_per_table(owner.org.pk).items() if n}
    assert all(t.startswith(KEPT_TABLES) for t in leftovers), leftovers


@pytest.mark.django_db
def test_safety_net_resumes_a_job_whose_worker_died(owner) -> None:
    closure = do_request_closure(org=owner.org, actor=owner.user, request=None)
    Closure.objects.filter(pk=closure.pk).update(
        status="running",
        scheduled_for=timezone.now() - timedelta(days=1),
        lease_until=timezone.now() + timedelta(minutes=5),
        steps_done=["capture"],
    )
    assert deletion_safety_net_now() == {}  # a live worker holds it
    Closure.objects.filter(pk=closure.pk).update(lease_until=timezone.now() - timedelta(1))
    assert deletion_safety_net_now() == {f"closure:{closure.pk}": "completed"}


@pytest.mark.django_db
def test_closure_waits_while_an_export_worker_still_writes(owner) -> None:
    closure = do_request_closure(org=owner.org, actor=owner.user, request=None)
    job = ExportJob.objects.create(
        org=owner.org,
        requested_by_type="user",
        requested_by_id="1",
        status="cancelled",
        lease_until=closure.scheduled_for + timedelta(hours=1),
    )
    with _due(closure):
        assert run_closure(closure.pk) == "deferred"
    ExportJob.objects.filter(pk=job.pk).update(lease_until=None)
    with _due(closure):
        assert run_closure(closure.pk) == "completed"


@pytest.mark.django_db
def test_every_model_naming_an_organization_is_deleted_or_kept_on_purpose() -> None:
    naming = {
        model
        for model in apps.get_models()
        for f in model._meta.get_fields()
        if (f.is_relation and f.many_to_one and f.related_model is Organization)
        or getattr(f, "attname", "") == "org_id"
    }
    listed = (
        set(closure_module.DELETED_WITH_ACCOUNT)
        | set(closure_module.AGING_OUT)
        | set(closure_module.KEPT_AFTER_CLOSURE)
    )
    assert naming == listed


@pytest.mark.django_db
def test_erase_actor_details_blanks_only_that_orgs_rows(owner, outsider) -> None:
    from clinik import audit

    for org in (owner.org, outsider.org):
        for _ in range(3):
            AuditEvent.objects.create(
                org_id=org.pk,
                actor_type="user",
                actor_id="1",
                action="org.update",
                outcome="success",
                ip="198.51.100.4",
                user_agent="curl/8",
            )
    assert audit.ACTIONS  # the registry is untouched by erasure
    assert erase_actor_details(owner.org.pk) == 3
    assert erase_actor_details(owner.org.pk) == 0
    assert AuditEvent.objects.filter(org_id=outsider.org.pk, ip="198.51.100.4").count() == 3
    assert AuditEvent.objects.filter(org_id=owner.org.pk).count() == 3


# --- killed and rerun -----------------------------------------------------------------

_RUNNER = """
import os, sys
import django
django.setup()
from clinik.privacy.closure import run_closure

def checkpoint(name):
    print(name, flush=True)
    if name == sys.argv[2]:
        sys.stdin.readline()  # wait here until killed

print("result", run_closure(int(sys.argv[1]), checkpoint=checkpoint), flush=True)
"""


def _database_url() -> str:
    s = connection.settings_dict
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    host, port = s["HOST"] or "127.0.0.1", s["PORT"] or 5432
    return f"postgres://{s['USER']}{password}@{host}:{port}/{s['NAME']}"


def _start_runner(closure_id: int, stop_at: str, export_dir: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "clinik.settings",
        "DATABASE_URL": _database_url(),
        "EXPORT_DIR": str(export_dir),
        "EXPORT_S3_BUCKET": "",
        "EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend",
    }
    return subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(closure_id), stop_at],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL


def _closing_org(owner, outsider, api, django_capture_on_commit_callbacks) -> tuple:
    facts = _populate(owner, outsider, api)
    closure = _request_closure(owner, django_capture_on_commit_callbacks)
    Closure.objects.filter(pk=closure.pk).update(scheduled_for=timezone.now())
    return facts, closure


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "stop_at",
    ["capture", "exports:files", "fhir", "account:membership", "account:user", "audit_details"],
)
def test_killed_at_any_step_and_rerun_ends_the_same(
    owner, outsider, api, _export_dir, django_capture_on_commit_callbacks, stop_at: str
) -> None:
    facts, closure = _closing_org(owner, outsider, api, django_capture_on_commit_callbacks)
    runner = _start_runner(closure.pk, stop_at, _export_dir)
    for line in runner.stdout:  # type: ignore[union-attr]
        if line.strip() == stop_at:
            break
    else:
        pytest.fail(f"never reached {stop_at}: {runner.stderr.read()}")  # type: ignore[union-attr]
    _kill(runner)
    halfway = Closure.objects.get(pk=closure.pk)
    assert halfway.status == "running"
    assert halfway.lease_until is not None and halfway.lease_until > timezone.now()
    assert run_closure(closure.pk) == "skipped"  # the dead worker's claim has not lapsed
    with time_machine.travel(timezone.now() + LEASE + timedelta(minutes=1), tick=False):
        assert run_closure(closure.pk) == "completed"
    _assert_closed(owner.org.pk, facts, _export_dir, outsider)


@pytest.mark.django_db(transaction=True)
def test_killed_inside_the_store_purge_and_rerun_ends_the_same(
    owner, outsider, api, _export_dir, django_capture_on_commit_callbacks
) -> None:
    facts, closure = _closing_org(owner, outsider, api, django_capture_on_commit_callbacks)
    org_id = str(owner.org.pk)
    with psycopg.connect(_database_url()) as blocker:
        # Hold one current resource row: the purge deletes every history version,
        # then blocks on this row's DELETE, mid-purge, where it is killed.
        blocker.execute("SELECT set_config('clinik.org_id', %s, true)", [org_id])
        blocker.execute(
            "SELECT 1 FROM fhir_resource WHERE org_id = %s LIMIT 1 FOR UPDATE", [org_id]
        )
        runner = _start_runner(closure.pk, "never", _export_dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with connection.cursor() as cursor:
                cursor.execute(
                    # The DELETE may travel after the tenant's set_config in one query
                    # string (clinik/lib/pgbackend): match it anywhere in the text.
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND pid <> pg_backend_pid() AND query LIKE '%%DELETE FROM fhir_resource%%'"
                )
                if cursor.fetchone()[0]:
                    break
            time.sleep(0.05)
        else:
            runner.kill()
            pytest.fail("the purge never blocked")
        _kill(runner)
        blocker.rollback()
    rows = _rows_per_table(owner.org.pk)
    assert rows["fhir_history"] == 0 and rows["fhir_resource"] > 0  # killed halfway
    with time_machine.travel(timezone.now() + LEASE + timedelta(minutes=1), tick=False):
        assert run_closure(closure.pk) == "completed"
    _assert_closed(owner.org.pk, facts, _export_dir, outsider)
