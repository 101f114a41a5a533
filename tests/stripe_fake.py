"""A local HTTP server that speaks the part of Stripe's API ClinikAPI uses (form-encoded
requests, Bearer secret key, idempotency keys, meter events deduplicated by
identifier), holding its own state like Stripe does; and webhook payloads signed the
way Stripe signs them (`Stripe-Signature: t=...,v1=HMAC-SHA256(secret, "t.payload")`).

Stripe's high-throughput meter event stream (API v2) is spoken too, as Stripe splits
it: `POST /v2/billing/meter_event_session` on the API (secret key) gives a token
valid 15 minutes; `POST /v2/billing/meter_event_stream` on a second address (the
meter-events one, a server of its own here) takes JSON batches of at most 100 events
with that token as the bearer. The request is checked at once (400 for a malformed
batch, 401 `temporary_session_expired` / `billing_meter_event_session_expired` for an
expired token); each event is validated afterwards, as Stripe does asynchronously: an
invalid one (timestamp older than 35 days or more than 5 minutes ahead, unknown or
missing customer, value not a whole number) is dropped into `meter_errors` instead of
counting, and an identifier seen in the last 24 hours is dropped as a repeat.

Fixtures: `stripe_fake` (the servers, with the SDK pointed at them through
STRIPE_API_BASE and STRIPE_METER_EVENTS_API_BASE, billing on) and `paid_plans`
(Stripe prices on the seeded plans)."""

import hashlib
import hmac
import importlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlparse

import pytest

