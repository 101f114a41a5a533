"""Structural validation of FHIR R4 JSON resources against the official definitions.

`validate_resource` walks a parsed resource along the element table compiled from the
R4 StructureDefinitions (`clinik.fhir.spec`) and reports every problem as an `Issue`
whose `expression` names the offending element (`Patient.name[0].given[1]`).

Checked: the JSON shape (objects, arrays, no empty values, `null` only to align a
primitive array with its `_element` extensions), `resourceType`, the URL type and id,
unknown elements, primitive JSON types, regexes and ranges, cardinality, choice
elements, nested backbone elements and datatypes, contained and bundled resources,
and codes of required bindings that the package enumerates. Not checked: invariants
(FHIRPath constraints), profiles, and terminology beyond those required bindings.

Diagnostics name elements and expected types, never the offending value: a resource
body is PHI.
"""

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from clinik.fhir.spec import PRIMITIVE_TYPES, RESOURCE_TYPES, STRUCTURES, VALUE_SETS

MAX_ISSUES = 100
MAX_DEPTH = 64
"""Nesting depth (objects within objects) past which a body is refused rather than
walked: the walker recurses, and nothing in R4 nests remotely this deep."""

ID_PATTERN = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
"""A FHIR logical id (use with fullmatch), for ids that come from URLs."""
_SAFE_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}")
# FHIR strings may not hold control characters other than tab, CR and LF.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_WHITESPACE = re.compile(r"[ \t\r\n]+")
_BASE64 = re.compile(r"[0-9a-zA-Z+/=]*")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True, slots=True)
class Issue:
    severity: str
    code: str
    """A FHIR issue-type code: structure, required, value, invalid, code-invalid, ..."""
    diagnostics: str
    expression: str
    """FHIRPath-like location, e.g. `Observation.valueQuantity.value`; empty when the
    body is not a JSON object at all."""

    def as_outcome_issue(self) -> dict[str, Any]:
        """This issue as an entry of OperationOutcome.issue."""
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


# Checks beyond the structure for one resource type, registered by the app that owns
# them (clinik.subscriptions: a Subscription's criteria and endpoint). A check returns
# (issue code, expression, diagnostics) triples that quote no value.
RESOURCE_CHECKS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str, str]]]] = {}


class _TooManyIssues(Exception):
    pass


class _Issues(list[Issue]):
    def add(self, code: str, expression: str, diagnostics: str) -> None:
        self.append(Issue("error", code, diagnostics, expression))
        if len(self) >= MAX_ISSUES:
            raise _TooManyIssues


# A primitive check returns None for a good value, else (issue code, what was expected).
PrimitiveCheck = Callable[[Any], tuple[str, str] | None]


def _string_check(type_name: str, pattern: str | None) -> PrimitiveCheck:
    # The spec's regexes use XML Schema classes, in which \s is only space, tab, CR
    # and LF; re.ASCII comes closest (it also counts \f and \v, which FHIR forbids).
    regex = re.compile(pattern, re.ASCII) if pattern else None
    expected = f"a JSON string holding a FHIR {type_name}"
    calendar = type_name in ("date", "dateTime", "instant")

    def check(value: Any) -> tuple[str, str] | None:
        if type(value) is not str:
            return "structure", expected
        if not value:
            return "value", f"a non-empty FHIR {type_name}"
        if regex is not None and regex.fullmatch(value) is None:
            return "value", f"a valid FHIR {type_name}"
        if _CONTROL_CHARACTERS.search(value) is not None:
            return "value", f"a FHIR {type_name} without control characters"
        if calendar and len(value) >= 10 and not _is_calendar_date(value):
            return "value", f"a FHIR {type_name} on a real calendar day"
        return None

    return check


