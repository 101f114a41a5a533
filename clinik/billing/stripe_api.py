"""The one place that talks to Stripe, through the official SDK. Without Stripe
settings billing is off and `client()` refuses, so nothing ever reaches Stripe."""

import json
from typing import Any

import stripe
from django.conf import settings


class BillingOff(Exception):
    """STRIPE_SECRET_KEY / STRIPE_WEBHOOK_SECRET are not set."""


_clients: dict[tuple[str, str, str], stripe.StripeClient] = {}


def client() -> stripe.StripeClient:
    if not settings.BILLING_ENABLED:
        raise BillingOff("billing is off: STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET are unset")
    key = (
        settings.STRIPE_SECRET_KEY,
        settings.STRIPE_API_BASE,
        settings.STRIPE_METER_EVENTS_API_BASE,
    )
    found = _clients.get(key)
    if found is None:
        base: Any = {}
        if settings.STRIPE_API_BASE:
            base["api"] = settings.STRIPE_API_BASE
        if settings.STRIPE_METER_EVENTS_API_BASE:
            base["meter_events"] = settings.STRIPE_METER_EVENTS_API_BASE
        found = stripe.StripeClient(
            settings.STRIPE_SECRET_KEY, base_addresses=base or None, max_network_retries=2
        )
        _clients[key] = found
    return found


def verify(payload: bytes, signature: str) -> dict[str, Any]:
    """The event, if Stripe signed it with our secret within the last 300 s; raises
    stripe.SignatureVerificationError or ValueError otherwise. The SDK checks the
    signature; the payload is parsed once, into plain JSON (the SDK's
    `construct_event` would parse it again into a StripeObject tree, which costs
    more than the check: bench/README.md, "Billing")."""
    text = payload.decode("utf-8")  # UnicodeDecodeError is a ValueError
    stripe.WebhookSignature.verify_header(
        text, signature, settings.STRIPE_WEBHOOK_SECRET, tolerance=300
    )
    event = json.loads(text)
    if not isinstance(event, dict):
        raise ValueError("not an event")
    return event
