"""A closing organization is read-only (docs/architecture.md): every dashboard action
on it is refused, by the action itself, except cancelling the closure. The walk covers
every URL under /o/<org>/ that accepts a POST, so a new action without an entry here
fails this test."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from clinik.accounts.actions import do_invite
from clinik.accounts.models import Invitation, Membership, Organization, OrganizationReadOnly
from clinik.audit.models import AuditEvent, AuditExport
from clinik.fhir.tenancy import tenant_transaction
from clinik.gateway.actions import do_allow_origin
from clinik.gateway.models import AllowedOrigin
from clinik.keys.actions import do_create_key
from clinik.keys.models import ApiKey
from clinik.privacy.closure import do_request_closure
from clinik.privacy.models import ExportJob
from clinik.subscriptions.models import Delivery, Subscription
from tests.conftest import Persona

pytestmark = pytest.mark.django_db

# POST data that the form accepts, so that the closing state is the only reason to refuse.
REFUSED: dict[str, dict[str, str]] = {
    "org_settings": {"name": "Renamed Health"},
    "team_invite": {"email": "new@acme.test", "role": "developer"},
    "team_invite_revoke": {},
    "team_role": {"role": "admin"},
    "team_remove": {},
    "keys_create": {"name": "late key", "scopes": "read-write", "expires": "never"},
    "keys_revoke": {},
    "keys_origin_add": {"origin": "https://late.example"},
    "keys_origin_remove": {},
    "audit_export_start": {"format": "csv"},
    "privacy_export_start": {},
    "privacy_export_cancel": {},
    "privacy_close": {"confirm_name": "Acme Health"},
    "billing_checkout": {"plan": "developer"},
    "webhooks_ping": {},
    "webhooks_rotate": {},
    "webhooks_replay": {},
}
# the one way back, and Stripe's portal (invoices, cards, cancelling stay reachable)
# and showing a webhook secret once (the only place it can be read)
ALLOWED = {"privacy_close_cancel", "billing_portal", "webhooks_secret"}


@pytest.fixture(autouse=True)
def _export_dir(settings: Any, tmp_path: Path) -> None:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""


def _org_urls() -> dict[str, list[str]]:
    """Every URL pattern under /o/<uuid:org_id>/: its name and the names of its args."""

    def walk(patterns: list[Any], prefix: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for entry in patterns:
            route = prefix + str(entry.pattern)
            if isinstance(entry, URLResolver):
                found |= walk(entry.url_patterns, route)
            elif isinstance(entry, URLPattern) and "<uuid:org_id>" in route and entry.name:
                found[entry.name] = re.findall(r"<(?:\w+:)?(\w+)>", route)
        return found

    return walk(get_resolver().url_patterns, "")


def _state(org: Organization) -> dict[str, Any]:
    return {
        "org": Organization.objects.filter(pk=org.pk).values("name", "status").get(),
        "members": sorted(Membership.objects.filter(org=org).values_list("pk", "role")),
        "invitations": sorted(Invitation.objects.filter(org=org).values_list("pk", flat=True)),
        "keys": sorted(ApiKey.objects.filter(org=org).values_list("pk", "revoked_at")),
        "origins": sorted(AllowedOrigin.objects.filter(org=org).values_list("pk", flat=True)),
        "exports": sorted(ExportJob.objects.filter(org=org).values_list("pk", "status")),
        "audit_exports": AuditExport.objects.filter(org_id=org.pk).count(),
        "audit": AuditEvent.objects.filter(org_id=org.pk).count(),
        "webhooks": _webhooks(org),
    }


def _webhooks(org: Organization) -> Any:
    with tenant_transaction(org.pk):
        return (
            sorted(Subscription.objects.filter(org=org).values_list("pk", "secret")),
            sorted(Delivery.objects.filter(org=org).values_list("pk", flat=True)),
        )


@pytest.fixture
def closing(owner: Persona, teammate: Persona, rf: Any) -> dict[str, Any]:
    """An organization with one of everything, then closed by its owner."""
    org = owner.org
    key, _ = do_create_key(
        org=org, actor=owner.user, name="k", scopes="read-write", expires_at=None, request=None
    )
    origin = do_allow_origin(org=org, origin="https://app.example", actor=owner.user, request=None)
    invitation = do_invite(
        org=org, email="later@acme.test", role="developer", actor=owner.user, request=rf.get("/")
    )
    job = ExportJob.objects.create(org=org, requested_by_type="user", requested_by_id="1")
    event = AuditEvent.objects.filter(org_id=org.pk).first()
    assert event is not None
    audit_export = AuditExport.objects.create(org_id=org.pk, format="csv", filters={})
    now = timezone.now()
    with tenant_transaction(org.pk):
        subscription = Subscription.objects.create(
            org=org,
            resource_id="sub-1",
            version_id=1,
            criteria_type="Observation",
            channel_type="rest-hook",
            endpoint="https://hooks.example/in",
            status="active",
            secret="",
            created_at=now,
            updated_at=now,
        )
        delivery = Delivery.objects.create(
            org=org, subscription=subscription, status="failed", next_attempt_at=now
        )
    do_request_closure(org=org, actor=owner.user, request=None)
    return {
        "org_id": org.pk,
        "key_id": key.pk,
        "origin_id": origin.pk,
        "invitation_id": invitation.pk,
        "member_id": teammate.membership.pk,
        "job_id": job.pk,
        "event_id": event.pk,
        "export_id": audit_export.pk,
        "section": "billing",
        "subscription_id": subscription.pk,
        "delivery_id": delivery.pk,
    }


def test_every_dashboard_action_on_a_closing_organization_is_refused(
    owner: Persona, closing: dict[str, Any]
) -> None:
    client = owner.client()
    accepting_post = set()
    # the one allowed action last: it makes the organization active again
    for name, args in sorted(_org_urls().items(), key=lambda item: item[0] in ALLOWED):
        url = reverse(name, kwargs={arg: closing[arg] for arg in args})
        before = _state(owner.org)
        response = client.post(url, REFUSED.get(name, {}))
        if response.status_code == 405:
            continue  # a page: reading a closing organization is allowed
        accepting_post.add(name)
        if name in ALLOWED:
            continue
        assert name in REFUSED, f"{name} changes an organization: list it in this test"
        assert response.status_code in (302, 403), (name, response.status_code)
        assert _state(owner.org) == before, name
    assert accepting_post == set(REFUSED) | ALLOWED


def test_cancelling_the_closure_stays_possible(owner: Persona, closing: dict[str, Any]) -> None:
    response = owner.client().post(reverse("privacy_close_cancel", args=[owner.org.pk]))
    assert response.status_code == 302
    owner.org.refresh_from_db()
    assert owner.org.status == Organization.Status.ACTIVE
    # ... and the organization is writable again
    response = owner.client().post(
        reverse("keys_origin_add", args=[owner.org.pk]), {"origin": "https://back.example"}
    )
    assert response.status_code == 302
    assert AllowedOrigin.objects.filter(org=owner.org, origin="https://back.example").exists()


def test_the_actions_refuse_with_a_project_exception_celery_does_not_retry(
    owner: Persona, closing: dict[str, Any]
) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: do_create_key(
            org=owner.org,
            actor=owner.user,
            name="k",
            scopes="read-write",
            expires_at=None,
            request=None,
        ),
        lambda: do_allow_origin(
            org=owner.org, origin="https://x.example", actor=owner.user, request=None
        ),
    ]
    for call in calls:
        with pytest.raises(OrganizationReadOnly) as refused:
            call()
        assert not isinstance(refused.value, OSError)  # the tasks auto-retry on OSError
