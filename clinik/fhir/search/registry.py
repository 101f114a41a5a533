"""Every R4 search parameter, compiled at import from the official definitions
(`Bundle-searchParams.json` of the `hl7.fhir.r4.examples` package: 1,375
SearchParameters) into one `SearchParam` per (resource type, code).

Compiling all of them takes a few tens of milliseconds, so there is no build step:
the table is the package itself.
"""

import itertools
import json
import logging
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from clinik.fhir.search import paths
from clinik.fhir.search.paths import Extractor, Item, Unsupported
from clinik.fhir.spec import RESOURCE_TYPES, package_path

logger = logging.getLogger(__name__)

SEARCH_PARAMS_FILE = "Bundle-searchParams.json"
TYPES = ("string", "token", "date", "reference", "quantity", "number", "uri", "composite")

# Resources that are not DomainResources: no narrative, so `_text` never applies.
_NOT_DOMAIN = frozenset({"Bundle", "Binary", "Parameters"})

ComponentExtractor = Any  # Callable[[resource, list[Item]], list[Item]]


@dataclass(frozen=True)
class Component:
    type: str
    extract: ComponentExtractor


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    resource_type: str
    url: str
    expression: str
    extract: Extractor | None = None
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    column: str | None = None
    """`id` or `last_updated`: answered from fhir_resource itself, not an index table."""
    unsupported: str | None = None
    """Why this parameter cannot be searched (None: it can)."""
    fallback: bool = False
    """Extracted by fhirpathpy rather than the compiled subset."""
    modifiers: frozenset[str] = field(default_factory=frozenset)
    component_key: tuple[tuple[str, str], ...] = ()
    """A composite's components as (type, expression)."""
    parts: tuple[str, ...] = ()
    """Parameters of the same type whose index rows together are exactly this one's
    (Observation's `combo-code` is `code | component-code`): it has no rows of its
    own, and a search on it reads theirs (`stored`)."""
    restrict_to: str | None = None
    """With `parts`, for a reference parameter that is another one whose target is of
    this type (Observation's `patient` is `subject.where(resolve() is Patient)`): its
    reference rows are that one's rows with this target type (its `:identifier` rows
    are its own: an identifier-only reference has no type)."""

    @property
    def searchable(self) -> bool:
        return self.unsupported is None

    @property
    def stored(self) -> tuple[str, ...]:
        """The codes its index rows are written under."""
        return self.parts or (self.code,)

    def values(self, resource: dict[str, Any]) -> list[Item]:
        return self.extract(resource) if self.extract else []


_MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"missing", "exact", "contains"}),
    "token": frozenset({"missing", "not", "text"}),
    "reference": frozenset({"missing", "identifier"}),  # plus :[type]
    "uri": frozenset({"missing", "below", "above"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "composite": frozenset({"missing"}),
}


def _load_definitions() -> list[dict[str, Any]]:
    bundle = json.loads((package_path() / SEARCH_PARAMS_FILE).read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]]


def _concrete_types(base: str) -> list[str]:
    if base == "Resource":
        return sorted(RESOURCE_TYPES)
    if base == "DomainResource":
        return sorted(RESOURCE_TYPES - _NOT_DOMAIN)
    return [base] if base in RESOURCE_TYPES else []


def _compile_one(
    definition: dict[str, Any], resource_type: str, by_url: dict[str, dict[str, Any]]
) -> SearchParam:
    code, type_ = definition["code"], definition["type"]
    expression = definition.get("expression") or ""
    base = {
        "code": code,
        "type": type_,
        "resource_type": resource_type,
        "url": definition["url"],
        "modifiers": _MODIFIERS.get(type_, frozenset()),
    }
    if code in ("_id", "_lastUpdated"):
        column = "id" if code == "_id" else "last_updated"
        return SearchParam(expression=expression, column=column, **base)
    if type_ not in TYPES:
        return SearchParam(expression=expression, unsupported=f"{type_} parameters", **base)
    if not expression:
        return SearchParam(expression="", unsupported="no FHIRPath expression", **base)
    terms = [t for t in paths.split_union(expression) if paths.applies_to(t, resource_type)]
    own = " | ".join(terms)
    fallback = False
    try:
        extract = paths.compile_path(own, resource_type)
    except Unsupported:
        extract, fallback = paths.fhirpath_extractor(own, resource_type), True
    if extract is None:
        return SearchParam(expression=own, unsupported="no element of this type", **base)
    targets = tuple(t for t in definition.get("target", []) if t in RESOURCE_TYPES)
    components: list[Component] = []
    component_key: list[tuple[str, str]] = []
    if type_ == "composite":
        context = _context_types(own, resource_type)
        for component in definition.get("component", []):
            target = by_url.get(component["definition"])
            if target is None or target["type"] not in TYPES or target["type"] == "composite":
                return SearchParam(expression=own, unsupported="component", **base)
            relative = paths.compile_relative(component["expression"], context, resource_type)
            if relative is None:
                return SearchParam(expression=own, unsupported="component", **base)
            components.append(Component(target["type"], relative))
            component_key.append((target["type"], " ".join(component["expression"].split())))
    if type_ == "reference" and own.endswith(".resource") and "entry" in own:
        # Bundle.entry[0].resource is a resource inside the bundle, not a reference.
        return SearchParam(expression=own, unsupported="contained resources", **base)
    return SearchParam(
        expression=own,
        extract=extract,
        targets=targets,
        components=tuple(components),
        component_key=tuple(component_key),
        fallback=fallback,
        **base,
    )


