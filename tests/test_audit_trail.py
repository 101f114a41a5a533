"""The audit trail: every operation on record (one INSERT in the operation's
transaction), append-only in the database, sealed into per-organization hash
chains that `verify_audit` checks, erasable ip/user agent, six-year purge."""

import itertools
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any, cast

import psycopg
import pytest
import time_machine
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client

from clinik import audit
from clinik.accounts.models import Invitation, User
from clinik.audit import retention, seal
from clinik.audit.erasure import erase_actor_details, erase_user_details
from clinik.audit.models import AuditAnchor, AuditEvent, AuditSeal
from clinik.keys.actions import do_create_key, do_revoke_key
from clinik.privacy.closure import do_request_closure
from clinik.privacy.deletion import do_request_deletion
from tests.conftest import PASSWORD, Persona
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def events(**filters: Any) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(**filters).order_by("id"))


def one(**filters: Any) -> AuditEvent:
    found = events(**filters)
    assert len(found) == 1, (filters, found)
    return found[0]


# --- the registry and record() ------------------------------------------------------------


def test_every_registered_action_can_be_recorded_and_is_described(owner: Persona) -> None:
    for action, description in audit.ACTIONS.items():
        namespace, _, verb = action.partition(".")
        assert namespace and verb and description, action
        event = audit.record(action, org=owner.org, actor=owner.user, target=("thing", "1"))
        assert event.pk and event.action == action
    assert AuditEvent.objects.filter(org_id=owner.org.pk).count() == len(audit.ACTIONS)
    with pytest.raises(ValueError, match="unregistered"):
        audit.record("fhir.peek", org=owner.org, actor=owner.user)
    with pytest.raises(ValueError, match="outcome"):
        audit.record("fhir.read", org=owner.org, actor=owner.user, outcome="maybe")


