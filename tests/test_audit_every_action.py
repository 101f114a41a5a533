"""Policy §7: "Audit logs capture every operation for compliance monitoring." Every
dashboard URL under /o/<org>/ that accepts a POST, done once by an owner, writes at
least one audit record naming that owner (FHIR interactions are walked in
tests/test_audit_trail.py). The walk takes its list of actions from
tests/test_closing_org.py, so a new action without an entry there or here fails."""

from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from clinik.accounts.actions import do_invite
from clinik.audit.models import AuditEvent
from clinik.billing.models import Plan
from clinik.fhir.tenancy import tenant_transaction
from clinik.gateway.actions import do_allow_origin
from clinik.keys.actions import do_create_key
from clinik.privacy.models import ExportJob
from clinik.subscriptions.models import Delivery, Subscription
from tests.conftest import Persona
from tests.stripe_fake import FakeStripe, paid_plans, stripe_fake
from tests.test_closing_org import ALLOWED, REFUSED, _org_urls

__all__ = ["paid_plans", "stripe_fake"]

# In an order where each action still has something to act on; closing comes last,
# then its cancellation.
ORDER = [
    "webhooks_secret",
    "webhooks_ping",
    "webhooks_rotate",
    "webhooks_replay",
    "keys_create",
    "keys_revoke",
    "keys_origin_add",
    "keys_origin_remove",
    "team_invite",
    "team_invite_revoke",
    "team_role",
    "team_remove",
    "org_settings",
    "audit_export_start",
    "privacy_export_cancel",
    "privacy_export_start",
    "billing_checkout",
    "billing_portal",
    "privacy_close",
    "privacy_close_cancel",
]


@pytest.fixture
def everything(owner: Persona, teammate: Persona, rf: Any, settings: Any, tmp_path: Path) -> Any:
    settings.EXPORT_DIR = tmp_path
    settings.EXPORT_S3_BUCKET = ""
    org = owner.org
    key, _ = do_create_key(
        org=org, actor=owner.user, name="k", scopes="read-write", expires_at=None, request=None
    )
    origin = do_allow_origin(org=org, origin="https://app.example", actor=owner.user, request=None)
    invitation = do_invite(
        org=org, email="later@acme.test", role="developer", actor=owner.user, request=rf.get("/")
    )
    job = ExportJob.objects.create(org=org, requested_by_type="user", requested_by_id="1")
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
            secret="",  # made and sealed at the first show, as the trigger leaves it
            created_at=now,
            updated_at=now,
        )
        delivery = Delivery.objects.create(
            org=org, subscription=subscription, status="failed", next_attempt_at=now
        )
    return {
        "org_id": org.pk,
        "key_id": key.pk,
        "origin_id": origin.pk,
        "invitation_id": invitation.pk,
        "member_id": teammate.membership.pk,
        "job_id": job.pk,
        "section": "billing",
        "subscription_id": subscription.pk,
        "delivery_id": delivery.pk,
    }


@pytest.mark.django_db
def test_every_dashboard_action_writes_an_audit_record(
    owner: Persona, everything: dict[str, Any], stripe_fake: FakeStripe
) -> None:
    assert set(ORDER) == set(REFUSED) | ALLOWED
    # Billing is on (Stripe stand-in): lift the Free plan's limits, which are not tested here.
    Plan.objects.update(max_keys=None, max_members=None, max_exports=None)
    urls = _org_urls()
    client = owner.client()
    unaudited = []
    for name in ORDER:
        url = reverse(name, kwargs={arg: everything[arg] for arg in urls[name]})
        before = AuditEvent.objects.filter(org_id=owner.org.pk).order_by("-id").first()
        data = REFUSED.get(name, {})
        if name == "privacy_close":  # renamed by org_settings above
            owner.org.refresh_from_db()
            data = {"confirm_name": owner.org.name}
        response = client.post(url, data)
        assert response.status_code in (200, 204, 302, 303), (name, response.status_code)
        new = AuditEvent.objects.filter(
            org_id=owner.org.pk, id__gt=before.pk if before else 0, actor_type="user"
        )
        if not new.filter(actor_id=str(owner.user.pk)).exists():
            unaudited.append(name)
    assert unaudited == []
