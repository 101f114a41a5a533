"""Conditional create, update and delete, and conditional references: searches that
decide a write. Each takes a transaction-scoped advisory lock on (tenant, type,
criteria) before searching, so two identical conditional writes run one after the
other and the second sees the first's result — exactly one resource, by design."""

import hashlib
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

from django.db import connection

from clinik.fhir.http import FhirError
from clinik.fhir.search.query import parse_search
from clinik.fhir.store import Version, get_store

_RESULT_PARAMS = {"_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total"}


def parse_criteria(criteria: str) -> list[tuple[str, str]]:
    params = [
        (name, value)
        for name, value in parse_qsl(criteria, keep_blank_values=True)
        if name not in ("_format", "_pretty")
    ]
    if not params:
        raise FhirError(400, "invalid", "A conditional operation needs search criteria")
    if any(name.split(":")[0] in _RESULT_PARAMS for name, _ in params):
        raise FhirError(400, "invalid", "Conditional criteria cannot carry result parameters")
    return params


def lock_criteria(tenant: UUID, resource_type: str, params: list[tuple[str, str]]) -> None:
    """Serialize conditional writes with the same criteria inside one tenant. The lock
    is released when the transaction ends; different criteria never wait."""
    canonical = "&".join(f"{n}={v}" for n, v in sorted(params))
    digest = hashlib.sha256(f"{tenant}|{resource_type}|{canonical}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def find(
    tenant: UUID, resource_type: str, params: list[tuple[str, str]], *, limit: int = 2
) -> list[Version]:
    """Up to `limit` current matches of the criteria inside the tenant. Unknown
    parameters are an error here: ignoring one would widen the match."""
    query = parse_search(params, [resource_type], strict=True)
    query.count = limit
    query.total = "none"
    return list(get_store().search(tenant, query).matches)


def find_one(
    tenant: UUID, resource_type: str, criteria: str, *, lock: bool = True
) -> Version | None:
    """The single match, None for no match, 412 for several."""
    params = parse_criteria(criteria)
    if lock:
        lock_criteria(tenant, resource_type, params)
    matches = find(tenant, resource_type, params)
    if len(matches) > 1:
        raise FhirError(412, "multiple-matches", "The criteria match more than one resource")
    return matches[0] if matches else None


def resolve_conditional_reference(tenant: UUID, reference: str) -> str:
    """`Patient?identifier=sys|val` → `Patient/<id>` of the one match in the tenant."""
    resource_type, _, criteria = reference.partition("?")
    matches = find(tenant, resource_type, parse_criteria(criteria))
    if len(matches) != 1:
        found = "no resource" if not matches else "several resources"
        raise FhirError(
            412 if matches else 400,
            "not-found" if not matches else "multiple-matches",
            f"A conditional reference to {resource_type} matches {found}",
        )
    return f"{resource_type}/{matches[0].id}"


def is_conditional_reference(value: Any) -> bool:
    if not isinstance(value, str) or "?" not in value:
        return False
    head = value.split("?", 1)[0]
    return head.isalpha() and head[:1].isupper()