def test_record_is_one_insert_in_the_callers_transaction(
    owner: Persona, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(1):
        audit.record("org.update", org=owner.org, actor=owner.user, target=owner.org)
    with pytest.raises(RuntimeError), transaction.atomic():
        audit.record("org.update", org=owner.org, actor=owner.user, target=owner.org)
        raise RuntimeError("the change fails: its audit record goes with it")
    assert AuditEvent.objects.filter(action="org.update").count() == 1


# --- every operation on record -----------------------------------------------------------


def test_sign_in_success_failure_and_sign_out(owner: Persona) -> None:
    client = Client(REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="Firefox/140")
    client.post("/accounts/signin/", {"email": owner.user.email, "password": "wrong password!"})
    client.post("/accounts/signin/", {"email": owner.user.email, "password": PASSWORD})
    client.post("/accounts/signout/")
    failed = one(action="account.signin_failed")
    assert (failed.outcome, failed.ip, failed.user_agent) == (
        "failure",
        "198.51.100.7",
        "Firefox/140",
    )
    signed_in = one(action="account.signin")
    assert (signed_in.actor_type, signed_in.actor_id) == ("user", str(owner.user.pk))
    assert one(action="account.signout").actor_id == str(owner.user.pk)


def test_keys_team_settings_exports_closure_and_deletion(owner: Persona, teammate: Persona) -> None:
    client = owner.client()
    org = owner.org
    key, _ = do_create_key(
        org=org, actor=owner.user, name="ci", scopes="read", expires_at=None, request=None
    )
    do_revoke_key(key=key, actor=owner.user, request=None)
    client.post(f"/o/{org.pk}/team/invite/", {"email": "new@acme.test", "role": "developer"})
    client.post(f"/o/{org.pk}/team/members/{teammate.membership.pk}/role/", {"role": "admin"})
    client.post(f"/o/{org.pk}/team/members/{teammate.membership.pk}/remove/")
    client.post(f"/o/{org.pk}/settings/", {"name": "Acme Health Inc"})
    client.get(f"/o/{org.pk}/audit/export/?format=csv")
    client.get(f"/o/{org.pk}/usage/requests.csv")
    loner = cast(User, UserFactory(email="loner@acme.test"))
    do_request_deletion(user=loner, request=None)
    do_request_closure(org=org, actor=owner.user, request=None)
    expected = {
        "key.create": ("keys.apikey", str(key.pk)),
        "key.revoke": ("keys.apikey", str(key.pk)),
        "member.invite": ("accounts.invitation", None),
        "member.role_change": ("accounts.membership", str(teammate.membership.pk)),
        "member.remove": ("accounts.membership", str(teammate.membership.pk)),
        "org.update": ("accounts.organization", str(org.pk)),
        "audit.export": ("audit.auditexport", ""),
        "usage.export": ("", ""),
        "closure.request": ("privacy.closure", None),
    }
    for action, (target_type, target_id) in expected.items():
        event = one(action=action, org_id=org.pk)
        assert (event.actor_type, event.actor_id) == ("user", str(owner.user.pk)), action
        assert event.target_type == target_type, action
        if target_id is not None:
            assert event.target_id == target_id, action
    assert one(action="account.deletion_request").actor_id == str(loner.pk)


def test_fhir_interactions_are_audited_including_denied_ones(api, owner: Persona) -> None:
    pid = api.post("Patient", {"resourceType": "Patient"}).json()["id"]
    api.get(f"Patient/{pid}", headers={"X-Request-ID": "read-it-1"})
    api.get("Patient/nope")
    api.get("Patient?family=x")
    _key, read_only = do_create_key(
        org=owner.org, actor=owner.user, name="ro", scopes="read", expires_at=None, request=None
    )
    denied = Client().put(
        f"/fhir/R4/Patient/{pid}",
        b"{}",
        "application/fhir+json",
        HTTP_AUTHORIZATION=f"Bearer {read_only}",
        HTTP_X_REQUEST_ID="denied-put-1",
    )
    assert denied.status_code == 403
    Client().get("/fhir/R4/Patient", HTTP_AUTHORIZATION="Bearer nonsense")  # 401: request log only
    trail = [
        (e.action, e.outcome, e.target_type, e.target_id)
        for e in events(org_id=owner.org.pk, action__startswith="fhir.")
    ]
    assert trail == [
        ("fhir.create", "success", "Patient", pid),
        ("fhir.read", "success", "Patient", pid),
        ("fhir.read", "failure", "Patient", "nope"),
        ("fhir.search", "success", "Patient", ""),
        ("fhir.update", "denied", "Patient", pid),
    ]
    assert one(request_id="read-it-1").actor_type == "key"
    assert one(request_id="denied-put-1").outcome == "denied"


def test_staff_actions_in_the_admin_site_are_audited(owner: Persona) -> None:
    staff = cast(
        User,
        UserFactory(email="staff@clinik.test", is_staff=True, is_superuser=True, password=PASSWORD),
    )
    client = Client()
    client.post("/staff/login/", {"username": staff.email, "password": "nope nope nope"})
    client.post("/staff/login/", {"username": staff.email, "password": PASSWORD})
    assert one(action="staff.signin").actor_id == str(staff.pk)
    assert one(action="staff.signin_failed").outcome == "failure"
    invitation, _ = Invitation.issue(owner.org, "x@acme.test", "developer", owner.user)
    response = client.post(f"/staff/accounts/invitation/{invitation.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    event = one(action="staff.delete")
    assert (event.org_id, event.actor_id, event.target_type, event.target_id) == (
        owner.org.pk,
        str(staff.pk),
        "accounts.invitation",
        str(invitation.pk),
    )


# --- append-only ----------------------------------------------------------------------------


def test_the_application_role_cannot_update_or_delete_audit_rows(owner: Persona) -> None:
    event = audit.record("org.update", org=owner.org, actor=owner.user)
    for attempt in (
        lambda: AuditEvent.objects.filter(pk=event.pk).update(action="org.create"),
        lambda: AuditEvent.objects.filter(pk=event.pk).update(ip=None),
        lambda: AuditEvent.objects.filter(pk=event.pk).delete(),
        lambda: AuditSeal.objects.all().delete(),
    ):
        with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
            attempt()
    assert AuditEvent.objects.get(pk=event.pk).action == "org.update"


def _owner_connection() -> psycopg.Connection[Any]:
    params = connection.get_connection_params()
    params.update(
        user=settings.DATABASE_OWNER_CREDENTIALS["USER"],
        password=settings.DATABASE_OWNER_CREDENTIALS["PASSWORD"] or None,
    )
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(
        **{
            k: v
            for k, v in params.items()
            if k in ("dbname", "user", "password", "host", "port", "sslmode")
        }
    )


def test_even_the_owner_role_may_only_erase_ip_and_user_agent() -> None:
    with _owner_connection() as owner_db:
        row = owner_db.execute(
            "INSERT INTO audit_auditevent (time, actor_type, actor_id, action, target_type,"
            " target_id, outcome, request_id, ip, user_agent) VALUES (now(), 'system', '',"
            " 'org.update', '', '', 'success', '', '203.0.113.9', 'ua') RETURNING id"
        ).fetchone()
        assert row is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            owner_db.execute(
                "UPDATE audit_auditevent SET outcome = 'failure' WHERE id = %s", [row[0]]
            )
        owner_db.rollback()


# --- seals and verification ------------------------------------------------------------------


def test_sealing_chains_each_organization_and_verify_passes(
    owner: Persona, outsider: Persona
) -> None:
    for i in range(3):
        audit.record("org.update", org=owner.org, actor=owner.user, target=("n", str(i)))
        audit.record("org.update", org=outsider.org, actor=outsider.user)
    audit.record("account.signin", org=None, actor=owner.user)
    assert seal.seal_all() >= 7
    chain = list(AuditSeal.objects.filter(chain=str(owner.org.pk)).order_by("seq"))
    assert [s.seq for s in chain] == [1, 2, 3] and chain[0].prev_hash == ""
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(chain))
    for name in (str(owner.org.pk), str(outsider.org.pk), seal.NO_ORG):
        checked, broken = seal.verify(name)
        assert broken is None and checked >= 1
    out = StringIO()
    call_command("verify_audit", "--org", str(owner.org.pk), stdout=out)
    assert "audit trail verified" in out.getvalue()
    assert seal.seal_all() == 0  # nothing twice


def test_an_event_committed_late_is_still_sealed(owner: Persona) -> None:
    early = audit.record("org.update", org=owner.org, actor=owner.user)
    later = audit.record("org.update", org=owner.org, actor=owner.user)
    # As if `early`'s transaction were still open during a first sealer run: seal
    # `later` first, then let the sealer find `early` on its next runs.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_sealerstate (id, watermark, pending_max_id, pending_xmax,"
            " updated_at) VALUES (1, %s, 0, '', now())"
            " ON CONFLICT (id) DO UPDATE SET watermark = %s",
            [early.pk, early.pk],
        )
    assert seal.seal() == 1
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_sealerstate SET watermark = %s WHERE id = 1", [early.pk - 1])
    assert seal.seal() == 1
    links = list(AuditSeal.objects.filter(chain=str(owner.org.pk)).order_by("seq"))
    assert [link.event_id for link in links] == [later.pk, early.pk]
    assert seal.verify(str(owner.org.pk)) == (2, None)