def _is_calendar_date(value: str) -> bool:
    try:
        date(int(value[0:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


def _base64_check(value: Any) -> tuple[str, str] | None:
    # The spec's regex, (\s*([0-9a-zA-Z\+/=]){4}\s*)+, backtracks exponentially on a
    # bad attachment with many line breaks; this is the same test without the regex
    # engine (a little laxer: it lets whitespace split a group of four).
    if type(value) is not str:
        return "structure", "a JSON string holding FHIR base64Binary"
    compact = _WHITESPACE.sub("", value)
    if not compact or len(compact) % 4 or _BASE64.fullmatch(compact) is None:
        return "value", "valid FHIR base64Binary"
    return None


def _boolean_check(value: Any) -> tuple[str, str] | None:
    if value is True or value is False:
        return None
    return "structure", "a JSON boolean (true or false)"


def _integer_check(type_name: str, lowest: int) -> PrimitiveCheck:
    expected = f"a JSON number holding a FHIR {type_name}"
    in_range = f"a FHIR {type_name} between {lowest} and {_INT32_MAX}"

    def check(value: Any) -> tuple[str, str] | None:
        if type(value) is not int:  # bool is a subclass of int; floats are not integers
            return "structure", expected
        if not lowest <= value <= _INT32_MAX:
            return "value", in_range
        return None

    return check


def _decimal_check(value: Any) -> tuple[str, str] | None:
    kind = type(value)
    if kind is int:
        return None
    # json.loads accepts NaN and Infinity, which FHIR (and JSON) do not.
    if kind is float:
        return None if math.isfinite(value) else ("value", "a finite FHIR decimal")
    if kind is Decimal:  # bodies parsed with parse_float=Decimal keep every digit
        return None if value.is_finite() else ("value", "a finite FHIR decimal")
    return "structure", "a JSON number holding a FHIR decimal"


def _xhtml_check(value: Any) -> tuple[str, str] | None:
    if type(value) is not str:
        return "structure", "a JSON string holding an XHTML div"
    if not value.lstrip().startswith("<div"):
        return "value", "an XHTML fragment whose root element is a div"
    return None


def _primitive_checks() -> dict[str, PrimitiveCheck]:
    checks: dict[str, PrimitiveCheck] = {}
    for type_name, pattern in PRIMITIVE_TYPES.items():
        checks[type_name] = _string_check(type_name, pattern)
    checks["base64Binary"] = _base64_check
    checks["boolean"] = _boolean_check
    checks["integer"] = _integer_check("integer", _INT32_MIN)
    checks["positiveInt"] = _integer_check("positiveInt", 1)
    checks["unsignedInt"] = _integer_check("unsignedInt", 0)
    checks["decimal"] = _decimal_check
    checks["xhtml"] = _xhtml_check
    return checks


def _not_a_primitive(value: Any) -> tuple[str, str] | None:
    raise TypeError("a complex element has no primitive check")


_CHECKS = _primitive_checks()
_PRIMITIVE, _COMPLEX, _RESOURCE = 0, 1, 2


class _Element:
    __slots__ = (
        "check",
        "choice",
        "codes",
        "kind",
        "many",
        "name",
        "structure",
        "type",
        "value_set",
    )

    def __init__(
        self, name: str, type_: str, many: bool, choice: str | None, value_set: str | None
    ) -> None:
        self.name = name
        self.type = type_
        self.many = many
        self.choice = choice
        self.value_set = value_set
        self.codes: frozenset[str] | None = VALUE_SETS.get(value_set) if value_set else None
        self.kind = (
            _PRIMITIVE
            if type_ in PRIMITIVE_TYPES
            else _RESOURCE
            if type_ == "Resource"
            else _COMPLEX
        )
        # Typed non-optional so the hot path needs no None test; only primitives call it.
        self.check: PrimitiveCheck = _CHECKS.get(type_, _not_a_primitive)
        self.structure: _Structure | None = None


class _Structure:
    __slots__ = ("elements", "label", "required")

    def __init__(self, label: str) -> None:
        self.label = label
        self.elements: dict[str, _Element] = {}
        # (element name for the message, property names any one of which satisfies it)
        self.required: list[tuple[str, tuple[str, ...]]] = []


def _compile() -> dict[str, _Structure]:
    structures = {key: _Structure(key) for key in STRUCTURES}
    for key, children in STRUCTURES.items():
        structure = structures[key]
        required_groups: dict[str, list[str]] = {}
        for name, definition in children.items():
            element = _Element(
                name, definition.type, definition.many, definition.choice, definition.value_set
            )
            if element.kind == _COMPLEX:
                element.structure = structures[definition.type]
            structure.elements[name] = element
            if definition.min > 0:
                keys = required_groups.setdefault(definition.choice or name, [])
                keys.append(name)
                if element.kind == _PRIMITIVE:
                    keys.append("_" + name)  # extensions alone make a primitive present
        for group, keys in required_groups.items():
            label = f"{group}[x]" if children[keys[0]].choice else group
            structure.required.append((label, tuple(keys)))
    return structures


_STRUCTURES = _compile()
_ELEMENT = _STRUCTURES["Element"]  # what a primitive's `_element` holds: id and extensions


def validate_resource(
    resource: object, *, resource_type: str | None = None, resource_id: str | None = None
) -> list[Issue]:
    """Problems that make `resource` invalid R4 JSON; an empty list when it is valid.

    `resource_type` and `resource_id` are the type and id from the request URL, when
    it has them: the body must agree with them (an update's body must carry the id).
    At most MAX_ISSUES issues are reported.
    """
    issues = _Issues()
    with contextlib.suppress(_TooManyIssues):
        _validate_root(resource, resource_type, resource_id, issues)
    return list(issues)


def _validate_root(
    resource: object, resource_type: str | None, resource_id: str | None, issues: _Issues
) -> None:
    if type(resource) is not dict:
        issues.add("structure", "", "The body must be a JSON object holding a FHIR resource")
        return
    body_type = resource.get("resourceType")
    if resource_type is not None and body_type is not None and body_type != resource_type:
        issues.add(
            "invalid", "resourceType", "resourceType does not match the resource type of the URL"
        )
        return
    actual_type = _known_resource_type(resource, "", issues)
    if actual_type is None:
        return
    if resource_id is not None:
        body_id = resource.get("id")
        if body_id is None:
            issues.add("required", f"{actual_type}.id", "The body must carry the id of the URL")
        elif body_id != resource_id:
            issues.add("invalid", f"{actual_type}.id", "The body's id does not match the URL's id")
    _walk(resource, _STRUCTURES[actual_type], actual_type, issues, 0, True)
    if not issues and (check := RESOURCE_CHECKS.get(actual_type)) is not None:
        for code, expression, diagnostics in check(resource):
            issues.add(code, expression, diagnostics)


def _known_resource_type(resource: dict[str, Any], path: str, issues: _Issues) -> str | None:
    where = f"{path}.resourceType" if path else "resourceType"
    resource_type = resource.get("resourceType")
    if resource_type is None:
        issues.add("required", where, "resourceType is required")
        return None
    if type(resource_type) is not str or resource_type not in RESOURCE_TYPES:
        issues.add("code-invalid", where, "resourceType is not a FHIR R4 resource type")
        return None
    return resource_type


def _walk(
    node: dict[str, Any],
    structure: _Structure,
    path: str,
    issues: _Issues,
    depth: int,
    is_resource: bool = False,
) -> None:
    if not node:
        issues.add("structure", path, f"{path} is an empty object, which FHIR JSON forbids")
        return
    if depth > MAX_DEPTH:
        issues.add("structure", path, f"{path} is nested more than {MAX_DEPTH} levels deep")
        return
    elements = structure.elements
    chosen: dict[str, str] | None = None
    for key, value in node.items():
        element = elements.get(key)
        if element is None:
            if key[:1] == "_":
                element = elements.get(key[1:])
                if element is not None and element.kind == _PRIMITIVE:
                    chosen = _note_choice(element, chosen, path, issues)
                    _check_extensions(node, element, value, path, issues, depth)
                    continue
            elif key == "resourceType" and is_resource:
                continue
            _unknown(key, structure, path, issues)
            continue
        if element.choice is not None:
            chosen = _note_choice(element, chosen, path, issues)
        if element.kind == _PRIMITIVE:
            if not element.many and element.codes is None and element.check(value) is None:
                continue  # the usual case, one good value, without a second call
            _check_primitive(node, element, value, path, issues)
        elif element.many:
            if type(value) is not list:
                _not_array(f"{path}.{key}", issues)
            elif not value:
                _empty_array(f"{path}.{key}", issues)
            else:
                for index, item in enumerate(value):
                    _check_complex(element, item, f"{path}.{key}[{index}]", issues, depth)
        elif type(value) is list:
            _array_for_single(f"{path}.{key}", issues)
        else:
            _check_complex(element, value, f"{path}.{key}", issues, depth)
    for label, keys in structure.required:
        for key in keys:
            if key in node:
                break
        else:
            issues.add(
                "required",
                f"{path}.{label}",
                f"{path}.{label} is required (minimum cardinality 1) but missing",
            )


def _check_complex(element: _Element, value: Any, path: str, issues: _Issues, depth: int) -> None:
    if type(value) is not dict:
        kind = "a FHIR resource" if element.kind == _RESOURCE else f"a FHIR {element.type}"
        if value is None:
            issues.add("structure", path, f"{path} is null, which FHIR JSON forbids here")
        else:
            issues.add("structure", path, f"{path} must be a JSON object holding {kind}")
        return
    if element.structure is not None:
        _walk(value, element.structure, path, issues, depth + 1)
        return
    if not value:
        issues.add("structure", path, f"{path} is an empty object, which FHIR JSON forbids")
        return
    resource_type = _known_resource_type(value, path, issues)
    if resource_type is None:
        return
    is_contained = element.name == "contained"
    if is_contained:
        if "id" not in value:
            issues.add("required", f"{path}.id", "A contained resource must have an id")
        if "contained" in value:
            issues.add(
                "structure",
                f"{path}.contained",
                "A contained resource must not contain resources itself",
            )
    _walk(value, _STRUCTURES[resource_type], path, issues, depth + 1, True)


def _check_primitive(
    node: dict[str, Any], element: _Element, value: Any, path: str, issues: _Issues
) -> None:
    key = element.name
    check = element.check
    codes = element.codes
    if not element.many:
        if type(value) is list:
            _array_for_single(f"{path}.{key}", issues)
            return
        if value is None:
            issues.add(
                "structure", f"{path}.{key}", f"{path}.{key} is null, which FHIR JSON forbids"
            )
            return
        problem = check(value)
        if problem is not None:
            _bad_primitive(f"{path}.{key}", problem, issues)
        elif codes is not None and value not in codes:
            _bad_code(f"{path}.{key}", element, issues)
        return
    if type(value) is not list:
        _not_array(f"{path}.{key}", issues)
        return
    if not value:
        _empty_array(f"{path}.{key}", issues)
        return
    extensions = node.get("_" + key)
    for index, item in enumerate(value):
        if item is None:
            if not _has_item(extensions, index):
                issues.add(
                    "structure",
                    f"{path}.{key}[{index}]",
                    f"{path}.{key}[{index}] is null without an extension at the same "
                    f"position of _{key}",
                )
            continue
        problem = check(item)
        if problem is not None:
            _bad_primitive(f"{path}.{key}[{index}]", problem, issues)
        elif codes is not None and item not in codes:
            _bad_code(f"{path}.{key}[{index}]", element, issues)


def _check_extensions(
    node: dict[str, Any], element: _Element, value: Any, path: str, issues: _Issues, depth: int
) -> None:
    """`_birthDate` / `_given`: the id and extensions of a primitive element."""
    key = element.name
    where = f"{path}.{key}"
    if not element.many:
        if type(value) is dict:
            _walk(value, _ELEMENT, where, issues, depth + 1)
        elif value is None:
            issues.add("structure", where, f"{path}._{key} is null, which FHIR JSON forbids")
        else:
            issues.add("structure", where, f"{path}._{key} must be a JSON object (id, extension)")
        return
    if type(value) is not list:
        issues.add("structure", where, f"{path}._{key} must be a JSON array, like {key}")
        return
    if not value:
        _empty_array(f"{path}._{key}", issues)
        return
    values = node.get(key)
    if type(values) is list and len(values) != len(value):
        issues.add(
            "structure",
            where,
            f"{path}._{key} must have as many items as {key}, aligned by position",
        )
    for index, item in enumerate(value):
        if item is None:
            # With a value array, a null at both positions is reported there, once.
            if type(values) is not list:
                issues.add(
                    "structure",
                    f"{where}[{index}]",
                    f"{path}._{key}[{index}] is null without a value at the same position of {key}",
                )
        elif type(item) is dict:
            _walk(item, _ELEMENT, f"{where}[{index}]", issues, depth + 1)
        else:
            issues.add(
                "structure",
                f"{where}[{index}]",
                f"{path}._{key}[{index}] must be a JSON object (id, extension) or null",
            )


def _has_item(items: Any, index: int) -> bool:
    return type(items) is list and index < len(items) and items[index] is not None


def _note_choice(
    element: _Element, chosen: dict[str, str] | None, path: str, issues: _Issues
) -> dict[str, str] | None:
    group = element.choice
    if group is None:
        return chosen
    if chosen is None:
        return {group: element.name}
    earlier = chosen.setdefault(group, element.name)
    if earlier != element.name:
        issues.add(
            "structure",
            f"{path}.{element.name}",
            f"Only one type of {path}.{group}[x] may be present; found {earlier} "
            f"and {element.name}",
        )
    return chosen


def _unknown(key: str, structure: _Structure, path: str, issues: _Issues) -> None:
    if _SAFE_NAME.fullmatch(key) is None:
        # A name that is no FHIR name could be anything, PHI included: not echoed.
        issues.add(
            "structure", path, f"{path} has a property whose name is not a FHIR element name"
        )
        return
    issues.add(
        "structure",
        f"{path}.{key}",
        f"Unknown element: {key} is not an element of {structure.label}",
    )


def _not_array(where: str, issues: _Issues) -> None:
    issues.add("structure", where, f"{where} must be a JSON array (maximum cardinality *)")


def _array_for_single(where: str, issues: _Issues) -> None:
    issues.add(
        "structure", where, f"{where} must be a single value, not an array (maximum cardinality 1)"
    )


def _empty_array(where: str, issues: _Issues) -> None:
    issues.add("structure", where, f"{where} is an empty array, which FHIR JSON forbids")


def _bad_primitive(where: str, problem: tuple[str, str], issues: _Issues) -> None:
    code, expected = problem
    issues.add(code, where, f"{where} must be {expected}")


def _bad_code(where: str, element: _Element, issues: _Issues) -> None:
    issues.add(
        "code-invalid",
        where,
        f"{where} must be a code from the value set {element.value_set} (required binding)",
    )