SECRET_KEY = "sk_test_clinik_fake_0123456789"
WEBHOOK_SECRET = "whsec_clinik_fake_0123456789"
SESSION_SECONDS = 15 * 60
STREAM_MAX_EVENTS = 100
IDENTIFIER_WINDOW = 24 * 3600
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
        self.meter_events: dict[str, dict[str, Any]] = {}  # identifier: first event
        self.meter_log: list[dict[str, Any]] = []  # every event counted
        self.meter_seen: dict[str, float] = {}  # identifier: when it was counted
        self.meter_errors: list[dict[str, Any]] = []  # dropped by the async validation
        self.stream_sessions: dict[str, dict[str, Any]] = {}  # token: session
        # Stripe's meters (the one our events go to, by its event name)
        self.meters = [
            {
                "id": "mtr_clinik_000001",
                "object": "billing.meter",
                "event_name": "api_requests",
                "status": "active",
                "default_aggregation": {"formula": "sum"},
            }
        ]
        self.stream_requests = 0
        self.expire_tokens_after: int | None = None  # stream requests a token serves
        self.clock_offset = 0.0  # Stripe's clock, ahead of ours by this many seconds
        self.idempotent: dict[str, tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, str]] = []  # method, path, raw body
        self.stall_after: int | None = None  # meter events accepted before hanging
        self.fail_next = 0  # answer this many of the next reads with a 500
        self.failed = 0
        self.stalled = threading.Event()
        self.servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.meter_url = ""

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
            for e in self.meter_log
            if e["payload"]["stripe_customer_id"] == customer
        )

    def event_summaries(self, meter_id: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`GET /v1/billing/meters/{id}/event_summaries`: the sum of the events Stripe
        counted (the dropped ones are not) for a customer, over [start_time, end_time),
        one summary, or one per hour or UTC day with value_grouping_window; times must be
        minute aligned (hour / day aligned for those windows). A page of `limit` (10 by
        default, at most 100), `starting_after` for the next one."""
        meter = next((m for m in self.meters if m["id"] == meter_id), None)
        if meter is None:
            return 404, {"error": {"type": "invalid_request_error", "message": "No such meter"}}
        try:
            start, end = int(params["start_time"]), int(params["end_time"])
            customer = params["customer"]
            limit = int(params.get("limit", 10))
        except (KeyError, ValueError):
            return 400, {"error": {"type": "invalid_request_error", "message": "bad params"}}
        window = params.get("value_grouping_window")
        step = {"hour": 3600, "day": 86400, None: None}.get(window, -1)
        align = step or 60
        if step == -1 or start % align or end % align or not 1 <= limit <= 100 or end <= start:
            return 400, {"error": {"type": "invalid_request_error", "message": "bad window"}}
        windows = (
            [(start, end)] if step is None else [(t, t + step) for t in range(start, end, step)]
        )
        totals = dict.fromkeys(windows, 0.0)
        for event in self.meter_log:
            if event.get("event_name") != meter["event_name"]:
                continue
            if event["payload"].get("stripe_customer_id") != customer:
                continue
            stamp = event.get("timestamp")
            if stamp is None:
                continue
            when = float(stamp) if str(stamp).isdigit() else _rfc3339(stamp)
            if start <= when < end:
                t0 = start if step is None else start + (int(when) - start) // step * step
                totals[(t0, t0 + (step or end - start))] += float(event["payload"]["value"])
        data = [
            {
                "id": f"mtrusu_{meter_id}_{customer}_{t0}",
                "object": "billing.meter_event_summary",
                "aggregated_value": value,
                "start_time": t0,
                "end_time": t1,
                "meter": meter_id,
                "livemode": False,
            }
            for (t0, t1), value in sorted(totals.items(), reverse=True)  # newest first
        ]
        after = params.get("starting_after")
        if after:
            ids = [d["id"] for d in data]
            data = data[ids.index(after) + 1 :] if after in ids else []
        return 200, {
            "object": "list",
            "url": f"/v1/billing/meters/{meter_id}/event_summaries",
            "data": data[:limit],
            "has_more": len(data) > limit,
        }

    def now(self) -> float:
        return time.time() + self.clock_offset

    def _count_meter_event(self, event: dict[str, Any], at: float) -> None:
        """Stripe's side of one event (under the lock): repeats of an identifier within
        24 hours are dropped; otherwise it counts."""
        identifier = event.get("identifier") or self.new_id("mev")
        seen = self.meter_seen.get(identifier)
        if seen is not None and at - seen < IDENTIFIER_WINDOW:
            return
        self.meter_seen[identifier] = at
        self.meter_events.setdefault(identifier, event)
        self.meter_log.append(event)

    def _meter_error(self, event: dict[str, Any], when: float | None, at: float) -> str | None:
        """What Stripe's asynchronous validation says of a streamed event, or None."""
        when = at if when is None else when
        payload = event["payload"]
        customer = payload.get("stripe_customer_id")
        if when < at - 35 * 86400:
            return "timestamp_too_far_in_past"
        if when > at + 300:
            return "timestamp_in_future"
        if not customer:
            return "meter_event_no_customer_defined"
        if customer not in self.customers:
            return "meter_event_customer_not_found"
        if not str(payload.get("value", "")).lstrip("-").isdigit():
            return "meter_event_invalid_value"
        return None

    # --- the meter event stream (API v2) ----------------------------------------------

    def create_stream_session(self) -> tuple[int, dict[str, Any]]:
        with self.lock:
            now = self.now()
            token = f"mes_token_{self.new_id('t')}_{now:.0f}"
            session = {
                "id": self.new_id("mes"),
                "object": "v2.billing.meter_event_session",
                "authentication_token": token,
                "created": _iso(now),
                "expires_at": _iso(now + SESSION_SECONDS),
                "livemode": False,
            }
            self.stream_sessions[token] = {
                "expires": now + SESSION_SECONDS,
                "used": 0,
            }
            return 200, session

    def handle_stream(self, method: str, path: str, body: str, headers: Any) -> Any:
        if (method, path) != ("POST", "/v2/billing/meter_event_stream"):
            return 404, _v2_error("invalid_request_error", "not_found", "Unrecognized request URL")
        token = (headers.get("Authorization") or "").removeprefix("Bearer ")
        with self.lock:
            session = self.stream_sessions.get(token)
            if session is None:
                return 401, _v2_error(
                    "invalid_request_error", "unauthorized", "Invalid authentication token"
                )
            used_up = self.expire_tokens_after is not None
            if self.now() >= session["expires"] or (
                used_up and session["used"] >= (self.expire_tokens_after or 0)
            ):
                return 401, _v2_error(
                    "temporary_session_expired",
                    "billing_meter_event_session_expired",
                    "The temporary session token has expired.",
                )
        try:
            params = json.loads(body or "null")
        except ValueError:
            return 400, _v2_error("invalid_request_error", "invalid_json", "Invalid JSON body")
        problem, stamps = _stream_problem(params)
        if problem is not None:
            return 400, _v2_error("invalid_request_error", "invalid_field", problem)
        with self.lock:
            if self.stall_after is not None and len(self.meter_events) >= self.stall_after:
                self.stalled.set()
                self.lock.release()
                try:
                    time.sleep(3600)  # the worker is killed while it waits
                finally:
                    self.lock.acquire()
            session["used"] += 1
            self.stream_requests += 1
            self.requests.append((method, path, ""))
            at = self.now()
            for event, when in zip(params["events"], stamps, strict=True):
                error = self._meter_error(event, when, at)
                if error is not None:
                    self.meter_errors.append({"code": error, "event": event})
                else:
                    self._count_meter_event(event, at)
        return 200, {}

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
        if (method, path) == ("POST", "/v2/billing/meter_event_session"):
            return self.create_stream_session()
        if (method, path) == ("GET", "/_fake/meter"):  # not Stripe's: for the bench
            with self.lock:
                total = sum(int(e["payload"]["value"]) for e in self.meter_log)
                return 200, {
                    "events": len(self.meter_log),
                    "total": total,
                    "errors": len(self.meter_errors),
                }
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
                case "GET", ["billing", "meters"]:
                    data = [m for m in self.meters if params.get("status") in (None, m["status"])]
                    return 200, {"object": "list", "data": data, "has_more": False}
                case "GET", ["billing", "meters", meter_id, "event_summaries"]:
                    return self.event_summaries(meter_id, params)
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
                    # Stripe keeps the first event of an identifier and ignores repeats
                    self._count_meter_event(params, self.now())
                    return 200, {"object": "billing.meter_event", **params}
        return missing

    def _serve(self, handle: Callable[..., Any]) -> str:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the second
            # waits for the client's delayed ACK (~40 ms a request), which Stripe does
            # not make anyone wait.
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                status, payload = handle(self.command, url.path, url.query, body, self.headers)
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

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    def start(self) -> "FakeStripe":
        self.url = self._serve(self.handle)
        self.meter_url = self._serve(
            lambda method, path, query, body, headers: self.handle_stream(
                method, path, body, headers
            )
        )
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _rfc3339(value: Any) -> float:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def _v2_error(type_: str, code: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "code": code, "message": message}}


