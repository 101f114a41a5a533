"""Billing emails: the receipt of a paid invoice and the payment-failed notice. Each
is sent through clinik.notify (recorded, retried, type `billing`).
Contexts carry amounts, dates, the plan and links: never PHI or card data."""

from django.conf import settings
from django.urls import reverse

from clinik.billing.models import Account, Invoice
from clinik.lib.money import money
from clinik.notify.emails import send


def send_receipt(invoice: Invoice) -> None:
    """To the organization's billing email (or its owners when it has none)."""
    from clinik.accounts.models import Organization

    org = Organization.objects.get(pk=invoice.org_id)
    to = (
        [invoice.billing_email]
        if invoice.billing_email
        else list(org.owners().values_list("email", flat=True))
    )
    if not to:
        return
    period = ""
    if invoice.period_start and invoice.period_end:
        period = f"{invoice.period_start:%d %b %Y} to {invoice.period_end:%d %b %Y}"
    send(
        "billing",
        "billing-receipt",
        to,
        {
            "org_name": invoice.org_name,
            "number": invoice.number,
            "amount": money(invoice.amount_paid, invoice.currency),
            "period": period,
            "hosted_invoice_url": invoice.hosted_invoice_url,
        },
    )


def send_payment_failed(account: Account) -> None:
    owners = list(account.org.owners().values_list("email", flat=True))
    if not owners:
        return
    ends = account.grace_ends_at
    send(
        "billing",
        "billing-payment-failed",
        owners,
        {
            "org_name": account.org.name,
            "plan": account.plan.name,
            "grace_ends": f"{ends:%d %b %Y}" if ends else "",
            "billing_url": settings.SITE_URL + reverse("billing", args=[account.org_id]),
        },
    )
