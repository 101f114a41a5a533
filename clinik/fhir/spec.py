"""The FHIR R4 definitions, as compiled by `clinik.fhir.build_definitions`.

Loaded once at import. `STRUCTURES` maps a complex type, a resource type or a backbone
element path (`Patient.contact`) to its child elements, keyed by JSON property name;
choice elements are spelled out per type (`valueQuantity`, `valueString`, ...).
"""

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clinik.fhir.build_definitions import PACKAGE_DIR, TABLE, TABLE_FORMAT


class DefinitionsMissing(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ElementDef:
    name: str
    """JSON property name, e.g. `birthDate`, `valueQuantity`."""
    type: str
    """FHIR type code (`string`, `HumanName`, `Resource`) or, for a backbone element,
    the key of its structure in STRUCTURES (`Patient.contact`)."""
    min: int
    many: bool
    choice: str | None
    """The choice group (`value` for `valueQuantity`), None for ordinary elements."""
    value_set: str | None
    """Canonical URL of a required binding whose codes are in VALUE_SETS."""


def _load_table() -> dict[str, Any]:
    try:
        table: dict[str, Any] = json.loads(TABLE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DefinitionsMissing(
            f"The FHIR R4 definitions table {TABLE} is missing: run `make install` "
            "(or `python -m clinik.fhir.build_definitions`)."
        ) from None
    if table.get("format") != TABLE_FORMAT:
        raise DefinitionsMissing(
            f"The FHIR R4 definitions table {TABLE} is out of date: run `make install`."
        )
    return table


_TABLE = _load_table()

FHIR_VERSION: str = _TABLE["fhirVersion"]
RESOURCE_TYPES: frozenset[str] = frozenset(_TABLE["resourceTypes"])
PRIMITIVE_TYPES: Mapping[str, str | None] = MappingProxyType(_TABLE["primitives"])
"""Primitive type code -> the regex its string form must match (None: no regex)."""
STRUCTURES: Mapping[str, Mapping[str, ElementDef]] = MappingProxyType(
    {
        key: MappingProxyType(
            {
                name: ElementDef(name, type_, min_, many, choice, value_set)
                for name, (type_, min_, many, choice, value_set) in children.items()
            }
        )
        for key, children in _TABLE["structures"].items()
    }
)
VALUE_SETS: Mapping[str, frozenset[str]] = MappingProxyType(
    {url: frozenset(codes) for url, codes in _TABLE["valueSets"].items()}
)
del _TABLE

# Resources that define the specification itself rather than record clinical or
# administrative facts; tests that round-trip "data" examples usually skip them.
CONFORMANCE_TYPES: frozenset[str] = frozenset(
    {
        "CapabilityStatement",
        "CodeSystem",
        "CompartmentDefinition",
        "ConceptMap",
        "GraphDefinition",
        "ImplementationGuide",
        "MessageDefinition",
        "NamingSystem",
        "OperationDefinition",
        "SearchParameter",
        "StructureDefinition",
        "StructureMap",
        "TerminologyCapabilities",
        "ValueSet",
    }
)

# The package's bundles of conformance resources (`Bundle-resources.json`, ...).
SPECIFICATION_BUNDLES: frozenset[str] = frozenset(
    {
        "conceptmaps",
        "dataelements",
        "extensions",
        "externals",
        "profiles-others",
        "registry",
        "resources",
        "searchParams",
        "terminologies",
        "types",
        "v2-valuesets",
        "v3-valuesets",
        "valueset-expansions",
        "valuesets",
    }
)

_EXAMPLE_FILE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)-(?P<id>.+)\.json")


def element_at(path: str) -> ElementDef | None:
    """The element at a dotted path such as `Patient.contact.name.family`, following
    complex types and backbone elements; None when there is no such element."""
    head, _, rest = path.partition(".")
    structure = STRUCTURES.get(head)
    element: ElementDef | None = None
    for name in rest.split(".") if rest else []:
        if structure is None:
            return None
        element = structure.get(name)
        if element is None:
            return None
        structure = STRUCTURES.get(element.type)
    return element


def package_path() -> Path:
    """The extracted `hl7.fhir.r4.examples` package: every resource of the R4
    specification as `Type-id.json`, plus `Bundle-searchParams.json` and friends."""
    if not (PACKAGE_DIR / "package.json").is_file():
        raise DefinitionsMissing(
            f"The FHIR R4 package {PACKAGE_DIR} is missing: run `make install`."
        )
    return PACKAGE_DIR


def example_files(*, include_conformance: bool = True) -> list[Path]:
    """The package's resource files, sorted by name, optionally without conformance
    resources (StructureDefinition, ValueSet, SearchParameter, ... and the bundles
    of them)."""
    files = []
    for path in sorted(package_path().iterdir()):
        match = _EXAMPLE_FILE.fullmatch(path.name)
        if match is None:
            continue  # package.json, and ig-r4.json which repeats ImplementationGuide-fhir.json
        if not include_conformance and (
            match["type"] in CONFORMANCE_TYPES
            or (match["type"] == "Bundle" and match["id"] in SPECIFICATION_BUNDLES)
        ):
            continue
        files.append(path)
    return files


def example_resources(*, include_conformance: bool = True) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(path, parsed JSON) of every resource in the package, in file-name order."""
    for path in example_files(include_conformance=include_conformance):
        yield path, json.loads(path.read_text(encoding="utf-8"))
