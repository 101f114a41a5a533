"""OperationOutcome responses: the one shape every FHIR error takes."""

import json
import logging
from typing import Any

from django.conf import settings
from django.http import HttpResponse

from clinik.lib import outage
from clinik.lib.db import cancelled_by_timeout

FHIR_JSON = "application/fhir+json; charset=utf-8"
NOTHING_TO_DELETE = "No resource has this id: nothing was deleted"
"""A DELETE of an unknown id succeeds as a no-op (200) with this information."""

logger = logging.getLogger(__name__)


def outcome_body(
    severity: str, code: str, diagnostics: str, expression: list[str] | None = None
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_response(
    status: int,
    code: str,
    diagnostics: str,
    *,
    expression: list[str] | None = None,
    severity: str = "error",
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    """An OperationOutcome with one issue. `code` is from the FHIR issue-type value
    set (invalid, not-found, security, login, forbidden, too-costly, throttled, ...).
    Diagnostics must never quote resource content or search values (PHI)."""
    body = outcome_body(severity, code, diagnostics, expression)
    response = HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def issues_response(status: int, issues: list[dict[str, Any]]) -> HttpResponse:
    body = {"resourceType": "OperationOutcome", "issue": issues}
    return HttpResponse(json.dumps(body), status=status, content_type=FHIR_JSON)


def unavailable_response(dependency: str, retry_after: int) -> HttpResponse:
    """503 while a dependency is out of reach (clinik.lib.outage): nothing was done."""
    return outcome_response(
        503,
        "transient",
        f"The service is temporarily unavailable ({dependency}); nothing was changed."
        " Retry after the time in Retry-After.",
        headers={"Retry-After": str(retry_after)},
    )


def timed_out_response(retry_after: int) -> HttpResponse:
    """503 for a request whose statement ran out of time (a lock wait, a busy server)."""
    return outcome_response(
        503,
        "transient",
        "The request took too long and was cancelled; nothing was changed."
        " Retry after the time in Retry-After.",
        headers={"Retry-After": str(retry_after)},
    )


def failure_response(error: BaseException) -> HttpResponse | None:
    """503 + Retry-After for PostgreSQL out of reach (logged once per outage) or a
    statement cancelled by the API's timeouts; None for any other error (a 500)."""
    retry = settings.API_RETRY_AFTER_SECONDS
    if (dependency := outage.unreachable(error)) is not None:
        outage.down(dependency)
        response = unavailable_response(dependency, retry)
    elif (kind := cancelled_by_timeout(error)) is not None:
        # One line without the path (it may hold an id) or any value.
        logger.warning("An API request was cancelled by the %s timeout", kind)
        response = timed_out_response(retry)
    else:
        return None
    response._has_been_logged = True  # type: ignore[attr-defined]  # not by django.request
    return response
