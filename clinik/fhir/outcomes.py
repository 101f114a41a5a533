"""OperationOutcome responses: the one shape every FHIR error takes."""

import json
from typing import Any

from django.http import HttpResponse

FHIR_JSON = "application/fhir+json; charset=utf-8"
NOTHING_TO_DELETE = "No resource has this id: nothing was deleted"
"""A DELETE of an unknown id succeeds as a no-op (200) with this information."""


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
