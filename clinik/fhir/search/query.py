"""Parse a FHIR search request into a `SearchQuery`, independent of any store.

Malformed values are a 400 (FhirError) whatever the handling; unknown or unsupported
parameters are dropped and named in `SearchQuery.issues` (lenient, the default) or a
400 (`Prefer: handling=strict`). Error messages name parameters, never their values:
search values are PHI.
"""

import base64
import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from clinik.fhir.http import FhirError
from clinik.fhir.search import registry
from clinik.fhir.search.extract import IDENTIFIER_SUFFIX
from clinik.fhir.search.paths import reference_type
from clinik.fhir.search.registry import SearchParam
from clinik.fhir.search.values import date_range, decimal_range, parse_decimal
from clinik.fhir.spec import RESOURCE_TYPES
from clinik.lib.text import unsafe

DEFAULT_COUNT = 20
MAX_COUNT = 1000
MAX_CHAIN_DEPTH = 3
MAX_HAS_DEPTH = 2
MAX_VALUES = 100
"""OR-ed values of one parameter: enough for real use, bounded for the planner."""
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
SUMMARY_MODES = ("true", "false", "text", "data", "count")
TOTAL_MODES = ("none", "estimate", "accurate")
# Result and control parameters: never search criteria.
RESULT_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_total",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_cursor",
        "_offset",
        "_format",
        "_pretty",
        "_type",
    }
)
_PREFIXED = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[0-9+\-.])")
_RELATIVE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]+)?")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9_\-.:|]{1,200}")


# --- values -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StringValue:
    text: str


@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system; "": no system
    code: str | None  # None: any code of the system


@dataclass(frozen=True)
class DateValue:
    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True)
class NumberValue:
    prefix: str
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class QuantityValue:
    prefix: str
    value: float
    low: float
    high: float
    system: str | None
    code: str | None


@dataclass(frozen=True)
class ReferenceValue:
    type: str | None
    id: str  # a logical id, or a whole absolute/canonical URL


@dataclass(frozen=True)
class UriValue:
    uri: str


@dataclass(frozen=True)
class CompositeValue:
    parts: tuple[Any, ...]


# --- criteria ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Clause:
    """One parameter occurrence: its values are OR-ed."""

    param: SearchParam
    modifier: str | None
    values: tuple[Any, ...]
    missing: bool | None = None  # :missing=true/false

    @property
    def negated(self) -> bool:
        return self.modifier == "not" or self.missing is True


@dataclass(frozen=True)
class Chain:
    """`subject:Patient.name=x`: resources whose reference points at a match."""

    param: SearchParam
    targets: tuple[tuple[str, Any], ...]  # (target type, criterion on that type)


@dataclass(frozen=True)
class Has:
    """`_has:Observation:patient:code=x`: resources referenced by a match."""

    source_type: str
    param: SearchParam  # the reference parameter on the source type
    criterion: Any  # on the source type


@dataclass(frozen=True)
class Compartment:
    """`Patient/123/Observation`: resources that one of the compartment's parameters
    for their type (`members`, index codes per type) refers to the focal resource, and
    the focal resource itself for the types in `focal_types` (`{def}`)."""

    focal_type: str
    focal_id: str
    members: tuple[tuple[str, tuple[str, ...]], ...]  # (resource type, index codes)
    focal_types: frozenset[str] = frozenset()

    def codes(self, resource_type: str) -> tuple[str, ...]:
        return next((codes for t, codes in self.members if t == resource_type), ())


Criterion = Clause | Chain | Has | Compartment


@dataclass(frozen=True)
class SortKey:
    code: str
    descending: bool


