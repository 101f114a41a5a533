"""Stripe webhooks: the endpoint stores each event once (by its id) and a Celery task
processes it. Processing never trusts the event's copy of an object: it reads the
customer's subscription and the invoice from Stripe's API, so events handled in any
order, or twice, leave the organization exactly as Stripe holds it."""

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from clinik import audit
from clinik.accounts.models import Organization
from clinik.billing import receipts, stripe_api
from clinik.billing.actions import do_assign_plan
from clinik.billing.models import Account, Invoice, Plan, StripeEvent, announce_limits_changed
from clinik.billing.plans import FREE

logger = logging.getLogger("clinik.billing")

HANDLED = frozenset(
    {
        "checkout.session.completed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_failed",
        "customer.updated",
    }
)
# Stripe's statuses of a subscription that still holds its plan.
_LIVE = ("active", "trialing", "past_due", "unpaid")
_DUE = ("past_due", "unpaid")


# One statement in autocommit: a duplicate delivery is the conflict, and no
# transaction, savepoint or model instance is spent on the endpoint's path.
_STORE = """
INSERT INTO billing_stripeevent (event_id, type, object_id, created, received_at, attempts)
VALUES (%s, %s, %s, %s, %s, 0)
ON CONFLICT (event_id) DO NOTHING
RETURNING id
"""
# A stored event no task has processed this long after it arrived is enqueued again
# (the broker was down, the web process died before enqueueing, retries ran out).
SWEEP_AFTER = timedelta(minutes=10)
# A failing event is queued again by the sweeper until it has failed this often (three
# tasks' worth of retries); then it waits for a person (counted in the sweeper's log).
SWEEP_MAX_ATTEMPTS = 27


