"""The import graph of `clinik/`: no circles between modules, and `clinik/lib/` imports
no app (docs/architecture.md, "Layout and dependencies").

The graph is read statically with `ast`, so every module counts, including ones no test
imports. Every import statement counts, wherever it is:
- inside a function: a function-level import is a runtime dependency like any other (it
  is how four of the five circles of issue #14 hid), and moving an import into a
  function must not be a way around the rule;
- under `if TYPE_CHECKING:`, for circles: it does not run, but two modules that know
  each other are one unit whenever the import runs (the store interface must not know
  the search layer that uses it, issue #14). The way out is to move the shared type down
  a layer, not to hide the import.
The one exception: `clinik/lib/` may name app types under `if TYPE_CHECKING:`
(`lib/http.py`'s typed requests annotate `request.org`). What "lib imports no app"
protects is that lib runs and is tested without any app, and an annotation keeps that.

A circle is a strongly connected component of the module graph with more than one
module. Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`; those implicit
edges are not drawn, so a package's `__init__` re-exporting its submodules does not turn
every sibling import into a circle.
"""

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "clinik"

# Circles that other branches of issue #14 remove. Each entry is the exact set of modules
# of one circle. The test fails when one of them no longer exists, so this set only
# shrinks; the lead empties it when those branches are merged.
KNOWN_CIRCLES: set[frozenset[str]] = set()
# `clinik/lib/` importing an app, same rules.
KNOWN_LIB_IMPORTS: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, type_checking: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth; those under `if TYPE_CHECKING:` only when
    type_checking is true."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        if not type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(
    name: str, is_package: bool, tree: ast.AST, known: set[str], *, type_checking: bool = True
) -> set[str]:
    """The modules of `known` that the module `name` imports."""
    found: set[str] = set()
    for node in _imports(tree, type_checking=type_checking):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from pkg import sub` imports the module pkg.sub; `from mod import name`
            # imports mod.
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                for alias in node.names
            ]
        for target in targets:
            # `import a.b.c` of a name that is not a module resolves to its nearest module.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(*, type_checking: bool = True) -> dict[str, set[str]]:
    files = {
        module_name(path): path
        for path in sorted((ROOT / PACKAGE).rglob("*.py"))
        if "migrations" not in path.parts
    }
    known = set(files)
    return {
        name: imported_modules(
            name,
            path.name == "__init__.py",
            ast.parse(path.read_text(), str(path)),
            known,
            type_checking=type_checking,
        )
        for name, path in files.items()
    }


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: set[frozenset[str]] = set()
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def _describe(circle: frozenset[str], graph: dict[str, set[str]]) -> str:
    edges = sorted(f"{a} -> {b}" for a in circle for b in graph[a] if b in circle)
    return "{" + ", ".join(sorted(circle)) + "}: " + "; ".join(edges)


def test_no_new_import_circle() -> None:
    graph = import_graph()
    new = circles(graph) - KNOWN_CIRCLES
    assert not new, "import circles: " + " | ".join(_describe(c, graph) for c in new)


def test_every_known_circle_still_exists() -> None:
    """Remove a circle from KNOWN_CIRCLES once it is broken, so the list only shrinks."""
    gone = KNOWN_CIRCLES - circles(import_graph())
    assert not gone, "broken circles still listed in KNOWN_CIRCLES: " + " | ".join(
        ", ".join(sorted(c)) for c in gone
    )


def lib_imports_of_apps(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    lib = f"{PACKAGE}.lib"
    return {
        (module, target)
        for module, targets in graph.items()
        if module == lib or module.startswith(f"{lib}.")
        for target in targets
        if target != lib and not target.startswith(f"{lib}.")
    }


def test_lib_imports_no_app() -> None:
    found = lib_imports_of_apps(import_graph(type_checking=False))
    new = sorted(found - KNOWN_LIB_IMPORTS)
    assert not new, "clinik/lib imports an app: " + "; ".join(f"{a} -> {b}" for a, b in new)
    gone = sorted(KNOWN_LIB_IMPORTS - found)
    assert not gone, "gone, remove from KNOWN_LIB_IMPORTS: " + "; ".join(
        f"{a} -> {b}" for a, b in gone
    )


# The checker itself, on small graphs and sources with known answers.


def test_circles_finds_exactly_the_strongly_connected_components() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": {"e"},
        "e": {"d"},
        "f": {"a"},
        "g": set(),
    }
    assert circles(graph) == {frozenset("abc"), frozenset("de")}
    assert circles({"a": {"b"}, "b": set()}) == set()


def test_imports_inside_functions_and_for_type_checking_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from .other import thing\n"
        "if TYPE_CHECKING:\n"
        "    from clinik.typed import Only\n"
        "def f():\n"
        "    from clinik.late import x\n"
        "    import clinik.deep.mod.attr\n"
    )
    known = {
        "clinik.app.here",
        "clinik.app.sibling",
        "clinik.app.other",
        "clinik.typed",
        "clinik.late",
        "clinik.deep.mod",
        "clinik.app",
    }
    found = imported_modules("clinik.app.here", False, ast.parse(source), known)
    at_runtime = imported_modules(
        "clinik.app.here", False, ast.parse(source), known, type_checking=False
    )
    assert found - at_runtime == {"clinik.typed"}
    assert found == {
        "clinik.app.sibling",
        "clinik.app.other",
        "clinik.typed",
        "clinik.late",
        "clinik.deep.mod",
    }
