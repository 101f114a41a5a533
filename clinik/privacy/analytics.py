"""Product analytics (PostHog): a fixed catalogue of dashboard events, each with an
allowlist of properties whose values come from fixed sets (or are booleans). No free
text, names, emails, IP addresses, ids of any resource, search strings or FHIR content
can pass: anything not in the allowlist is dropped before it leaves the process.

The distinct id is a random per-user `AnalyticsId` (resettable), never the user's id
or email; person profiles are not processed and GeoIP is off. After commit, an event
is put in an in-process queue; a thread of ours hands it to the SDK, whose own thread
sends batches: the request pays one id lookup and a queue put, never the network
(bench/analytics_bench.py). The user's analytics opt-out (account data page)
stops both this and the browser script. POSTHOG_API_KEY or POSTHOG_HOST unset: nothing
is sent and nothing is loaded. The FHIR API never calls this module."""

import logging
import queue
import threading
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.templatetags.static import static

from clinik.accounts.models import Membership, User
from clinik.privacy.models import AnalyticsId

POSTHOG_JS = "vendor/posthog-js-1.449.2/array.no-external.js"
ROLES = frozenset(Membership.Role.values)
Allowed = frozenset[str] | type[bool]

EVENTS: dict[str, dict[str, Allowed]] = {
    "signed_up": {},
    "signed_in": {},
    "organization_created": {},
    "member_invited": {"role": ROLES},
    "member_joined": {"role": ROLES},
    "key_created": {"scopes": frozenset({"read", "read-write"}), "expires": bool},
    "key_revoked": {},
    "plan_viewed": {},
    # plan: the seeded plans' slugs only (a custom plan's slug is dropped)
    "plan_changed": {
        "direction": frozenset({"upgrade", "downgrade", "cancel"}),
        "plan": frozenset({"free", "developer", "scale", "enterprise"}),
    },
    "export_started": {},
    "usage_page_viewed": {"range": frozenset({"24h", "7d", "30d", "90d"})},
    "audit_log_viewed": {},
    "closure_requested": {},
}

# What the SDK may add by itself; everything else it adds (OS, Python version, ...)
# is dropped by `_last_check` just before the event is queued.
SDK_PROPERTIES = frozenset({"$lib", "$lib_version", "$geoip_disable", "$process_person_profile"})

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_clients: dict[tuple[str, str], Any] = {}
# The SDK does real work before its own queue (it reads the OS release on every
# capture): a thread of ours calls it, so a request only puts a tuple in this queue.
_outbox: "queue.Queue[tuple[Any, str, str, dict[str, Any]]]" = queue.Queue(maxsize=10_000)
_sender: threading.Thread | None = None


def enabled() -> bool:
    return bool(settings.POSTHOG_API_KEY and settings.POSTHOG_HOST)


def client() -> Any:
    from posthog import Client

    config = (settings.POSTHOG_API_KEY, settings.POSTHOG_HOST)
    with _lock:
        if config not in _clients:
            _clients[config] = Client(
                config[0],
                host=config[1],
                disable_geoip=True,
                enable_exception_autocapture=False,
                enable_local_evaluation=False,
                flush_interval=1.0,
                before_send=_last_check,
            )
        return _clients[config]


def _last_check(event: dict[str, Any]) -> dict[str, Any] | None:
    """The SDK's last hook before its queue: drop what is not in the catalogue, and
    every property that is neither allowlisted for the event nor the SDK's own."""
    allowed = EVENTS.get(str(event.get("event")))
    if allowed is None:
        return None
    properties = event.get("properties") or {}
    event["properties"] = {
        k: v for k, v in properties.items() if k in allowed or k in SDK_PROPERTIES
    }
    return event


def _send_forever() -> None:
    while True:
        target, event, who, props = _outbox.get()
        try:
            target.capture(event, distinct_id=who, properties=props, disable_geoip=True)
        except Exception:
            logger.exception("analytics event not queued")  # never the event's content
        finally:
            _outbox.task_done()


def _post(event: str, who: str, props: dict[str, Any]) -> None:
    global _sender
    with _lock:
        if _sender is None or not _sender.is_alive():
            _sender = threading.Thread(target=_send_forever, name="analytics", daemon=True)
            _sender.start()
    try:
        _outbox.put_nowait((client(), event, who, props))
    except queue.Full:
        logger.warning("analytics queue full: event dropped")


def flush() -> None:
    """Send everything queued so far (tests; process shutdown)."""
    _outbox.join()
    with _lock:
        clients = list(_clients.values())
    for c in clients:
        c.flush()


def clean(event: str, properties: dict[str, Any]) -> dict[str, Any]:
    """Only allowlisted keys whose value is in the fixed set (or a bool)."""
    allowed = EVENTS[event]
    kept: dict[str, Any] = {}
    for key, value in properties.items():
        rule = allowed.get(key)
        if (rule is bool and isinstance(value, bool)) or (
            isinstance(rule, frozenset) and isinstance(value, str) and value in rule
        ):
            kept[key] = value
    return kept


def distinct_id(user: User) -> str:
    row, _created = AnalyticsId.objects.get_or_create(user=user)
    return str(row.distinct_id)


def reset_id(user: User) -> None:
    AnalyticsId.objects.filter(user=user).delete()


def capture(user: User | Any, event: str, **properties: Any) -> None:
    """Queue one catalogue event for this user (after commit). Does nothing when
    analytics are not configured, for anonymous users and for users who opted out."""
    if event not in EVENTS:
        raise ValueError(f"{event!r} is not in the analytics catalogue")
    if not enabled() or not getattr(user, "is_authenticated", False) or user.analytics_opt_out:
        return
    props = {**clean(event, properties), "$process_person_profile": False}
    who = distinct_id(user)
    transaction.on_commit(lambda: _post(event, who, props))


def browser_config(request: HttpRequest) -> dict[str, Any]:
    """Template context: what the consent script needs, or nothing at all."""
    if not enabled() or request.path.startswith("/fhir/"):
        return {"analytics": None}
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated and user.analytics_opt_out:
        return {"analytics": None}
    config = {
        "key": settings.POSTHOG_API_KEY,
        "host": settings.POSTHOG_HOST,
        "script": static(POSTHOG_JS),
    }
    if user is not None and user.is_authenticated:
        config["distinct_id"] = distinct_id(user)
    return {"analytics": config}
