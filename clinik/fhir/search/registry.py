"""Every R4 search parameter, compiled at import from the official definitions
(`Bundle-searchParams.json` of the `hl7.fhir.r4.examples` package: 1,375
SearchParameters) into one `SearchParam` per (resource type, code).

Compiling all of them takes a few tens of milliseconds, so there is no build step:
the table is the package itself.
"""

import json
import logging
from dataclasses import dataclass, field
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

    @property
    def searchable(self) -> bool:
        return self.unsupported is None

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
    if type_ == "reference" and own.endswith(".resource") and "entry" in own:
        # Bundle.entry[0].resource is a resource inside the bundle, not a reference.
        return SearchParam(expression=own, unsupported="contained resources", **base)
    return SearchParam(
        expression=own,
        extract=extract,
        targets=targets,
        components=tuple(components),
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


def _build() -> dict[str, dict[str, SearchParam]]:
    definitions = _load_definitions()
    by_url = {d["url"]: d for d in definitions}
    table: dict[str, dict[str, SearchParam]] = {t: {} for t in RESOURCE_TYPES}
    for definition in definitions:
        for base in definition["base"]:
            for resource_type in _concrete_types(base):
                param = _compile_one(definition, resource_type, by_url)
                table[resource_type][param.code] = param
    return table


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