@dataclass(frozen=True)
class Include:
    source_type: str
    param: str  # a reference parameter of source_type, or "*"
    target_type: str | None
    iterate: bool


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after a (type, id) key (default order, stable while data
    changes), before one (previous pages), or at an offset (with _sort)."""

    offset: int = 0
    after: tuple[str, str] | None = None
    before: tuple[str, str] | None = None

    def encode(self) -> str:
        body: dict[str, Any] = {"o": self.offset}
        if self.after:
            body["a"] = list(self.after)
        if self.before:
            body["b"] = list(self.before)
        return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> "Cursor":
        try:
            body = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            offset = int(body.get("o", 0))
            after, before = body.get("a"), body.get("b")
            for key in (after, before):
                if key is not None and not (
                    isinstance(key, list) and len(key) == 2 and all(isinstance(k, str) for k in key)
                ):
                    raise ValueError
            if not 0 <= offset <= 1_000_000:
                raise ValueError
        except (ValueError, TypeError, AttributeError, binascii.Error, orjson.JSONDecodeError):
            raise FhirError(400, "value", "_cursor is not a cursor this server issued") from None
        return cls(offset, tuple(after) if after else None, tuple(before) if before else None)


@dataclass
class SearchQuery:
    types: list[str]
    system: bool = False
    criteria: dict[str, list[Any]] = field(default_factory=dict)  # per resource type
    sort: list[SortKey] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    total: str = "accurate"
    summary: str | None = None
    elements: list[str] | None = None
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    cursor: Cursor = field(default_factory=Cursor)
    issues: list[str] = field(default_factory=list)
    """Parameters ignored (lenient handling), as diagnostics that name no values."""
    params: list[tuple[str, str]] = field(default_factory=list)
    """The criteria and result parameters as received, for the Bundle links."""
    strict: bool = False
    """Prefer: handling=strict (a store's unsupported feature is then a 400)."""


# --- parsing helpers ----------------------------------------------------------------------


def _split(raw: str, separator: str) -> list[str]:
    """Split on separator unless escaped with a backslash; parts stay escaped."""
    if "\\" not in raw:
        return raw.split(separator)
    parts, current, escaped = [], [], False
    for char in raw:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(raw: str) -> str:
    return re.sub(r"\\([\\,|$])", r"\1", raw)


def _bad(name: str, what: str) -> FhirError:
    return FhirError(400, "value", f"The value of {name} is not {what}", expression=[name])


def _prefix(raw: str) -> tuple[str, str]:
    match = _PREFIXED.match(raw)
    return (match.group(1), raw[2:]) if match else ("eq", raw)


def _date(name: str, raw: str) -> DateValue:
    prefix, rest = _prefix(raw)
    span = date_range(rest)
    if span is None:
        raise _bad(name, "a valid FHIR date (with an optional prefix such as ge)")
    return DateValue(prefix, span[0], span[1])


def _number(name: str, raw: str) -> NumberValue:
    prefix, rest = _prefix(raw)
    value = parse_decimal(rest)
    if value is None:
        raise _bad(name, "a number (with an optional prefix such as gt)")
    low, high = decimal_range(value)
    return NumberValue(prefix, float(value), low, high)


def _token(raw: str) -> TokenValue:
    parts = _split(raw, "|")
    if len(parts) == 1:
        return TokenValue(None, _unescape(parts[0]) or None)
    system, code = _unescape(parts[0]), _unescape("|".join(parts[1:]))
    return TokenValue(system, code or None)


def _quantity(name: str, raw: str) -> QuantityValue:
    parts = [_unescape(p) for p in _split(raw, "|")]
    number = _number(name, parts[0])
    if len(parts) not in (1, 3):
        raise _bad(name, "a quantity: [prefix]number|system|code")
    system = parts[1] or None if len(parts) == 3 else None
    code = parts[2] or None if len(parts) == 3 else None
    return QuantityValue(number.prefix, number.value, number.low, number.high, system, code)


def _reference(name: str, raw: str, type_modifier: str | None) -> ReferenceValue:
    value = _unescape(raw)
    relative = _RELATIVE.fullmatch(value)
    if relative:
        if type_modifier and relative.group(1) != type_modifier:
            raise _bad(name, f"a reference to a {type_modifier}")
        return ReferenceValue(relative.group(1), relative.group(2))
    if "://" in value or value.startswith("urn:"):
        return ReferenceValue(reference_type(value), value.split("|", 1)[0])
    if _ID.fullmatch(value):
        return ReferenceValue(type_modifier, value)
    raise _bad(name, "a reference (Type/id, id or an absolute URL)")


def _value(param: SearchParam, name: str, modifier: str | None, raw: str) -> Any:
    kind = param.type
    if modifier == "text" or kind == "string":
        if not raw:
            raise _bad(name, "a non-empty string")
        return StringValue(_unescape(raw))
    if kind == "token" or modifier == "identifier":
        token = _token(raw)
        if token.code is None and not token.system:
            raise _bad(name, "a token: [system|]code")
        return token
    if kind == "date":
        return _date(name, raw)
    if kind == "number":
        return _number(name, raw)
    if kind == "quantity":
        return _quantity(name, raw)
    if kind == "reference":
        type_modifier = modifier if modifier and modifier[0].isupper() else None
        return _reference(name, raw, type_modifier)
    if kind == "uri":
        if not raw:
            raise _bad(name, "a URI")
        return UriValue(_unescape(raw))
    if kind == "composite":
        parts = _split(raw, "$")
        if len(parts) != len(param.components):
            raise _bad(name, f"a composite of {len(param.components)} values joined by $")
        return CompositeValue(
            tuple(
                _component_value(component.type, name, part)
                for component, part in zip(param.components, parts, strict=True)
            )
        )
    raise FhirError(400, "not-supported", f"{name} cannot be searched")  # pragma: no cover


def _component_value(kind: str, name: str, raw: str) -> Any:
    if kind in ("token", "reference", "uri"):
        return _token(raw)
    if kind == "string":
        return StringValue(_unescape(raw))
    if kind == "date":
        return _date(name, raw)
    if kind == "number":
        return _number(name, raw)
    return _quantity(name, raw)


# --- the parser ----------------------------------------------------------------------------


class Unknown(Exception):
    """A parameter this server does not know or support: ignored or 400 by handling."""

    def __init__(self, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics


def _safe_name(name: str) -> str:
    """A parameter name as it may appear in a diagnostic (names are not PHI, but a
    client can put anything in one: keep it short and plain)."""
    return name if _NAME.fullmatch(name) else "(a parameter with an unusual name)"


def _criterion(resource_type: str, name: str, raw: str, depth: int = 0) -> Any:
    if name.startswith("_has:"):
        return _has(resource_type, name, raw, depth)
    head, dot, rest = name.partition(".")
    code, _, modifier_text = head.partition(":")
    modifier = modifier_text or None
    param = registry.get(resource_type, code)
    if param is None:
        raise Unknown(f"Unknown search parameter {_safe_name(code)} for {resource_type}")
    if param.unsupported:
        raise Unknown(f"Search parameter {code} is not supported ({param.unsupported})")
    if dot:
        return _chain(resource_type, param, modifier, rest, raw, depth)
    if modifier is not None:
        allowed = modifier in param.modifiers or (
            param.type == "reference"
            and modifier in RESOURCE_TYPES
            and (not param.targets or modifier in param.targets)
        )
        if not allowed:
            raise Unknown(f"Modifier :{_safe_name(modifier)} is not supported on {code}")
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise _bad(name, "true or false")
        return Clause(param, modifier, (), missing=raw == "true")
    values = _split(raw, ",")
    if len(values) > MAX_VALUES:
        raise FhirError(400, "too-costly", f"{name} has more than {MAX_VALUES} values")
    if modifier == "identifier":
        identifier = registry.SearchParam(
            code=param.code + IDENTIFIER_SUFFIX,
            type="token",
            resource_type=resource_type,
            url=param.url,
            expression=param.expression,
        )
        parsed = tuple(_value(identifier, name, None, v) for v in values)
        return Clause(identifier, None, parsed)
    return Clause(param, modifier, tuple(_value(param, name, modifier, v) for v in values))


def _chain(
    resource_type: str, param: SearchParam, modifier: str | None, rest: str, raw: str, depth: int
) -> Chain:
    if param.type != "reference":
        raise Unknown(f"{param.code} is not a reference parameter: it cannot be chained")
    if depth + 1 > MAX_CHAIN_DEPTH:
        raise FhirError(400, "too-costly", f"Chains are limited to {MAX_CHAIN_DEPTH} levels")
    if modifier is not None and modifier not in RESOURCE_TYPES:
        raise Unknown(f"Modifier :{_safe_name(modifier)} cannot start a chain")
    candidates = [modifier] if modifier else list(param.targets)
    targets = []
    errors = []
    for target in candidates:
        try:
            targets.append((target, _criterion(target, rest, raw, depth + 1)))
        except Unknown as unknown:
            errors.append(unknown)
    if not targets:
        raise errors[0] if errors else Unknown(f"{param.code} has no target type to chain into")
    return Chain(param, tuple(targets))


def _has(resource_type: str, name: str, raw: str, depth: int) -> Has:
    parts = name.split(":", 3)
    if len(parts) != 4 or not parts[3]:
        raise FhirError(400, "invalid", "_has must look like _has:Type:reference:parameter")
    _, source_type, code, rest = parts
    if depth >= MAX_HAS_DEPTH:
        raise FhirError(
            400, "too-costly", f"_has may be nested {MAX_HAS_DEPTH - 1} time(s) at most"
        )
    if source_type not in RESOURCE_TYPES:
        raise Unknown(f"_has names an unknown resource type {_safe_name(source_type)}")
    param = registry.get(source_type, code)
    if param is None or param.type != "reference" or param.unsupported:
        raise Unknown(f"_has: {_safe_name(code)} is not a reference parameter of {source_type}")
    if param.targets and resource_type not in param.targets:
        raise Unknown(f"_has: {source_type}.{code} cannot refer to {resource_type}")
    return Has(source_type, param, _criterion(source_type, rest, raw, depth + 1))


def _int(name: str, raw: str, maximum: int) -> int:
    if not raw.isdigit() or len(raw) > 9:
        raise FhirError(400, "value", f"{name} must be a non-negative integer")
    return min(int(raw), maximum)


def _sortable(types: list[str], code: str) -> bool:
    for resource_type in types:
        param = registry.get(resource_type, code)
        if param is None or param.unsupported or param.type == "composite":
            return False
    return True


def _include(types: list[str], name: str, raw: str, reverse: bool) -> Include:
    iterate = name.endswith((":iterate", ":recurse"))
    if raw == "*" and not reverse:
        return Include(types[0] if len(types) == 1 else "*", "*", None, iterate)
    parts = raw.split(":")
    if len(parts) not in (2, 3) or parts[0] not in RESOURCE_TYPES:
        raise FhirError(400, "value", f"{name} must be Type:parameter[:targetType]")
    source_type, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if target is not None and target not in RESOURCE_TYPES:
        raise FhirError(400, "value", f"{name} names an unknown target type")
    param = registry.get(source_type, code)
    if param is None or param.type != "reference" or param.unsupported:
        raise Unknown(f"{name}: {_safe_name(code)} is not a reference parameter of {source_type}")
    if not reverse and not iterate and source_type not in types:
        raise Unknown(f"{name}: {source_type} is not a type being searched")
    return Include(source_type, code, target, iterate)


def parse_search(
    params: list[tuple[str, str]],
    types: list[str] | None,
    *,
    strict: bool = False,
    compartment: Compartment | None = None,
) -> SearchQuery:
    """A SearchQuery from the request's (name, value) pairs, in order. `types` is the
    searched type, or None for a system-level search (`_type`, else every type) or,
    with a compartment, for `[compartment]/[id]/*` (`_type` narrows its types)."""
    system = types is None
    if system:
        requested = [
            t.strip()
            for name, raw in params
            if name == "_type"
            for t in raw.split(",")
            if t.strip()
        ]
        unknown_types = [t for t in requested if t not in RESOURCE_TYPES]
        if unknown_types:
            raise FhirError(400, "value", "_type names an unknown resource type")
        every = sorted(RESOURCE_TYPES)
        if compartment is not None:
            every = sorted({t for t, _ in compartment.members} | compartment.focal_types)
            if any(t not in every for t in requested):
                raise FhirError(
                    400,
                    "value",
                    f"_type names a type outside the {compartment.focal_type} compartment",
                )
        types = sorted(set(requested)) or every
    assert types is not None
    query = SearchQuery(types=types, system=system, criteria={t: [] for t in types}, strict=strict)
    if compartment is not None:
        for resource_type in types:
            query.criteria[resource_type].append(compartment)
    issues: list[str] = []

    def ignore(unknown: Unknown) -> None:
        if strict:
            raise FhirError(400, "not-supported", unknown.diagnostics)
        if unknown.diagnostics not in issues:
            issues.append(unknown.diagnostics)

    for name, raw in params:
        if problem := unsafe(name) or unsafe(raw):  # form bodies, bundle entries, headers
            raise FhirError(400, "invalid", f"Search parameter {_safe_name(name)} {problem}")
        base = name.split(":", 1)[0]
        if name in ("_format", "_pretty"):
            continue
        query.params.append((name, raw))
        if name == "_type" and system:
            continue
        if base in RESULT_PARAMS and not name.startswith("_has"):
            try:
                _result_param(query, name, raw)
            except Unknown as unknown:
                ignore(unknown)
            continue
        if base in ("_text", "_content", "_list", "_query", "_filter"):
            ignore(Unknown(f"Search parameter {base} is not supported"))
            continue
        # Across several types a parameter must be defined for each of them.
        shared = system and len(types) > 1 and not name.startswith("_has") and "." not in name
        parsed: dict[str, Any] = {}
        try:
            for resource_type in types:
                if shared and registry.get(resource_type, base) is None:
                    raise Unknown(
                        f"Search parameter {_safe_name(base)} is not defined for every"
                        " type searched: name the types with _type"
                    )
                parsed[resource_type] = _criterion(resource_type, name, raw)
        except Unknown as unknown:
            ignore(unknown)
            continue
        for resource_type, criterion in parsed.items():
            query.criteria[resource_type].append(criterion)
    query.issues = issues
    return query


def _result_param(query: SearchQuery, name: str, raw: str) -> None:
    base = name.split(":", 1)[0]
    if base == "_count":
        query.count = _int("_count", raw, MAX_COUNT)
    elif base == "_offset":
        query.cursor = Cursor(offset=_int("_offset", raw, 1_000_000))
    elif base == "_cursor":
        query.cursor = Cursor.decode(raw)
    elif base == "_total":
        if raw not in TOTAL_MODES:
            raise FhirError(400, "value", "_total must be none, estimate or accurate")
        query.total = raw
    elif base == "_summary":
        if raw not in SUMMARY_MODES:
            raise FhirError(400, "value", "_summary must be true, false, text, data or count")
        query.summary = None if raw == "false" else raw
    elif base == "_elements":
        elements = [e.strip() for e in raw.split(",") if e.strip()]
        if not all(re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", e) for e in elements):
            raise FhirError(400, "value", "_elements must list element names")
        query.elements = elements
    elif base == "_sort":
        keys = []
        for part in raw.split(","):
            part = part.strip()
            descending = part.startswith("-")
            code = part.lstrip("-")
            if not code:
                raise FhirError(400, "value", "_sort must list parameters, - for descending")
            if not _sortable(query.types, code):
                raise Unknown(f"_sort: {_safe_name(code)} cannot be sorted on")
            keys.append(SortKey(code, descending))
        query.sort = keys
    elif base == "_include":
        query.includes.append(_include(query.types, name, raw, reverse=False))
    elif base == "_revinclude":
        query.revincludes.append(_include(query.types, name, raw, reverse=True))
    elif base == "_type":
        raise Unknown("_type applies to system-level searches only")