def _context_types(expression: str, resource_type: str) -> frozenset[str]:
    """The FHIR types a composite's own expression returns (its components' context)."""
    tree = paths._Parser(expression).parse()
    compiled = paths._compile(tree, frozenset({resource_type}), resource_type)
    if compiled is None:
        raise Unsupported(expression)
    return compiled[1]


def _terms(param: SearchParam) -> frozenset[str]:
    return frozenset(" ".join(t.split()) for t in paths.split_union(param.expression))


def _storable(param: SearchParam) -> bool:
    # References are the other kind (_with_restricted); no R4 reference parameter is a
    # union of others.
    return (
        param.searchable
        and param.extract is not None
        and not param.column
        and not param.fallback
        and param.type != "reference"
    )


def _with_parts(params: dict[str, SearchParam]) -> dict[str, SearchParam]:
    """Mark each parameter whose terms are exactly another's (Patient's `phonetic` is
    `name`'s expression; the first code in order keeps the rows), or exactly those of
    two or three other parameters of the same type (and components), disjoint: its
    rows would repeat theirs, so none are written for it and searches read theirs.
    Observation's combo-* parameters are four of its twelve rows otherwise."""
    out = dict(params)
    first: dict[tuple[Any, ...], str] = {}
    for code, param in sorted(params.items()):
        if _storable(param):
            same = first.setdefault((param.type, _terms(param), param.component_key), code)
            if same != code:
                out[code] = replace(param, parts=(same,))
    for code, param in sorted(params.items(), key=lambda item: len(_terms(item[1]))):
        if out[code].parts:
            continue
        whole = _terms(param)
        if len(whole) < 2 or not _storable(param):
            continue
        candidates = [
            other
            for other in out.values()
            if other.code != code
            and not other.parts
            and _storable(other)
            and other.type == param.type
            and other.component_key == param.component_key
            and _terms(other) < whole
        ]
        for size in (2, 3):
            group = next(
                (
                    group
                    for group in itertools.combinations(candidates, size)
                    if sum(len(_terms(q)) for q in group) == len(whole)
                    and frozenset().union(*(_terms(q) for q in group)) == whole
                ),
                None,
            )
            if group is not None:
                out[code] = replace(param, parts=tuple(sorted(q.code for q in group)))
                break
    return out


def _with_restricted(params: dict[str, SearchParam]) -> dict[str, SearchParam]:
    """Mark each reference parameter `X.where(resolve() is T)` whose `X` is another
    reference parameter's whole expression (47 in R4, `patient` of most clinical
    resources): its reference rows would repeat that one's with target type T."""
    by_expression = {
        p.expression: p
        for p in params.values()
        if p.type == "reference"
        and p.searchable
        and p.extract is not None
        and not p.fallback
        and not _RESTRICTED.fullmatch(p.expression)  # a base has rows of its own
    }
    out = dict(params)
    for code, param in params.items():
        if param.type != "reference" or param.extract is None or param.fallback:
            continue
        match = _RESTRICTED.fullmatch(param.expression)
        if match is None or match.group(2) not in RESOURCE_TYPES:
            continue
        base = by_expression.get(match.group(1))
        if base is not None and base.code != code:
            out[code] = replace(param, parts=(base.code,), restrict_to=match.group(2))
    return out


_RESTRICTED = re.compile(r"(.+)\.where\(resolve\(\) is (\w+)\)")


def _build() -> dict[str, dict[str, SearchParam]]:
    definitions = _load_definitions()
    by_url = {d["url"]: d for d in definitions}
    table: dict[str, dict[str, SearchParam]] = {t: {} for t in RESOURCE_TYPES}
    for definition in definitions:
        for base in definition["base"]:
            for resource_type in _concrete_types(base):
                param = _compile_one(definition, resource_type, by_url)
                table[resource_type][param.code] = param
    return {
        resource_type: _with_restricted(_with_parts(params))
        for resource_type, params in table.items()
    }


PARAMS: MappingProxyType[str, MappingProxyType[str, SearchParam]] = MappingProxyType(
    {t: MappingProxyType(params) for t, params in _build().items()}
)

COMMON = ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source")
"""The parameters every resource type has: the only ones of a search without _type."""


def get(resource_type: str, code: str) -> SearchParam | None:
    return PARAMS.get(resource_type, MappingProxyType({})).get(code)


def searchable(resource_type: str) -> list[SearchParam]:
    """The parameters of a type that can be searched, by code."""
    params = PARAMS.get(resource_type, MappingProxyType({}))
    return [p for _code, p in sorted(params.items()) if p.searchable]
