"""The one place that talks to Stripe, through the official SDK. Without Stripe
settings billing is off and `client()` refuses, so nothing ever reaches Stripe."""

from typing import Any

import stripe
from django.conf import settings


class BillingOff(Exception):
    """STRIPE_SECRET_KEY / STRIPE_WEBHOOK_SECRET are not set."""


_clients: dict[tuple[str, str], stripe.StripeClient] = {}


def client() -> stripe.StripeClient:
    if not settings.BILLING_ENABLED:
        raise BillingOff("billing is off: STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET are unset")
    key = (settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE)
    found = _clients.get(key)
    if found is None:
        base: Any = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
        found = stripe.StripeClient(
            settings.STRIPE_SECRET_KEY, base_addresses=base, max_network_retries=2
        )
        _clients[key] = found
    return found


def verify(payload: bytes, signature: str) -> stripe.Event:
    """The event, if Stripe signed it with our secret within the last 300 s; raises
    stripe.SignatureVerificationError or ValueError otherwise."""
    return stripe.Webhook.construct_event(
        payload, signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=300
    )
