"""Plans, each organization's billing account, Stripe events, invoices (the billing
records kept 7 years) and the meter reports of overage.

No card data anywhere: cards are entered on Stripe's pages only. No PHI: an invoice
keeps amounts, dates, Stripe ids and the organization's name and billing email."""

from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.dispatch import Signal
from django.utils import timezone

from clinik.accounts.models import Organization
from clinik.lib.money import money

limits_changed = Signal()
"""Sent after commit with `org_id` when what an organization may do changed (plan,
subscription status, end of a grace period), or None when a plan itself changed;
the gateway drops its cached limits."""


def announce_limits_changed(org_id: Any) -> None:
    transaction.on_commit(partial(limits_changed.send, sender=Account, org_id=org_id))


_UNLIMITED = "Empty means unlimited."


class Plan(models.Model):
    """A plan is data: staff edit plans in the admin; a data migration seeds Free,
    Developer, Scale and Enterprise."""

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=60)
    monthly_price_cents = models.PositiveIntegerField(default=0)
    currency = models.CharField(max_length=3, default="usd")
    stripe_price_id = models.CharField(
        max_length=100, blank=True, help_text="The flat monthly price (Checkout's first item)."
    )
    stripe_overage_price_id = models.CharField(
        max_length=100, blank=True, help_text="The metered price tied to the requests meter."
    )
    org_requests_per_minute = models.PositiveIntegerField()
    key_requests_per_minute = models.PositiveIntegerField()
    included_requests = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="API requests included per month. " + _UNLIMITED
    )
    overage_per_1000_cents = models.PositiveIntegerField(
        default=0,
        help_text="Price of 1,000 requests beyond the included amount; 0 refuses them (429).",
    )
    max_keys = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    max_members = models.PositiveIntegerField(null=True, blank=True, help_text=_UNLIMITED)
    max_exports = models.PositiveIntegerField(
        null=True, blank=True, help_text="Concurrent bulk exports. " + _UNLIMITED
    )
    is_public = models.BooleanField(
        default=True, help_text="Offered on the Billing page (Enterprise is set by staff)."
    )
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "id"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        announce_limits_changed(None)  # staff edited a plan: every organization's

    @property
    def hard_quota(self) -> bool:
        return self.included_requests is not None and self.overage_per_1000_cents == 0

    @property
    def price_display(self) -> str:
        if not self.is_public and not self.monthly_price_cents:
            return "Custom"
        return money(self.monthly_price_cents, self.currency)

    @property
    def overage_display(self) -> str:
        if self.hard_quota or self.included_requests is None:
            return ""
        return money(self.overage_per_1000_cents, self.currency) + " per 1,000 extra requests"

    @property
    def is_paid(self) -> bool:
        return bool(self.stripe_price_id)

    def overage_cents(self, requests: int) -> int:
        if self.included_requests is None or self.hard_quota:
            return 0
        extra = max(0, requests - self.included_requests)
        return -(-extra * self.overage_per_1000_cents // 1000)


class Account(models.Model):
    """An organization's billing state: created when a plan is first assigned or a
    Stripe customer first needed. Kept after closure, like the invoices."""

    org = models.OneToOneField(Organization, models.PROTECT, related_name="billing")
    plan = models.ForeignKey(Plan, models.PROTECT, related_name="+")
    stripe_customer_id = models.CharField(max_length=100, blank=True, db_index=True)
    stripe_subscription_id = models.CharField(max_length=100, blank=True)
    subscription_status = models.CharField(max_length=30, blank=True)
    """Stripe's status of the subscription: active, past_due, unpaid, canceled, ..."""
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    past_due_since = models.DateTimeField(null=True, blank=True)
    fallback_noted_at = models.DateTimeField(null=True, blank=True)
    """When the end of the grace period was audited (once per past-due episode)."""
    billing_email = models.EmailField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"billing of {self.org_id}"

    @property
    def grace_ends_at(self) -> datetime | None:
        if self.past_due_since is None:
            return None
        return self.past_due_since + timedelta(days=settings.BILLING_GRACE_DAYS)

    def in_fallback(self, now: datetime | None = None) -> bool:
        """Past due beyond the grace period: Free's limits apply until paid."""
        ends = self.grace_ends_at
        return ends is not None and (now or timezone.now()) >= ends


class StripeEvent(models.Model):
    """A webhook event, stored once by its id; processing re-reads the object from
    Stripe, so no payload (and no customer detail) is kept."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=100, blank=True)
    created = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["received_at"], name="billing_event_received"),
            # the sweeper's: only the (few) rows no task has processed yet
            models.Index(
                fields=["received_at"],
                condition=models.Q(processed_at__isnull=True),
                name="billing_event_unprocessed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class Invoice(models.Model):
    """A billing record (policy §6: kept 7 years, through account closure). The
    organization is named by id (no foreign key), with its name and billing email as
    they were when the invoice was issued."""

    stripe_invoice_id = models.CharField(max_length=100, unique=True)
    org_id = models.UUIDField()
    org_name = models.CharField(max_length=100)
    billing_email = models.EmailField(blank=True)
    number = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20)
    currency = models.CharField(max_length=3)
    total = models.BigIntegerField(default=0)
    tax = models.BigIntegerField(default=0)
    amount_due = models.BigIntegerField(default=0)
    amount_paid = models.BigIntegerField(default=0)
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    invoice_date = models.DateTimeField()
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    invoice_pdf = models.URLField(max_length=500, blank=True)
    receipt_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["org_id", "-invoice_date"], name="billing_invoice_org"),
            models.Index(fields=["invoice_date"], name="billing_invoice_date"),
        ]
        ordering = ["-invoice_date", "-id"]

    def __str__(self) -> str:
        return self.number or self.stripe_invoice_id

    @property
    def total_display(self) -> str:
        return money(self.total, self.currency)


class MeterReport(models.Model):
    """Overage reported to Stripe's meter for one organization and hour. The row is
    claimed before the meter event is sent, with the same identifier every time, so a
    retry, a killed worker or two workers never bill an hour twice (Stripe drops a
    repeated identifier) and a rerun finds an unsent hour again."""

    org_id = models.UUIDField()
    hour = models.DateTimeField()
    quantity = models.BigIntegerField()
    identifier = models.CharField(max_length=100, unique=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["org_id", "hour"], name="billing_meter_org_hour")
        ]

    def __str__(self) -> str:
        return self.identifier
