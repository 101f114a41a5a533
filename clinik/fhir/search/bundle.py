"""The searchset Bundle: matches, includes, an OperationOutcome entry for ignored
parameters, total, paging links, and `_summary` / `_elements` subsetting."""

import json
from functools import cache
from typing import Any
from urllib.parse import urlencode

import orjson
from django.http import HttpRequest

from clinik.fhir.http import FhirError
from clinik.fhir.search.query import SearchQuery
from clinik.fhir.spec import STRUCTURES, package_path
from clinik.fhir.store.base import SearchResult, Version

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
FORM = "application/x-www-form-urlencoded"
_ALWAYS = ("resourceType", "id", "meta")


def request_params(request: HttpRequest) -> list[tuple[str, str]]:
    """The search parameters of a GET (query string) or a POST [type]/_search (form
    body, plus any in the query string), in order, repetitions kept."""
    pairs = [(name, value) for name, values in request.GET.lists() for value in values]
    if request.method == "POST":
        content_type = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if content_type != FORM:
            raise FhirError(415, "not-supported", f"Send the search parameters as {FORM}")
        pairs += [(name, value) for name, values in request.POST.lists() for value in values]
    return pairs


def strict_handling(request: HttpRequest) -> bool:
    """`Prefer: handling=strict` makes unknown parameters an error; lenient is default."""
    for part in request.headers.get("Prefer", "").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling":
            return value.strip().strip('"').lower() == "strict"
    return False


@cache
def summary_elements() -> dict[str, frozenset[str]]:
    """Top-level JSON names of each resource type's summary elements (isSummary in
    its StructureDefinition), choice elements spelled out. Loaded on first use: the
    profiles bundle is large and only `_summary=true` needs it."""
    bundle = json.loads((package_path() / "Bundle-resources.json").read_text(encoding="utf-8"))
    table: dict[str, frozenset[str]] = {}
    for entry in bundle["entry"]:
        profile = entry["resource"]
        if (
            profile.get("resourceType") != "StructureDefinition"
            or profile.get("kind") != "resource"
        ):
            continue
        type_ = profile["type"]
        structure = STRUCTURES.get(type_, {})
        names: set[str] = set()
        for element in profile["snapshot"]["element"]:
            path = element["path"].split(".")
            if len(path) != 2 or not element.get("isSummary"):
                continue
            name = path[1]
            if name.endswith("[x]"):
                group = name[:-3]
                names.update(k for k, e in structure.items() if e.choice == group)
            else:
                names.add(name)
        table[type_] = frozenset(names)
    return table


def _mandatory(resource_type: str) -> set[str]:
    return {name for name, e in STRUCTURES.get(resource_type, {}).items() if e.min > 0}


def _subset(content: str, keep: set[str] | None, drop: set[str]) -> orjson.Fragment | bytes:
    resource = orjson.loads(content)
    resource_type = resource.get("resourceType", "")
    kept = keep | set(_ALWAYS) | _mandatory(resource_type) if keep is not None else None
    subset = {k: v for k, v in resource.items() if (kept is None or k in kept) and k not in drop}
    meta = dict(subset.get("meta") or {})
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    subset["meta"] = meta
    return orjson.dumps(subset)


def _resource(version: Version, query: SearchQuery) -> orjson.Fragment:
    assert version.content is not None
    if query.elements is not None:
        return orjson.Fragment(_subset(version.content, set(query.elements), set()))
    if query.summary == "true":
        keep = set(summary_elements().get(version.resource_type, frozenset()))
        return orjson.Fragment(_subset(version.content, keep, set()))
    if query.summary == "text":
        return orjson.Fragment(_subset(version.content, {"text"}, set()))
    if query.summary == "data":
        return orjson.Fragment(_subset(version.content, None, {"text"}))
    return orjson.Fragment(version.content)


def _outcome(query: SearchQuery, result: SearchResult) -> dict[str, Any] | None:
    issues = [
        {"severity": "warning", "code": "not-supported", "diagnostics": d} for d in query.issues
    ]
    issues += [
        {"severity": "information", "code": "informational", "diagnostics": n} for n in result.notes
    ]
    if not issues:
        return None
    return {
        "resource": {"resourceType": "OperationOutcome", "issue": issues},
        "search": {"mode": "outcome"},
    }


def searchset(
    request: HttpRequest, query: SearchQuery, result: SearchResult, *, base: str, path: str
) -> bytes:
    """The Bundle for a search. `base` is the FHIR base URL (for fullUrl), `path` the
    search's own URL (links are GETs there, also for POST _search)."""
    entries: list[dict[str, Any]] = []
    for version in result.matches:
        entries.append(
            {
                "fullUrl": f"{base}{version.resource_type}/{version.id}",
                "resource": _resource(version, query),
                "search": {"mode": "match"},
            }
        )
    for version in result.included:
        assert version.content is not None
        entries.append(
            {
                "fullUrl": f"{base}{version.resource_type}/{version.id}",
                "resource": orjson.Fragment(version.content),
                "search": {"mode": "include"},
            }
        )
    outcome = _outcome(query, result)
    if outcome:
        entries.append(outcome)
    params = [(k, v) for k, v in query.params if k not in ("_cursor", "_offset")]

    def link(relation: str, cursor: str | None) -> dict[str, str]:
        pairs = params + ([("_cursor", cursor)] if cursor else [])
        url = request.build_absolute_uri(path) + (f"?{urlencode(pairs)}" if pairs else "")
        return {"relation": relation, "url": url}

    position = query.cursor
    current = position.encode() if position.offset or position.after or position.before else None
    links = [link("self", current)]
    if result.next:
        links.append(link("next", result.next.encode()))
    if result.previous:
        links.append(link("previous", result.previous.encode()))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return orjson.dumps(bundle)