def _stream_problem(params: Any) -> tuple[str | None, list[float | None]]:
    """What Stripe refuses at once in a stream request (the shape), or None; and the
    events' times."""
    events = params.get("events") if isinstance(params, dict) else None
    stamps: list[float | None] = []
    if not isinstance(events, list) or not events:
        return "events: a non-empty array is required", stamps
    if len(events) > STREAM_MAX_EVENTS:
        return f"events: at most {STREAM_MAX_EVENTS} events per request", stamps
    for i, event in enumerate(events):
        if not isinstance(event, dict):
            return f"events[{i}]: an object is required", stamps
        if not isinstance(event.get("event_name"), str) or not event["event_name"]:
            return f"events[{i}].event_name: required", stamps
        payload = event.get("payload")
        if not isinstance(payload, dict) or not all(isinstance(v, str) for v in payload.values()):
            return f"events[{i}].payload: an object of strings is required", stamps
        identifier = event.get("identifier")
        if identifier is not None and (not isinstance(identifier, str) or len(identifier) > 100):
            return f"events[{i}].identifier: a string of at most 100 characters", stamps
        stamp = event.get("timestamp")
        try:
            stamps.append(None if stamp is None else _rfc3339(stamp))
        except (ValueError, TypeError):
            return f"events[{i}].timestamp: an RFC 3339 time is required", stamps
    return None, stamps


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
    settings.STRIPE_METER_EVENTS_API_BASE = fake.meter_url
    settings.BILLING_ENABLED = True
    yield fake
    fake.stop()