@pytest.mark.django_db(transaction=True)
def test_verify_audit_reports_the_first_tampered_row(owner: Persona) -> None:
    first = audit.record("org.update", org=owner.org, actor=owner.user, target=("x", "1"))
    second = audit.record("key.revoke", org=owner.org, actor=owner.user, target=("x", "2"))
    audit.record("key.create", org=owner.org, actor=owner.user, target=("x", "3"))
    seal.seal_all()
    call_command("verify_audit", "--org", str(owner.org.pk), stdout=StringIO())
    erase_actor_details(owner.org.pk)  # the sanctioned change breaks nothing
    call_command("verify_audit", "--org", str(owner.org.pk), stdout=StringIO())
    with _owner_connection() as owner_db:  # an owner who switches the guard off
        owner_db.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        owner_db.execute(
            "UPDATE audit_auditevent SET outcome = 'denied' WHERE id = %s", [second.pk]
        )
        owner_db.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_audit", "--org", str(owner.org.pk), stdout=out)
    assert f"link 2 (event {second.pk}): event changed after sealing" in out.getvalue()
    with _owner_connection() as owner_db:
        owner_db.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_append_only")
        owner_db.execute(
            "UPDATE audit_auditevent SET outcome = 'success' WHERE id = %s", [second.pk]
        )
        owner_db.execute("DELETE FROM audit_auditevent WHERE id = %s", [first.pk])
        owner_db.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_append_only")
    out = StringIO()
    with pytest.raises(CommandError):
        call_command("verify_audit", "--org", str(owner.org.pk), stdout=out)
    assert f"link 1 (event {first.pk}): event missing (row deleted)" in out.getvalue()


# --- erasure and retention --------------------------------------------------------------


def test_erasing_details_blanks_only_ip_and_user_agent(owner: Persona, outsider: Persona) -> None:
    client = Client(REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="Firefox/140")
    client.post("/accounts/signin/", {"email": owner.user.email, "password": PASSWORD})
    audit.record(
        "org.update", org=owner.org, actor=owner.user, request=client.get("/").wsgi_request
    )
    audit.record(
        "org.update", org=outsider.org, actor=outsider.user, request=client.get("/").wsgi_request
    )
    seal.seal_all()
    assert erase_user_details(owner.user.pk) == 2
    assert erase_actor_details(outsider.org.pk) == 1
    assert not AuditEvent.objects.exclude(ip=None).exists()
    assert one(action="account.signin").actor_id == str(owner.user.pk)
    for chain in seal.chains():
        assert seal.verify(chain)[1] is None


def test_purge_removes_events_older_than_six_years_and_keeps_an_anchor(owner: Persona) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=settings.AUDIT_RETENTION_DAYS + 1)
    kept = now - timedelta(days=settings.AUDIT_RETENTION_DAYS - 1)
    for when, label in ((old, "old"), (old, "old"), (kept, "kept")):
        with time_machine.travel(when, tick=False):
            audit.record("org.update", org=owner.org, actor=owner.user, target=("n", label))
    audit.record("org.update", org=owner.org, actor=owner.user, target=("n", "new"))
    seal.seal_all()
    assert retention.purge_expired() == 2
    assert retention.purge_expired() == 0  # idempotent
    left = events(org_id=owner.org.pk)
    assert [e.target_id for e in left] == ["kept", "new"]
    anchor = AuditAnchor.objects.get(chain=str(owner.org.pk))
    assert anchor.seq == 2
    assert seal.verify(str(owner.org.pk)) == (2, None)
    audit.record("org.update", org=owner.org, actor=owner.user)
    seal.seal_all()
    assert seal.verify(str(owner.org.pk)) == (3, None)
    with (
        pytest.raises(DatabaseError, match="six years"),
        transaction.atomic(),
        connection.cursor() as c,
    ):
        c.execute("SELECT audit_purge_chain(%s, 3, now())", [str(owner.org.pk)])
