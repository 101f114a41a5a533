"""Staff edit plans (a change applies to every organization on the next request);
billing accounts, invoices and Stripe events are read-only: Stripe's state owns them."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from clinik.billing.models import Account, Invoice, Plan, StripeEvent


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin[Plan]):
    list_display = (
        "name",
        "slug",
        "monthly_price_cents",
        "included_requests",
        "overage_per_1000_cents",
        "key_requests_per_minute",
        "is_public",
    )
    ordering = ("sort_order",)


class ReadOnlyAdmin[M: Any](admin.ModelAdmin[M]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin[Account]):
    list_display = ("org_id", "plan", "subscription_status", "past_due_since", "updated_at")
    list_filter = ("plan", "subscription_status")


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin[Invoice]):
    list_display = ("number", "org_id", "status", "total", "currency", "invoice_date")
    list_filter = ("status",)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin[StripeEvent]):
    list_display = ("event_id", "type", "received_at", "processed_at", "attempts")
    list_filter = ("type",)
