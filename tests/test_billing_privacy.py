"""After the whole billing flow (checkout, subscription, invoices paid and failed,
receipts, dunning, meters, the Billing page), a search of every table we can read,
every log line and every email finds no card number and none of the PHI planted in
a resource; nor does anything we sent to Stripe."""

import logging
import re
from datetime import timedelta

from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone

from clinik.billing import meters
from clinik.billing.models import Plan
from tests.conftest import _api_for
from tests.stripe_fake import deliver, paid_plans, stripe_fake
from tests.test_billing_meters import _usage
from tests.test_billing_webhook import _subscribe

__all__ = ["paid_plans", "stripe_fake"]

PHI = "Zebulon Quixotefield"
CARD = "4242 4242 4242 4242"
_DIGITS = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")


def _luhn(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


# the card brands' number ranges (Visa, Mastercard, Amex, Discover), 13-19 digits
_BRANDS = re.compile(
    r"4\d{12}(\d{3}){0,2}|5[1-5]\d{14}|2(2[2-9]|[3-6]\d|7[01])\d{13}|2720\d{12}"
    r"|3[47]\d{13}|6(011|5\d\d)\d{12}"
)


def card_numbers(text: str) -> list[str]:
    found = []
    for match in _DIGITS.findall(text):
        digits = re.sub(r"[ -]", "", match)
        if _BRANDS.fullmatch(digits) and _luhn(digits):
            found.append(match)
    return found


def _everything_in_the_database() -> str:
    chunks: list[str] = []
    with connection.cursor() as cursor:
        # every table the application can read (a partitioned table with its partitions),
        # except the FHIR store's, behind row-level security: where PHI belongs
        cursor.execute(
            "SELECT c.relname, c.relrowsecurity FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " AND has_table_privilege(c.oid, 'SELECT') ORDER BY 1"
        )
        rows = cursor.fetchall()
        walled = {name for name, rls in rows if rls}
        # (and the subscriptions' mirror, outbox and deliveries: tenant tables behind the
        # same wall, which hold resource ids, never content)
        assert walled and all(name.startswith(("fhir_", "subscriptions_")) for name in walled), (
            walled
        )
        tables = [name for name, rls in rows if not rls]
        assert {"billing_invoice", "billing_account", "audit_auditevent"} <= set(tables)
        for table in tables:
            cursor.execute(f'SELECT t::text FROM "{table}" t')  # noqa: S608 (catalog names)
            chunks.extend(row[0] for row in cursor.fetchall())
    return "\n".join(chunks)


def test_no_card_number_and_no_phi_anywhere_after_the_billing_flow(
    owner, stripe_fake, caplog, django_capture_on_commit_callbacks
) -> None:
    caplog.set_level(logging.DEBUG)
    assert card_numbers(CARD)  # the detector finds what it must
    api = _api_for(owner)
    planted = {
        "resourceType": "Patient",
        "name": [{"text": PHI}],
        "identifier": [{"system": "urn:card", "value": CARD}],
    }
    assert api.post("Patient", planted).status_code == 201
    assert api.get(f"Patient?name={PHI.split()[0]}").status_code == 200
    sub_id = _subscribe(owner, stripe_fake, django_capture_on_commit_callbacks)
    customer = stripe_fake.subscriptions[sub_id]["customer"]
    paid = stripe_fake.add_invoice(customer, "paid", 2900)
    failed = stripe_fake.add_invoice(customer, "open", 2900)
    stripe_fake.set_subscription(sub_id, status="past_due")
    with django_capture_on_commit_callbacks(execute=True):
        deliver(Client(), stripe_fake.event("invoice.paid", stripe_fake.invoices[paid]))
        deliver(Client(), stripe_fake.event("invoice.payment_failed", stripe_fake.invoices[failed]))
        deliver(Client(), stripe_fake.event("customer.updated", stripe_fake.customers[customer]))
    Plan.objects.filter(slug="developer").update(included_requests=10)
    month = meters.month_start(timezone.now())
    _usage(owner.org.pk, month)
    meters.report(month + timedelta(days=1))
    assert stripe_fake.meter_events
    assert owner.client().get(f"/o/{owner.org.pk}/billing/").status_code == 200
    assert len(mail.outbox) >= 2

    places = {
        "database": _everything_in_the_database(),
        "logs": "\n".join(r.getMessage() for r in caplog.records),
        "emails": "\n".join(
            f"{m.subject}\n{m.body}\n{''.join(str(a[0]) for a in getattr(m, 'alternatives', []))}"
            for m in mail.outbox
        ),
        "sent to Stripe": "\n".join(body for _, _, body in stripe_fake.requests),
    }
    assert "Receipt" in places["emails"] and "invoice" in places["database"]
    for place, text in places.items():
        assert PHI not in text, place
        assert PHI.split()[1] not in text, place
        assert card_numbers(text) == [], place
