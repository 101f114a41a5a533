"""A local HTTP server that speaks the part of Stripe's API ClinikAPI uses (form-encoded
requests, Bearer secret key, idempotency keys, meter events deduplicated by
identifier), holding its own state like Stripe does; and webhook payloads signed the
way Stripe signs them (`Stripe-Signature: t=...,v1=HMAC-SHA256(secret, "t.payload")`).

Fixtures: `stripe_fake` (the server, with the SDK pointed at it through
STRIPE_API_BASE and billing on) and `paid_plans` (Stripe prices on the seeded plans)."""

import hashlib
import hmac
import importlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

import pytest

SECRET_KEY = "sk_test_clinik_fake_0123456789"
WEBHOOK_SECRET = "whsec_clinik_fake_0123456789"
PRICES = {
    "developer": ("price_developer", "price_developer_overage"),
    "scale": ("price_scale", "price_scale_overage"),
}


def _nest(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's form encoding: a[b][0][c]=v → {"a": {"b": {"0": {"c": "v"}}}}."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        parts = key.replace("]", "").split("[")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


class FakeStripe:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.customers: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.meter_events: dict[str, dict[str, Any]] = {}
        self.idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, raw body
        self.stall_after: int | None = None  # meter events accepted before hanging
        self.fail_next = 0  # answer this many of the next reads with a 500
        self.failed = 0
        self.stalled = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.url = ""

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids):06d}"

    # --- what Stripe does on its side (the tests drive it) ----------------------

    def complete_checkout(self, session_id: str, email: str = "billing@acme.test") -> str:
        """The customer paid on Stripe's page: a subscription to the session's prices."""
        with self.lock:
            session = self.sessions[session_id]
            customer = self.customers[session["customer"]]
            customer["email"] = email
            sub_id = self.new_id("sub")
            now = int(time.time())
            self.subscriptions[sub_id] = {
                "id": sub_id,
                "object": "subscription",
                "customer": customer["id"],
                "status": "active",
                "created": now,
                "metadata": session.get("subscription_data", {}).get("metadata", {}),
                "items": {
                    "object": "list",
                    "data": [
                        {
                            "id": self.new_id("si"),
                            "object": "subscription_item",
                            "price": {"id": item["price"], "object": "price"},
                            "current_period_start": now,
                            "current_period_end": now + 30 * 86400,
                        }
                        for item in session["line_items"].values()
                    ],
                },
            }
            session["subscription"] = sub_id
            session["status"] = "complete"
        return sub_id

    def set_subscription(self, sub_id: str, **fields: Any) -> dict[str, Any]:
        with self.lock:
            self.subscriptions[sub_id].update(fields)
            return dict(self.subscriptions[sub_id])

    def add_invoice(self, customer: str, status: str, amount: int, **extra: Any) -> str:
        with self.lock:
            inv_id = self.new_id("in")
            now = int(time.time())
            self.invoices[inv_id] = {
                "id": inv_id,
                "object": "invoice",
                "customer": customer,
                "status": status,
                "number": f"CLNK-{len(self.invoices) + 1:04d}",
                "currency": "usd",
                "total": amount,
                "amount_due": amount,
                "amount_paid": amount if status == "paid" else 0,
                "created": now,
                "period_start": now - 30 * 86400,
                "period_end": now,
                "total_taxes": [],
                "hosted_invoice_url": f"https://invoice.stripe.test/{inv_id}",
                "invoice_pdf": f"https://invoice.stripe.test/{inv_id}/pdf",
                "lines": {"object": "list", "data": []},
                **extra,
            }
        return inv_id

    def event(self, type_: str, obj: dict[str, Any], created: int | None = None) -> dict[str, Any]:
        return {
            "id": self.new_id("evt"),
            "object": "event",
            "type": type_,
            "created": created or int(time.time()),
            "api_version": "2026-01-01",
            "livemode": False,
            "data": {"object": obj},
        }

    def meter_total(self, customer: str) -> int:
        return sum(
            int(e["payload"]["value"])
            for e in self.meter_events.values()
            if e["payload"]["stripe_customer_id"] == customer
        )

    # --- the HTTP side --------------------------------------------------------------

    def handle(self, method: str, path: str, query: str, body: str, headers: Any) -> Any:
        if headers.get("Authorization") != f"Bearer {SECRET_KEY}":
            return 401, {"error": {"type": "invalid_request_error", "message": "bad key"}}
        self.requests.append((method, path, body))
        if method == "GET" and self.fail_next > 0:
            with self.lock:
                self.fail_next -= 1
                self.failed += 1
            return 500, {"error": {"type": "api_error", "message": "Something went wrong"}}
        params = _nest(parse_qsl(body or query, keep_blank_values=True))
        idem = headers.get("Idempotency-Key")
        if method == "POST" and idem and idem in self.idempotent:
            return self.idempotent[idem]
        answer = self.route(method, path.rstrip("/").split("/")[2:], params)
        if method == "POST" and idem:
            self.idempotent[idem] = answer
        return answer

    def route(self, method: str, parts: list[str], params: dict[str, Any]) -> Any:
        missing = 404, {"error": {"type": "invalid_request_error", "message": "No such object"}}
        with self.lock:
            match method, parts:
                case "POST", ["customers"]:
                    cus = {
                        "id": self.new_id("cus"),
                        "object": "customer",
                        "email": params.get("email"),
                        "metadata": params.get("metadata", {}),
                    }
                    self.customers[cus["id"]] = cus
                    return 200, cus
                case "GET", ["customers", cid]:
                    return (200, self.customers[cid]) if cid in self.customers else missing
                case "POST", ["checkout", "sessions"]:
                    sid = self.new_id("cs_test")
                    session = {
                        "id": sid,
                        "object": "checkout.session",
                        "url": f"https://checkout.stripe.test/c/pay/{sid}",
                        "status": "open",
                        "subscription": None,
                        **params,
                    }
                    self.sessions[sid] = session
                    return 200, session
                case "GET", ["checkout", "sessions", sid]:
                    return (200, self.sessions[sid]) if sid in self.sessions else missing
                case "POST", ["billing_portal", "sessions"]:
                    if params.get("customer") not in self.customers:
                        return missing
                    return 200, {
                        "id": self.new_id("bps"),
                        "object": "billing_portal.session",
                        "url": f"https://billing.stripe.test/p/session/{params['customer']}",
                        "customer": params["customer"],
                    }
                case "GET", ["subscriptions"]:
                    data = [
                        s
                        for s in self.subscriptions.values()
                        if s["customer"] == params.get("customer")
                    ]
                    return 200, {"object": "list", "data": data, "has_more": False}
                case "GET", ["subscriptions", sub_id]:
                    found = self.subscriptions.get(sub_id)
                    return (200, found) if found else missing
                case "GET", ["invoices", inv_id]:
                    found = self.invoices.get(inv_id)
                    return (200, found) if found else missing
                case "POST", ["billing", "meter_events"]:
                    if self.stall_after is not None and len(self.meter_events) >= self.stall_after:
                        self.stalled.set()
                        self.lock.release()
                        try:
                            time.sleep(3600)  # the worker is killed while it waits
                        finally:
                            self.lock.acquire()
                    identifier = params["identifier"]
                    # Stripe keeps the first event of an identifier and ignores repeats
                    self.meter_events.setdefault(identifier, params)
                    return 200, {"object": "billing.meter_event", **params}
        return missing

    def start(self) -> "FakeStripe":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                status, payload = fake.handle(self.command, url.path, url.query, body, self.headers)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", "req_fake")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def deliver(client: Any, event: dict[str, Any], **sign_kw: Any) -> Any:
    payload = json.dumps(event).encode()
    return client.post(
        "/billing/stripe/webhook",
        data=payload,
        content_type="application/json",
        headers={"Stripe-Signature": sign(payload, **sign_kw)},
    )


def seed_plans() -> None:
    """The seeded plans (a transactional test's flush removes the migration's rows)."""
    from clinik.billing.models import Plan

    migration = importlib.import_module("clinik.billing.migrations.0002_seed_plans")
    for plan in migration.PLANS:
        Plan.objects.update_or_create(slug=plan["slug"], defaults=plan)


@pytest.fixture
def paid_plans(db: None) -> None:
    from clinik.billing.models import Plan

    seed_plans()
    for slug, (price, overage) in PRICES.items():
        Plan.objects.filter(slug=slug).update(
            stripe_price_id=price, stripe_overage_price_id=overage
        )


@pytest.fixture
def stripe_fake(settings: Any, paid_plans: None) -> Iterator[FakeStripe]:
    fake = FakeStripe().start()
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = fake.url
    settings.BILLING_ENABLED = True
    yield fake
    fake.stop()
