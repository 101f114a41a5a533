"""Compile SearchParameter expressions into fast, typed extractors.

Almost every R4 expression is a path, a union of paths, an `as`/`ofType` cast or a
simple `where(...)` filter (`where(resolve() is Patient)`, `where(system='email')`).
Those are compiled once, against the element table in `clinik.fhir.spec`, into
plain Python steps that walk the resource's JSON and know the FHIR type of every
value they return (which decides how the value is indexed). `resolve() is X` is
answered from the reference string itself, never by loading the target.

Anything else (`Patient.deceased.exists() and Patient.deceased != false`) falls back
to fhirpathpy, which returns untyped values; `infer_type` then guesses the type from
the value's shape.
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

from clinik.fhir.spec import PRIMITIVE_TYPES, STRUCTURES

Item = tuple[Any, str]
"""A value found in a resource and its FHIR type (`HumanName`, `dateTime`, ...)."""
Step = Callable[[list[Item]], list[Item]]
Extractor = Callable[[dict[str, Any]], list[Item]]

ABSTRACT_ROOTS = frozenset({"Resource", "DomainResource"})
UNKNOWN = "?"
"""The type of a value whose type the compiler cannot know (fhirpathpy results)."""


class Unsupported(Exception):
    """The expression uses FHIRPath this compiler does not handle."""


# --- tokens and syntax tree --------------------------------------------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<var>%resource)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<str>'(?:[^'\\]|\\.)*')"
    r"|(?P<num>\d+)|(?P<op>!=|[().|=\[\]]))"
)


def _tokens(expression: str) -> list[str]:
    tokens, position = [], 0
    expression = expression.strip()
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if not match or match.end() == position:
            raise Unsupported(expression)
        tokens.append(match.group(match.lastgroup or "op"))
        position = match.end()
    return tokens


@dataclass(frozen=True)
class Union:
    terms: tuple[Any, ...]


@dataclass(frozen=True)
class Path:
    start: Any  # a name (type or field), "%resource", or a parenthesised expression
    steps: tuple[Any, ...]


@dataclass(frozen=True)
class Field:
    name: str


@dataclass(frozen=True)
class Cast:
    type: str


@dataclass(frozen=True)
class Index:
    position: int


@dataclass(frozen=True)
class ResolvesTo:
    type: str


@dataclass(frozen=True)
class Equals:
    name: str
    literal: str


class _Parser:
    def __init__(self, expression: str) -> None:
        self.tokens = _tokens(expression)
        self.at = 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise Unsupported(" ".join(self.tokens))
        self.at += 1
        return token

    def parse(self) -> Any:
        tree = self.union()
        if self.peek() is not None:
            raise Unsupported(" ".join(self.tokens))
        return tree

    def union(self) -> Any:
        terms = [self.cast()]
        while self.peek() == "|":
            self.take()
            terms.append(self.cast())
        return terms[0] if len(terms) == 1 else Union(tuple(terms))

    def cast(self) -> Any:
        path = self.path()
        if self.peek() == "as":
            self.take()
            type_name = self.take()
            return Path(path, (Cast(type_name),))
        return path

    def path(self) -> Path:
        first = self.take()
        start: Any
        if first == "(":
            start = self.union()
            self.take(")")
        elif first == "%resource" or first[0].isalpha():
            start = first
        else:
            raise Unsupported(first)
        steps: list[Any] = []
        while self.peek() in (".", "["):
            if self.take() == "[":
                steps.append(Index(int(self.take())))
                self.take("]")
                continue
            name = self.take()
            if self.peek() != "(":
                steps.append(Field(name))
                continue
            self.take("(")
            if name in ("as", "ofType"):
                steps.append(Cast(self.take()))
            elif name == "where":
                steps.append(self.condition())
            else:
                raise Unsupported(name)
            self.take(")")
        return Path(start, tuple(steps))

    def condition(self) -> Any:
        first = self.take()
        if first == "resolve":
            self.take("(")
            self.take(")")
            self.take("is")
            return ResolvesTo(self.take())
        self.take("=")
        literal = self.take()
        if not literal.startswith("'"):
            raise Unsupported(literal)
        return Equals(first, literal[1:-1])


# --- the element table, seen from paths ---------------------------------------------------


@cache
def _children(type_key: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """FHIRPath name -> ((JSON key, FHIR type), ...) of a structure: a choice group
    (`value`) maps to every concrete key (`valueQuantity`, `valueString`, ...)."""
    structure = STRUCTURES.get(type_key, {})
    children: dict[str, list[tuple[str, str]]] = {}
    for key, element in structure.items():
        children.setdefault(element.choice or key, []).append((key, element.type))
    return {name: tuple(keys) for name, keys in children.items()}


@cache
def _type_names() -> dict[str, str]:
    names = {name.lower(): name for name in (*PRIMITIVE_TYPES, *STRUCTURES) if "." not in name}
    return names


def _canonical_type(name: str) -> str:
    """FHIRPath writes `DateTime` and `System.String`; the table says `dateTime`."""
    name = name.removeprefix("FHIR.").removeprefix("System.")
    return _type_names().get(name.lower(), name)


def reference_type(reference: str) -> str | None:
    """The resource type a literal reference names: `Patient/1`,
    `https://h/fhir/Patient/1/_history/2` -> Patient; None for `#contained`."""
    if not reference or reference.startswith("#"):
        return None
    parts = reference.split("?", 1)[0].rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2]
    return None


# --- compilation ----------------------------------------------------------------------------


def _field_step(name: str, in_types: frozenset[str]) -> tuple[Step, frozenset[str]]:
    plan: dict[str, tuple[tuple[str, str], ...]] = {}
    for type_key in in_types:
        keys = _children(type_key).get(name)
        if keys:
            plan[type_key] = keys
    if not plan:
        raise Unsupported(name)
    out = frozenset(child for keys in plan.values() for _key, child in keys)

    def step(items: list[Item]) -> list[Item]:
        found: list[Item] = []
        for node, type_key in items:
            keys = plan.get(type_key)
            if keys is None or not isinstance(node, dict):
                continue
            for key, child_type in keys:
                value = node.get(key)
                if value is None:
                    continue
                if isinstance(value, list):
                    found.extend((v, child_type) for v in value if v is not None)
                else:
                    found.append((value, child_type))
        return found

    return step, out


def _cast_step(type_name: str, in_types: frozenset[str]) -> tuple[Step, frozenset[str]]:
    wanted = _canonical_type(type_name)

    def step(items: list[Item]) -> list[Item]:
        return [item for item in items if item[1] == wanted]

    return step, frozenset({wanted}) if wanted in in_types else frozenset()


def _index_step(position: int) -> Step:
    def step(items: list[Item]) -> list[Item]:
        return items[position : position + 1]

    return step


def _resolves_step(type_name: str) -> Step:
    def step(items: list[Item]) -> list[Item]:
        return [
            (node, type_key)
            for node, type_key in items
            if isinstance(node, dict)
            and isinstance(node.get("reference"), str)
            and reference_type(node["reference"]) == type_name
        ]

    return step


def _equals_step(name: str, literal: str) -> Step:
    def step(items: list[Item]) -> list[Item]:
        return [
            item for item in items if isinstance(item[0], dict) and item[0].get(name) == literal
        ]

    return step


def _chain(steps: list[Step]) -> Step:
    if len(steps) == 1:
        return steps[0]  # (a step of no items returns none)

    def run(items: list[Item]) -> list[Item]:
        for step in steps:
            if not items:
                return items
            items = step(items)
        return items

    return run


def _compile(tree: Any, in_types: frozenset[str], root: str) -> tuple[Step, frozenset[str]] | None:
    """A step from the context items to the expression's items, and the types it can
    return; None when the expression cannot apply to `root` (another type's path)."""
    if isinstance(tree, Union):
        parts = [_compile(term, in_types, root) for term in tree.terms]
        compiled = [p for p in parts if p is not None]
        if not compiled:
            return None
        branches = [step for step, _types in compiled]

        def union(items: list[Item]) -> list[Item]:
            return [found for branch in branches for found in branch(items)]

        return union, frozenset().union(*(types for _step, types in compiled))
    assert isinstance(tree, Path)
    steps: list[Step] = []
    types = in_types
    if isinstance(tree.start, str):
        if tree.start == "%resource":
            raise Unsupported(tree.start)  # only as a component's start: compile_relative
        if tree.start in ABSTRACT_ROOTS or tree.start == root:
            if in_types != frozenset({root}):
                raise Unsupported(tree.start)
        elif tree.start[0].isupper() and tree.start not in _children_names(in_types):
            return None  # a path of another resource type, in a multi-type union
        else:
            step, types = _field_step(tree.start, types)
            steps.append(step)
    else:
        inner = _compile(tree.start, types, root)
        if inner is None:
            return None
        step, types = inner
        steps.append(step)
    for node in tree.steps:
        if isinstance(node, Field):
            step, types = _field_step(node.name, types)
        elif isinstance(node, Cast):
            step, types = _cast_step(node.type, types)
        elif isinstance(node, Index):
            step = _index_step(node.position)
        elif isinstance(node, ResolvesTo):
            step = _resolves_step(node.type)
        else:
            step = _equals_step(node.name, node.literal)
        steps.append(step)
    if not types:
        return None
    return _chain(steps), types


def _children_names(types: Iterable[str]) -> set[str]:
    return {name for type_key in types for name in _children(type_key)}


# `X.exists() and X != false` (R4: Patient.deceased, boolean or dateTime): true when X
# has a value other than false. The one boolean-valued expression among R4's search
# parameters; fhirpathpy took ~100 µs per Patient for it.
_PRESENT_AND_NOT_FALSE = re.compile(r"([A-Za-z][\w.]*)\.exists\(\) and \1 != false")


def compile_path(expression: str, root: str) -> Extractor | None:
    """Extractor of `expression` for resources of type `root`, or None when no term
    of the expression applies to that type. Raises Unsupported for FHIRPath beyond
    the compiled subset (call `fhirpath_extractor` then)."""
    if flag := _PRESENT_AND_NOT_FALSE.fullmatch(expression.strip()):
        present = compile_path(flag.group(1), root)
        if present is None:
            return None
        test = present

        def flagged(resource: dict[str, Any]) -> list[Item]:
            return [(any(value is not False for value, _type in test(resource)), "boolean")]

        return flagged
    compiled = _compile(_Parser(expression).parse(), frozenset({root}), root)
    if compiled is None:
        return None
    step, _types = compiled

    def extract(resource: dict[str, Any]) -> list[Item]:
        return step([(resource, root)])

    return extract


def compile_relative(
    expression: str, context_types: frozenset[str], root: str
) -> Callable[[dict[str, Any], list[Item]], list[Item]] | None:
    """Extractor of a composite component, evaluated on each item of the composite's
    own expression; `%resource` restarts from the resource."""
    tree = _Parser(expression).parse()
    if isinstance(tree, Path) and tree.start == "%resource":
        from_resource = _compile(Path(root, tree.steps), frozenset({root}), root)
        if from_resource is None:
            return None
        root_step = from_resource[0]

        def from_root(resource: dict[str, Any], items: list[Item]) -> list[Item]:
            return root_step([(resource, root)])

        return from_root
    compiled = _compile(tree, context_types, root)
    if compiled is None:
        return None
    step, _types = compiled

    def relative(resource: dict[str, Any], items: list[Item]) -> list[Item]:
        return step(items)

    return relative


def fhirpath_extractor(expression: str, root: str) -> Extractor:
    """The fallback: fhirpathpy, compiled once. Its values carry no FHIR type."""
    from fhirpathpy import compile as compile_fhirpath
    from fhirpathpy.models import models

    terms = [t for t in split_union(expression) if applies_to(t, root)]
    evaluate = compile_fhirpath(" | ".join(terms), models["r4"])

    def extract(resource: dict[str, Any]) -> list[Item]:
        return [(value, infer_type(value)) for value in evaluate(resource, None)]

    return extract


def split_union(expression: str) -> list[str]:
    """Top-level `|` terms of an expression."""
    terms, depth, start = [], 0, 0
    for position, char in enumerate(expression):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            terms.append(expression[start:position].strip())
            start = position + 1
    terms.append(expression[start:].strip())
    return [t for t in terms if t]


def applies_to(term: str, root: str) -> bool:
    head = re.match(r"\(*\s*([A-Za-z]+)", term)
    if head is None:
        return False
    # A lower-case start is a field of the parameter's own (single) base type.
    return head.group(1) in (root, *ABSTRACT_ROOTS) or head.group(1)[0].islower()


def infer_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        if "coding" in value or ("text" in value and len(value) == 1):
            return "CodeableConcept"
        if "reference" in value or ("identifier" in value and "display" in value):
            return "Reference"
        if "start" in value or "end" in value:
            return "Period"
        if "value" in value and ("unit" in value or "code" in value):
            return "Quantity"
        if "system" in value and "code" in value:
            return "Coding"
        if "value" in value:
            return "Identifier"
    return UNKNOWN
