"""Payment failure → past due (owners emailed, banner) → after the grace period the
Free plan's limits → paid again → the plan's limits. Clinical data is untouched.
Billing records outlive closure and are deleted 7 years after the invoice date."""

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.test import Client
from django.utils import timezone

from clinik.audit.models import AuditEvent
from clinik.billing import tasks
from clinik.billing.models import Account, Invoice
from clinik.gateway.ratelimit import known_keys, limiter
from clinik.privacy.closure import run_closure
from clinik.privacy.models import Closure
from tests.conftest import _api_for
from tests.stripe_fake import deliver, paid_plans, stripe_fake
from tests.test_billing_webhook import _subscribe

__all__ = ["paid_plans", "stripe_fake"]


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Any:
    limiter.reset()
    known_keys.clear()
    yield
    known_keys.clear()


def _fail_payment(fake: Any, sub_id: str, capture: Any) -> str:
    customer = fake.subscriptions[sub_id]["customer"]
    fake.set_subscription(sub_id, status="past_due")
    invoice_id = fake.add_invoice(customer, "open", 2900)
    with capture(execute=True):
        event = fake.event("invoice.payment_failed", fake.invoices[invoice_id])
        assert deliver(Client(), event).status_code == 200
    return invoice_id


def test_payment_failure_grace_then_free_limits_and_clinical_data_untouched(
    owner, stripe_fake, settings, django_capture_on_commit_callbacks
) -> None:
    api = _api_for(owner)
    created = api.post("Patient", {"resourceType": "Patient", "name": [{"family": "Keep"}]})
    patient = created.json()["id"]
    sub_id = _subscribe(owner, stripe_fake, django_capture_on_commit_callbacks)
    mail.outbox.clear()
    _fail_payment(stripe_fake, sub_id, django_capture_on_commit_callbacks)
    account = Account.objects.get(org=owner.org)
    assert account.subscription_status == "past_due" and account.past_due_since
    failed = [m for m in mail.outbox if "Payment failed" in m.subject]
    assert [m.to for m in failed] == [[owner.user.email]]
    page = owner.client().get(f"/o/{owner.org.pk}/billing/")
    assert b"The last payment failed" in page.content
    overview = owner.client().get(f"/o/{owner.org.pk}/")  # on every page of the org
    assert b"The last payment for Acme Health failed" in overview.content
    during = api.get(f"Patient/{patient}")
    assert during.status_code == 200 and '"key";q=1500' in during["RateLimit-Policy"]

    later = timezone.now() + timedelta(days=settings.BILLING_GRACE_DAYS, hours=1)
    with time_machine.travel(later), django_capture_on_commit_callbacks(execute=True):
        assert tasks.end_grace_periods.delay().get() == 1
    with time_machine.travel(later):
        after = api.get(f"Patient/{patient}")
        assert after.status_code == 200  # never blocked
        assert after.json()["name"] == [{"family": "Keep"}]  # never changed
        assert '"key";q=600' in after["RateLimit-Policy"]  # Free's limits
        assert '"quota";q=10000' in after["RateLimit-Policy"]
        page = owner.client().get(f"/o/{owner.org.pk}/billing/")
        assert b"Free limits apply" in page.content
    assert AuditEvent.objects.filter(org_id=owner.org.pk, action="billing.grace_end").count() == 1

    stripe_fake.set_subscription(sub_id, status="active")  # the card was updated
    with django_capture_on_commit_callbacks(execute=True):
        event = stripe_fake.event(
            "customer.subscription.updated", stripe_fake.subscriptions[sub_id]
        )
        deliver(Client(), event)
    assert Account.objects.get(org=owner.org).past_due_since is None
    assert '"key";q=1500' in api.get("Patient")["RateLimit-Policy"]


def test_billing_records_survive_closure_and_are_deleted_after_7_years(
    owner, stripe_fake, django_capture_on_commit_callbacks
) -> None:
    sub_id = _subscribe(owner, stripe_fake, django_capture_on_commit_callbacks)
    customer = stripe_fake.subscriptions[sub_id]["customer"]
    invoice_id = stripe_fake.add_invoice(customer, "paid", 2900)
    with django_capture_on_commit_callbacks(execute=True):
        deliver(Client(), stripe_fake.event("invoice.paid", stripe_fake.invoices[invoice_id]))
    record = Invoice.objects.get(stripe_invoice_id=invoice_id)
    assert (record.org_name, record.amount_paid, record.status) == ("Acme Health", 2900, "paid")
    receipt = next(m for m in mail.outbox if "Receipt" in m.subject)
    assert receipt.to == ["billing@acme.test"]
    assert "$29.00" in receipt.body and record.hosted_invoice_url in receipt.body
    html = getattr(receipt, "alternatives", [])
    assert html and "$29.00" in str(html[0][0])

    with django_capture_on_commit_callbacks(execute=True):
        owner.client().post(f"/o/{owner.org.pk}/privacy/close/", {"confirm_name": "Acme Health"})
    closure = Closure.objects.get(org=owner.org)
    Closure.objects.filter(pk=closure.pk).update(scheduled_for=timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        assert run_closure(closure.pk) == "completed"
    kept = Invoice.objects.get(stripe_invoice_id=invoice_id)
    assert kept.org_name == "Acme Health"  # as it was on the invoice
    assert kept.billing_email == "billing@acme.test"
    assert Account.objects.get(org=owner.org).billing_email == ""  # account data: erased

    issued = kept.invoice_date
    with time_machine.travel(issued + timedelta(days=7 * 365)):
        assert tasks.purge_expired_records.delay().get() == 0
    assert Invoice.objects.filter(pk=kept.pk).exists()
    with time_machine.travel(issued + timedelta(days=7 * 365 + 3)):
        assert tasks.purge_expired_records.delay().get() == 1
        assert tasks.purge_expired_records.delay().get() == 0  # idempotent
    assert not Invoice.objects.filter(pk=kept.pk).exists()
    purge = AuditEvent.objects.get(org_id=owner.org.pk, action="billing.records_purge")
    assert purge.target_id == "1"
