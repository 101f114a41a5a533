"""The one way a FHIR API interaction is audited: `record_fhir_interaction`.

Every interaction of the FHIR API (views, bundle entries, and the 403s and 5xx the
request log sees) writes its audit row through it; the fast SQL stays underneath:

- success: a deferred row in the interaction's own transaction (audit.note), sent with
  the transaction's next statement or its COMMIT: no round trip of its own;
- a read whose outcome the read itself decides (WHEN_LIVE): the row's INSERT, which the
  store carries in the read's own statement as a data-modifying CTE;
- failure or denied: inside a FHIR view, whose transaction usually rolls back with the
  failure, the row waits on the request until the view ends (`write_pending`, called by
  the view decorator); otherwise (the request log's 403s and 5xx) it is written at once.
"""

from typing import Any, Final, Literal, overload

from django.http import HttpRequest

from clinik import audit

WHEN_LIVE: Final = "when-live"
"""Outcome decided by a read: success when it found a live version."""

Target = tuple[str, str]
Outcome = Literal["success", "failure", "denied"]
Statement = tuple[str, list[Any]]
_PENDING = "clinik_failed_interactions"


@overload
def record_fhir_interaction(
    request: HttpRequest,
    action: str,
    target: Target | list[Target],
    *,
    outcome: Outcome = "success",
) -> None: ...


@overload
def record_fhir_interaction(
    request: HttpRequest, action: str, target: Target, *, outcome: Literal["when-live"]
) -> Any: ...


def record_fhir_interaction(
    request: HttpRequest,
    action: str,
    target: Target | list[Target],
    *,
    outcome: str = "success",
) -> Any:
    """Audit one FHIR interaction (a list of targets: one row each, one INSERT) of the
    request's organization and key. With WHEN_LIVE, returns a function that, given the
    SQL condition "a live version was found", builds the row's INSERT for the read to
    carry (see the module docstring for how each outcome is written)."""
    org, actor = getattr(request, "org", None), getattr(request, "api_key", None)
    if outcome == WHEN_LIVE:
        assert isinstance(target, tuple)
        return lambda found: audit.insert_from(
            action, org=org, actor=actor, target=target, request=request, succeeded=found
        )
    if isinstance(target, list):
        audit.note_many(
            action, org=org, actor=actor, targets=target, outcome=outcome, request=request
        )
        return None
    if outcome == "success":
        audit.note(action, org=org, actor=actor, target=target, request=request)
    elif _PENDING in request.__dict__:
        request.__dict__.setdefault(_PENDING, []).append((action, target, outcome))
    else:
        audit.record(action, org=org, actor=actor, target=target, outcome=outcome, request=request)
    return None


def begin_view(request: HttpRequest) -> None:
    """A FHIR view starts: its failures wait for it to end (write_pending), so that a
    key refused meanwhile has none audited (forget_pending)."""
    request.__dict__[_PENDING] = []


def write_pending(request: HttpRequest) -> None:
    """Write the failures recorded inside the request's transactions, now they are over
    (called once by the FHIR view decorator)."""
    for action, target, outcome in request.__dict__.pop(_PENDING, []):
        audit.note(
            action,
            org=getattr(request, "org", None),
            actor=getattr(request, "api_key", None),
            target=target,
            outcome=outcome,
            request=request,
        )


def forget_pending(request: HttpRequest) -> None:
    """Drop them: the key was refused meanwhile, and a refused key's interactions are
    not audited."""
    request.__dict__.pop(_PENDING, None)
