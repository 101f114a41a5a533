"""Staff edit plans (a change applies to every organization on the next request);
billing accounts, invoices and Stripe events are read-only: Stripe's state owns them."""

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from clinik.billing.actions import do_assign_plan
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
class AccountAdmin(admin.ModelAdmin[Account]):
    """Staff put an organization on a plan (Enterprise, or any custom plan): the plan
    is the one field they edit, and saving goes through do_assign_plan (audited with
    the staff member as actor, limits dropped and analytics sent after commit). The
    rest is Stripe's state. Note that a live Stripe subscription sets the plan back to
    its price's plan at its next webhook."""

    list_display = ("org_id", "plan", "subscription_status", "past_due_since", "updated_at")
    list_filter = ("plan", "subscription_status")
    raw_id_fields = ("org",)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["org", "plan"] if obj is None else ["org", "plan", *_STRIPE_STATE]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [] if obj is None else ["org", *_STRIPE_STATE]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Account, form: Any, change: bool) -> None:
        account = do_assign_plan(org=obj.org, plan=obj.plan, actor=request.user, request=request)
        obj.pk = account.pk


_STRIPE_STATE = [
    "stripe_customer_id",
    "stripe_subscription_id",
    "subscription_status",
    "current_period_start",
    "current_period_end",
    "past_due_since",
    "billing_email",
]


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin[Invoice]):
    list_display = ("number", "org_id", "status", "total", "currency", "invoice_date")
    list_filter = ("status",)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin[StripeEvent]):
    list_display = ("event_id", "type", "received_at", "processed_at", "attempts")
    list_filter = ("type",)
