"""Conditional create, update and delete, and conditional references: searches that
decide a write. Each takes a transaction-scoped advisory lock on (tenant, type,
criteria) before searching, so two identical conditional writes run one after the
other and the second sees the first's result — exactly one resource, by design."""

import hashlib
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

import orjson
from django.db import connection

from clinik.fhir.http import FhirError
from clinik.fhir.search import registry
from clinik.fhir.search.extract import extract_params
from clinik.fhir.search.query import MAX_VALUES, Clause, TokenValue, parse_search
from clinik.fhir.search.values import clip
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


def _lock_key(tenant: UUID, resource_type: str, params: list[tuple[str, str]]) -> int:
    canonical = "&".join(f"{n}={v}" for n, v in sorted(params))
    digest = hashlib.sha256(f"{tenant}|{resource_type}|{canonical}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_criteria(tenant: UUID, resource_type: str, params: list[tuple[str, str]]) -> None:
    """Serialize conditional writes with the same criteria inside one tenant. The lock
    is released when the transaction ends; different criteria never wait."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s)", [_lock_key(tenant, resource_type, params)]
        )


def lock_many(tenant: UUID, wanted: list[tuple[str, list[tuple[str, str]]]]) -> None:
    """lock_criteria for many (type, criteria) in one statement, in key order (two
    bundles locking overlapping sets cannot deadlock)."""
    keys = sorted({_lock_key(tenant, t, params) for t, params in wanted})
    if keys:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_advisory_xact_lock(k)) FROM"
                " (SELECT k FROM unnest(%s::bigint[]) AS k ORDER BY k) AS s",
                [keys],
            )


def find(
    tenant: UUID, resource_type: str, params: list[tuple[str, str]], *, limit: int = 2
) -> list[Version]:
    """Up to `limit` current matches of the criteria inside the tenant. Unknown
    parameters are an error here: ignoring one would widen the match."""
    query = parse_search(params, [resource_type], strict=True)
    query.count = limit
    query.total = "none"
    return list(get_store().search(tenant, query).matches)


def find_many(
    tenant: UUID, wanted: list[tuple[str, str]], *, lock: bool = True
) -> dict[tuple[str, str], list[Version] | FhirError]:
    """Up to two current matches of each (type, criteria), in few searches (a bundle's
    ifNoneExist and conditional references). Criteria that are one token parameter
    with one value (`identifier=system|value`, what Synthea sends) are searched
    together, MAX_VALUES values OR-ed per search, and each match is attributed to its
    criteria by its own index rows; other criteria get a search each. With `lock`,
    every criteria's lock_criteria is taken first. Criteria in error (an unknown
    parameter, a bad value) get their FhirError instead of matches."""
    found: dict[tuple[str, str], list[Version] | FhirError] = {}
    parsed: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for key in sorted(set(wanted)):
        try:
            parsed[key] = parse_criteria(key[1])
        except FhirError as error:
            found[key] = error
    if lock:
        lock_many(tenant, [(t, params) for (t, _c), params in parsed.items()])
    groups: dict[tuple[str, str], list[tuple[tuple[str, str], str, TokenValue]]] = {}
    for key, params in parsed.items():
        token = _single_token(key[0], params)
        if token is None:
            try:
                found[key] = find(tenant, key[0], params)
            except FhirError as error:
                found[key] = error
        else:
            groups.setdefault((key[0], params[0][0]), []).append((key, params[0][1], token))
    for (resource_type, name), items in groups.items():
        param = registry.get(resource_type, name)
        assert param is not None
        for start in range(0, len(items), MAX_VALUES):
            chunk = items[start : start + MAX_VALUES]
            query = parse_search(
                [(name, ",".join(raw for _, raw, _ in chunk))], [resource_type], strict=True
            )
            query.count, query.total = 2 * len(chunk) + 1, "none"
            matches = get_store().search(tenant, query).matches
            if len(matches) == query.count:  # cut short: ask each criteria on its own
                for key, _raw, _token in chunk:
                    found[key] = find(tenant, resource_type, parsed[key])
                continue
            hits: dict[tuple[str, str], list[Version]] = {key: [] for key, _r, _t in chunk}
            by_code: dict[str, list[tuple[tuple[str, str], TokenValue]]] = {}
            for key, _raw, token in chunk:
                by_code.setdefault(clip(token.code or ""), []).append((key, token))
            for version in matches:
                document = orjson.loads(version.content or "{}")
                rows = extract_params(document, param.stored).token
                for key in _attributed(rows, by_code):
                    if len(hits[key]) < 2 and version not in hits[key]:
                        hits[key].append(version)
            found.update(hits)
    return found


def _single_token(resource_type: str, params: list[tuple[str, str]]) -> TokenValue | None:
    """The value of criteria that are one plain token parameter with one value."""
    if len(params) != 1:
        return None
    name = params[0][0]
    param = registry.get(resource_type, name)
    if param is None or param.type != "token" or param.column or param.unsupported:
        return None
    try:
        criterion = parse_search(params, [resource_type], strict=True).criteria[resource_type]
    except FhirError:
        return None
    if len(criterion) != 1 or not isinstance(criterion[0], Clause):
        return None
    clause = criterion[0]
    if clause.modifier or clause.missing is not None or len(clause.values) != 1:
        return None
    value = clause.values[0]
    if not isinstance(value, TokenValue) or value.code is None:
        return None
    return value


def _attributed(
    rows: set[tuple[str, str, str]], by_code: dict[str, list[tuple[tuple[str, str], TokenValue]]]
) -> set[tuple[str, str]]:
    """The criteria (of one parameter, by code) that a resource's token rows of that
    parameter match."""
    keys = set()
    for _param, system, code in rows:
        for key, token in by_code.get(code, ()):
            if token.system is None or clip(token.system) == system:
                keys.add(key)
    return keys


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