def store(event: dict[str, Any]) -> int | None:
    """Keep a verified event once; its row id, or None when it was delivered before
    (or is of a type we do not handle). Raises ValueError on a payload that is not
    an event. The caller enqueues processing; the sweeper catches what it misses."""
    try:
        event_id, type_ = str(event["id"]), str(event["type"])
        created = datetime.fromtimestamp(int(event["created"]), UTC)
        object_id = str(event["data"]["object"].get("id", ""))[:100]
    except (KeyError, TypeError, AttributeError, OverflowError, OSError) as error:
        raise ValueError("not an event") from error
    if type_ not in HANDLED:
        return None
    if not event_id or len(event_id) > 100:
        raise ValueError("not an event id")
    with connection.cursor() as cursor:
        cursor.execute(
            _STORE,
            [event_id, type_, object_id, created, timezone.now()],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else None


def unprocessed(now: datetime | None = None, limit: int = 1000) -> list[int]:
    """Stored events still unprocessed SWEEP_AFTER after they arrived, oldest first."""
    before = (now or timezone.now()) - SWEEP_AFTER
    return list(
        StripeEvent.objects.filter(
            processed_at__isnull=True, received_at__lt=before, attempts__lt=SWEEP_MAX_ATTEMPTS
        )
        .order_by("received_at")
        .values_list("pk", flat=True)[:limit]
    )


def stuck_count() -> int:
    """Stored events that failed every attempt the sweeper allows."""
    return StripeEvent.objects.filter(
        processed_at__isnull=True, attempts__gte=SWEEP_MAX_ATTEMPTS
    ).count()


def _when(epoch: Any) -> datetime | None:
    return datetime.fromtimestamp(int(epoch), UTC) if epoch else None


def process(event_pk: int) -> bool:
    """Handle one stored event; True if it was processed now. Concurrent calls for the
    same event take turns on its row; the second finds it done."""
    try:
        with transaction.atomic():
            event = StripeEvent.objects.select_for_update().get(pk=event_pk)
            if event.processed_at is not None:
                return False
            event.attempts += 1
            _handle(event)
            event.processed_at = timezone.now()
            event.save(update_fields=["attempts", "processed_at"])
    except Exception:
        # The failed attempt is counted outside the rolled-back transaction, so the
        # sweeper's bound holds.
        StripeEvent.objects.filter(pk=event_pk).update(attempts=F("attempts") + 1)
        raise
    return True


def _plain(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict())


def _handle(event: StripeEvent) -> None:
    api = stripe_api.client().v1
    if event.type == "checkout.session.completed":
        session = _plain(api.checkout.sessions.retrieve(event.object_id))
        if session.get("customer"):
            sync_customer(str(session["customer"]), session.get("client_reference_id"))
    elif event.type.startswith("customer.subscription."):
        subscription = _plain(api.subscriptions.retrieve(event.object_id))
        sync_customer(str(subscription["customer"]))
    elif event.type.startswith("invoice."):
        invoice = _plain(api.invoices.retrieve(event.object_id))
        account = sync_customer(str(invoice["customer"]))
        if account is not None:
            record_invoice(account, invoice, event.type)
    elif event.type == "customer.updated":
        sync_customer(event.object_id)


def _account_for(customer_id: str, org_hint: str | None) -> Account | None:
    account = Account.objects.select_for_update().filter(stripe_customer_id=customer_id).first()
    if account is not None:
        return account
    customer = _plain(stripe_api.client().v1.customers.retrieve(customer_id))
    org_id = (customer.get("metadata") or {}).get("org_id") or org_hint
    org = Organization.objects.filter(pk=org_id).first() if org_id else None
    if org is None:
        logger.warning("A Stripe customer names no organization of ours; event skipped")
        return None
    from clinik.billing.actions import locked_account

    account = locked_account(org)
    if account.stripe_customer_id and account.stripe_customer_id != customer_id:
        logger.warning("A second Stripe customer for one organization; event skipped")
        return None
    account.stripe_customer_id = customer_id
    account.save(update_fields=["stripe_customer_id", "updated_at"])
    audit.record("billing.details_change", org=org, actor=None, target=("customer", "linked"))
    return account


def _plan_of(subscription: dict[str, Any]) -> Plan | None:
    prices = [item["price"]["id"] for item in subscription["items"]["data"]]
    return Plan.objects.filter(stripe_price_id__in=prices).first()


def sync_customer(customer_id: str, org_hint: str | None = None) -> Account | None:
    """Make the organization's plan, subscription and billing email what Stripe
    holds now (read from the API, whatever event brought us here)."""
    api = stripe_api.client().v1
    account = _account_for(customer_id, org_hint)
    if account is None:
        return None
    org = account.org
    customer = _plain(api.customers.retrieve(customer_id))
    email = str(customer.get("email") or "")
    if email != account.billing_email:
        account.billing_email = email
        account.save(update_fields=["billing_email", "updated_at"])
        audit.record("billing.details_change", org=org, actor=None, target=("customer", "email"))
    listed = api.subscriptions.list(params={"customer": customer_id, "status": "all", "limit": 20})
    live = sorted(
        (_plain(s) for s in listed.data if s.status in _LIVE),
        key=lambda s: s["created"],
        reverse=True,
    )
    subscription = live[0] if live else None
    plan = _plan_of(subscription) if subscription is not None else None
    status = subscription["status"] if subscription is not None else "canceled"
    if subscription is not None and plan is None:
        logger.warning("A subscription with no price of ours: plan left unchanged")
        plan = account.plan
    do_assign_plan(org=org, plan=plan or Plan.objects.get(slug=FREE), actor=None)
    account.refresh_from_db()
    previous = account.subscription_status
    previous_period = (account.current_period_start, account.current_period_end)
    account.stripe_subscription_id = subscription["id"] if subscription is not None else ""
    account.subscription_status = status
    if subscription is not None:
        item = subscription["items"]["data"][0]
        start = item.get("current_period_start") or subscription.get("current_period_start")
        end = item.get("current_period_end") or subscription.get("current_period_end")
        account.current_period_start, account.current_period_end = _when(start), _when(end)
    became_due = status in _DUE and account.past_due_since is None
    if became_due:
        account.past_due_since = timezone.now()
    elif status not in _DUE:
        account.past_due_since = account.fallback_noted_at = None
    account.save()
    if previous != status:
        audit.record("billing.status_change", org=org, actor=None, target=("subscription", status))
    if previous != status or previous_period != (
        account.current_period_start,
        account.current_period_end,
    ):  # the quota counts over the period (clinik.billing.periods)
        announce_limits_changed(org.pk)
    if became_due:
        receipts.send_payment_failed(account)
    return account


def record_invoice(account: Account, invoice: dict[str, Any], event_type: str) -> Invoice:
    """The billing record of an invoice, as Stripe holds it now; the receipt goes out
    once, when it is first seen paid."""
    org = account.org
    lines = invoice.get("lines", {}).get("data") or []
    period = lines[0].get("period", {}) if lines else {}
    tax = sum(int(t.get("amount", 0)) for t in invoice.get("total_taxes") or [])
    values: dict[str, Any] = {
        "org_id": org.pk,
        "org_name": org.name,
        "billing_email": account.billing_email,
        "number": invoice.get("number") or "",
        "status": invoice.get("status") or "",
        "currency": invoice.get("currency") or "usd",
        "total": int(invoice.get("total") or 0),
        "tax": tax,
        "amount_due": int(invoice.get("amount_due") or 0),
        "amount_paid": int(invoice.get("amount_paid") or 0),
        "period_start": _when(period.get("start") or invoice.get("period_start")),
        "period_end": _when(period.get("end") or invoice.get("period_end")),
        "invoice_date": _when(invoice.get("created")) or timezone.now(),
        "hosted_invoice_url": invoice.get("hosted_invoice_url") or "",
        "invoice_pdf": invoice.get("invoice_pdf") or "",
    }
    record, created = Invoice.objects.select_for_update().get_or_create(
        stripe_invoice_id=invoice["id"], defaults=values
    )
    if not created:
        for name in ("status", "total", "tax", "amount_due", "amount_paid", "number"):
            setattr(record, name, values[name])
        record.hosted_invoice_url = values["hosted_invoice_url"]
        record.invoice_pdf = values["invoice_pdf"]
        record.save()
    audit.record(
        "billing.invoice",
        org=org,
        actor=None,
        target=("invoice", record.stripe_invoice_id),
        outcome="failure" if event_type == "invoice.payment_failed" else "success",
    )
    if record.status == "paid" and record.receipt_sent_at is None:
        record.receipt_sent_at = timezone.now()
        record.save(update_fields=["receipt_sent_at"])
        receipts.send_receipt(record)
    return record
