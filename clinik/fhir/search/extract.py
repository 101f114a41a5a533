"""Index rows of one resource: every searchable parameter of its type, evaluated by
the compiled extractors, turned into rows of the index tables.

The FHIR type of each value decides how it is indexed (a token from a Coding, a
CodeableConcept, an Identifier or a plain code; a date range from a date, a Period
or a Timing; ...), following the R4 search page's tables.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import product
from typing import Any

from clinik.fhir.search import registry
from clinik.fhir.search.paths import Item, reference_type
from clinik.fhir.search.registry import SearchParam
from clinik.fhir.search.values import (
    HIGHEST,
    LOWEST,
    MAX_INDEXED_CHARS,
    clip,
    date_range,
    normalize,
    parse_decimal,
)
from clinik.fhir.tenancy import TENANT_SYSTEM

INFINITY = float("inf")
CURRENCY_SYSTEM = "urn:iso:std:iso:4217"
TEXT_SUFFIX = ":text"
"""Token text (CodeableConcept.text, Coding.display) is indexed as a string under
`<code>:text`, so `:text` searches use the string index."""
IDENTIFIER_SUFFIX = ":identifier"
"""Reference.identifier is indexed as a token under `<code>:identifier`."""

TABLES = (
    "fhir_idx_string",
    "fhir_idx_token",
    "fhir_idx_date",
    "fhir_idx_number",
    "fhir_idx_quantity",
    "fhir_idx_reference",
    "fhir_idx_uri",
    "fhir_idx_composite",
)


@dataclass
class IndexRows:
    """Rows per index table, without the (org_id, resource_type, id) every row has."""

    string: set[tuple[str, str, str]] = field(default_factory=set)  # param, value, exact
    token: set[tuple[str, str, str]] = field(default_factory=set)  # param, system, code
    date: set[tuple[str, datetime, datetime]] = field(default_factory=set)
    number: set[tuple[str, float, float]] = field(default_factory=set)
    quantity: set[tuple[str, float, float, str, str, str]] = field(default_factory=set)
    # param, low, high, system, code, unit
    reference: set[tuple[str, str, str]] = field(default_factory=set)  # param, type, id
    uri: set[tuple[str, str]] = field(default_factory=set)
    composite: set[tuple[Any, ...]] = field(default_factory=set)

    def __len__(self) -> int:
        return sum(len(getattr(self, name)) for name in self.__dataclass_fields__)


# --- values of each search type -----------------------------------------------------------


def _strings(value: Any, type_: str) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        if type_ == "HumanName":
            keys: tuple[str, ...] = ("family", "given", "prefix", "suffix", "text")
        elif type_ == "Address":
            keys = ("line", "city", "district", "state", "postalCode", "country", "text")
        else:
            keys = ("text", "display", "value")
        for key in keys:
            part = value.get(key)
            for text in part if isinstance(part, list) else [part]:
                if isinstance(text, str):
                    yield text


def _codings(value: Any, type_: str) -> Iterator[tuple[str, str, str | None]]:
    """(system, code, text) of a token value; system '' when absent."""
    if isinstance(value, bool):
        yield "", "true" if value else "false", None
    elif isinstance(value, str | int | float):
        yield "", str(value), None
    elif isinstance(value, dict):
        if type_ == "CodeableConcept" or "coding" in value:
            for coding in value.get("coding") or []:
                if isinstance(coding, dict):
                    yield from _codings(coding, "Coding")
            if isinstance(value.get("text"), str):
                yield "", "", value["text"]
        elif type_ == "Identifier":
            text = (value.get("type") or {}).get("text")
            if isinstance(value.get("value"), str):
                yield value.get("system") or "", value["value"], text
        elif type_ == "ContactPoint":
            if isinstance(value.get("value"), str):
                yield "", value["value"], None
        elif "code" in value or "display" in value:  # Coding
            if value.get("system") == TENANT_SYSTEM:
                return  # every resource has it: the tenant wall, not a search term
            code = value.get("code")
            yield (
                value.get("system") or "",
                code if isinstance(code, str) else "",
                value.get("display"),
            )


def _dates(value: Any, type_: str) -> Iterator[tuple[datetime, datetime]]:
    if isinstance(value, str):
        span = date_range(value)
        if span:
            yield span
    elif isinstance(value, dict):
        if type_ == "Timing" or "event" in value or "repeat" in value:
            events = [date_range(e) for e in value.get("event") or [] if isinstance(e, str)]
            spans = [e for e in events if e]
            if spans:
                yield min(s[0] for s in spans), max(s[1] for s in spans)
            bounds = (value.get("repeat") or {}).get("boundsPeriod")
            if isinstance(bounds, dict):
                yield from _dates(bounds, "Period")
        elif "start" in value or "end" in value:
            start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
            end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
            yield (start[0] if start else LOWEST), (end[1] if end else HIGHEST)


def _number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        parsed = parse_decimal(raw)
        return float(parsed) if parsed is not None else None
    return None


def _numbers(value: Any, type_: str) -> Iterator[tuple[float, float]]:
    if isinstance(value, dict):
        if "low" in value or "high" in value:  # Range
            low = _number((value.get("low") or {}).get("value"))
            high = _number((value.get("high") or {}).get("value"))
            if low is not None or high is not None:
                yield (
                    (low if low is not None else -INFINITY),
                    (high if high is not None else INFINITY),
                )
        elif (number := _number(value.get("value"))) is not None:
            yield number, number
    elif (number := _number(value)) is not None:
        yield number, number


def _quantities(value: Any, type_: str) -> Iterator[tuple[float, float, str, str, str]]:
    if not isinstance(value, dict):
        return
    if "low" in value or "high" in value:  # Range: the units of whichever end is given
        end = value.get("low") or value.get("high") or {}
        for low, high in _numbers(value, type_):
            yield (
                low,
                high,
                end.get("system") or "",
                end.get("code") or end.get("unit") or "",
                (end.get("unit") or ""),
            )
        return
    number = _number(value.get("value"))
    if number is None:
        return
    if type_ == "Money" or "currency" in value:
        yield number, number, CURRENCY_SYSTEM, value.get("currency") or "", ""
        return
    unit = value.get("unit") or ""
    yield number, number, value.get("system") or "", value.get("code") or unit, unit


def _references(value: Any, type_: str) -> Iterator[tuple[str, str]]:
    """(target type, target id) of a reference: ('Patient', '1') for `Patient/1`;
    absolute URLs and canonicals keep their whole URL (without |version) as the id."""
    if isinstance(value, str):  # canonical or uri
        yield reference_type(value) or "", value.split("|", 1)[0]
        return
    if not isinstance(value, dict):
        return
    reference = value.get("reference")
    if not isinstance(reference, str) or not reference or reference.startswith("#"):
        return
    target = reference_type(reference) or ""
    parts = reference.split("/")
    if "/_history/" in reference:
        parts = reference.split("/_history/", 1)[0].split("/")
    is_relative = "://" not in reference and not reference.startswith("urn:")
    if is_relative and len(parts) == 2 and target:
        yield target, parts[1]
    else:
        yield target, reference.split("|", 1)[0]


def _uris(value: Any, type_: str) -> Iterator[str]:
    if isinstance(value, str):
        yield value


# --- rows ---------------------------------------------------------------------------------


def _add_string(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    code, add = param.code, rows.string.add
    for value, type_ in items:
        if isinstance(value, str):  # what _strings yields for it, without a generator
            add((code, normalize(value), value[:MAX_INDEXED_CHARS]))
            continue
        for text in _strings(value, type_):
            add((code, normalize(text), text[:MAX_INDEXED_CHARS]))


def _add_token(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    code = param.code
    for value, type_ in items:
        for system, token, display in _codings(value, type_):
            if token:
                rows.token.add((code, clip(system), clip(token)))
            if isinstance(display, str) and display:
                rows.string.add((code + TEXT_SUFFIX, normalize(display), clip(display)))


def _add_date(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    code = param.code
    for value, type_ in items:
        for start, end in _dates(value, type_):
            rows.date.add((code, start, end))


def _add_number(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    code = param.code
    for value, type_ in items:
        for low, high in _numbers(value, type_):
            rows.number.add((code, low, high))


def _add_quantity(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    code = param.code
    for value, type_ in items:
        for q_low, q_high, q_system, unit_code, unit in _quantities(value, type_):
            rows.quantity.add((code, q_low, q_high, clip(q_system), clip(unit_code), clip(unit)))


def _add_reference(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    code = param.code
    for value, type_ in items:
        # (a restricted parameter's reference rows are its base's: registry)
        for target_type, target_id in _references(value, type_):
            if not param.restrict_to:
                rows.reference.add((code, target_type, clip(target_id)))
        if isinstance(value, dict) and isinstance(value.get("identifier"), dict):
            for system, token, _text in _codings(value["identifier"], "Identifier"):
                rows.token.add((code + IDENTIFIER_SUFFIX, clip(system), clip(token)))


def _add_uri(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    code = param.code
    for value, type_ in items:
        for uri in _uris(value, type_):
            rows.uri.add((code, clip(uri)))


def _add_nothing(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    """Kinds without index rows (`special`)."""


Adder = Callable[[IndexRows, SearchParam, list[Item]], None]
_ADDERS: dict[str, Adder] = {
    "string": _add_string,
    "token": _add_token,
    "date": _add_date,
    "number": _add_number,
    "quantity": _add_quantity,
    "reference": _add_reference,
    "uri": _add_uri,
}


def _add(rows: IndexRows, param: SearchParam, items: list[Item]) -> None:
    _ADDERS.get(param.type, _add_nothing)(rows, param, items)


COMPOSITE_COLUMNS = (
    "system1",
    "code1",
    "system2",
    "code2",
    "text2",
    "low2",
    "high2",
    "dlow2",
    "dhigh2",
    "low3",
    "high3",
)


def component_values(kind: str, position: int, items: list[Item]) -> list[dict[str, Any]]:
    """Column values of one composite component (position 1, 2 or 3)."""
    found: list[dict[str, Any]] = []
    for value, type_ in items:
        if kind == "token":
            for system, token, _text in _codings(value, type_):
                if token:
                    found.append({f"system{position}": system, f"code{position}": token})
        elif kind == "reference":
            for target_type, target_id in _references(value, type_):
                joined = f"{target_type}/{target_id}" if "/" not in target_id else target_id
                found.append({f"system{position}": "", f"code{position}": joined})
        elif kind == "uri":
            found.extend(
                {f"system{position}": "", f"code{position}": u} for u in _uris(value, type_)
            )
        elif kind == "string":
            found.extend({f"text{position}": normalize(s)} for s in _strings(value, type_))
        elif kind == "quantity":
            for low, high, system, unit_code, _unit in _quantities(value, type_):
                found.append(
                    {
                        f"low{position}": low,
                        f"high{position}": high,
                        f"system{position}": system,
                        f"code{position}": unit_code,
                    }
                )
        elif kind == "number":
            found.extend(
                {f"low{position}": lo, f"high{position}": hi} for lo, hi in _numbers(value, type_)
            )
        elif kind == "date":
            found.extend(
                {f"dlow{position}": lo, f"dhigh{position}": hi} for lo, hi in _dates(value, type_)
            )
    return found


def _add_composite(rows: IndexRows, param: SearchParam, resource: dict[str, Any]) -> None:
    for root in param.values(resource):
        per_component = [
            component_values(component.type, position, component.extract(resource, [root]))
            for position, component in enumerate(param.components, start=1)
        ]
        for combination in product(*per_component):
            merged: dict[str, Any] = {}
            for part in combination:
                merged.update(part)
            rows.composite.add((param.code, *(merged.get(c) for c in COMPOSITE_COLUMNS)))


def extract_params(resource: dict[str, Any], codes: tuple[str, ...]) -> IndexRows:
    """The index rows of some of a resource's parameters only (by code)."""
    rows = IndexRows()
    for code in codes:
        param = registry.get(resource.get("resourceType", ""), code)
        if param is not None and param.extract is not None and param.type != "composite":
            _add(rows, param, param.extract(resource))
    return rows


_PLANS: dict[str, tuple[tuple[SearchParam, Adder | None], ...]] = {}
"""Per resource type: the parameters `extract` indexes, in registry order, each with
its adder (None: composite). The registry is immutable, so a type's plan is built once."""


def _plan(resource_type: str) -> tuple[tuple[SearchParam, Adder | None], ...]:
    plan = _PLANS.get(resource_type)
    if plan is None:
        plan = tuple(
            (param, None if param.type == "composite" else _ADDERS.get(param.type, _add_nothing))
            for param in registry.PARAMS.get(resource_type, {}).values()
            # (a parameter with parts is searched through their rows)
            if param.extract is not None
            and not param.unsupported
            and not (param.parts and not param.restrict_to)
        )
        if resource_type in registry.PARAMS:  # (not any string a client sends)
            _PLANS[resource_type] = plan
    return plan


def extract(resource: dict[str, Any]) -> IndexRows:
    """Every index row of a resource (of a known type; others get none)."""
    rows = IndexRows()
    for param, adder in _plan(resource.get("resourceType", "")):
        if adder is None:
            _add_composite(rows, param, resource)
        else:
            adder(rows, param, param.extract(resource))  # type: ignore[misc]
    return rows
