"""The R4 compartments (Patient, Encounter, RelatedPerson, Practitioner, Device), read
from the official CompartmentDefinitions of the `hl7.fhir.r4.examples` package.

A resource is in the compartment of `Patient/123` when one of the search parameters
the definition names for its type refers to `Patient/123`; `{def}` stands for the
focal resource itself (an Encounter is in its own compartment). Membership is read
from the reference index rows of those parameters, so a compartment search is an
ordinary search with one more criterion (`Compartment` in `search.query`).
"""

import json
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType
from typing import Any

from clinik.fhir.search import registry
from clinik.fhir.spec import package_path

DEFINITION_FILES = {
    "Patient": "CompartmentDefinition-patient.json",
    "Encounter": "CompartmentDefinition-encounter.json",
    "RelatedPerson": "CompartmentDefinition-relatedPerson.json",
    "Practitioner": "CompartmentDefinition-practitioner.json",
    "Device": "CompartmentDefinition-device.json",
}
FOCAL = "{def}"


@dataclass(frozen=True)
class CompartmentDef:
    code: str
    """The focal resource type, `Patient`."""
    url: str
    members: MappingProxyType[str, tuple[str, ...]]
    """Member resource type -> the index codes (SearchParam.stored) of the parameters
    that put one in the compartment; a type that is in only through `{def}` has none."""
    focal_member: frozenset[str]
    """Types whose definition lists `{def}` (the focal resource itself)."""
    skipped: tuple[str, ...]
    """`Type.param` the definition names that this server cannot search (none today)."""

    @property
    def types(self) -> list[str]:
        return sorted(set(self.members) | self.focal_member)


def _compile(code: str, definition: dict[str, Any]) -> CompartmentDef:
    members: dict[str, tuple[str, ...]] = {}
    focal: set[str] = set()
    skipped: list[str] = []
    for entry in definition.get("resource", []):
        resource_type = entry["code"]
        codes: list[str] = []
        for name in entry.get("param", []):
            if name == FOCAL:
                focal.add(resource_type)
                continue
            param = registry.get(resource_type, name)
            if param is None or param.unsupported or param.type != "reference":
                skipped.append(f"{resource_type}.{name}")
                continue
            codes += [c for c in param.stored if c not in codes]
        if codes:
            members[resource_type] = tuple(codes)
    return CompartmentDef(
        code=code,
        url=definition["url"],
        members=MappingProxyType(members),
        focal_member=frozenset(focal),
        skipped=tuple(skipped),
    )


@cache
def definitions() -> MappingProxyType[str, CompartmentDef]:
    table = {}
    for code, file_name in DEFINITION_FILES.items():
        definition = json.loads((package_path() / file_name).read_text(encoding="utf-8"))
        if definition.get("code") != code:
            raise ValueError(f"{file_name} does not define the {code} compartment")
        table[code] = _compile(code, definition)
    return MappingProxyType(table)


def get(code: str) -> CompartmentDef | None:
    return definitions().get(code)
