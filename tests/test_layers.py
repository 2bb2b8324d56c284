"""The layers of src/iotfleet, read from the import graph: a module imports only its own layer or lower ones.

Every import counts: at the top of a module, inside a function, and under ``TYPE_CHECKING``. Lowest first:

    errors, _files (and the other private helpers) -> topics -> policy, policy_engine, config, metrics
    -> transport -> device -> shadow, provisioning -> cloud -> sim
    -> cli, testing, __main__, the facade (iotfleet/__init__.py)

No two modules, and no two packages, may import each other, directly or round a longer loop.
``python -m tests.test_layers`` prints today's package-level graph.
"""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "iotfleet"

LAYERS: list[set[str]] = [
    {
        "iotfleet.errors",
        "iotfleet._files",
        "iotfleet._model",
        "iotfleet._loop_thread",
        "iotfleet._rate",
        "iotfleet._children",
    },
    {"iotfleet.topics"},
    {"iotfleet.policy", "iotfleet.policy_engine", "iotfleet.config", "iotfleet.metrics"},
    {"iotfleet.transport"},
    {"iotfleet.device"},
    {"iotfleet.shadow", "iotfleet.provisioning"},
    {"iotfleet.cloud"},
    {"iotfleet.sim"},
    {"iotfleet.cli", "iotfleet.testing", "iotfleet.__main__", "iotfleet"},
]

# Imports known to break the layers, each with the change that removes it. Delete an entry with that change.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported iotfleet module
    where: str  # file:line


def unit(module: str) -> str:
    """The package-level unit of ``module``: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def layer(module: str) -> int:
    name = unit(module)
    for index, names in enumerate(LAYERS):
        if name in names:
            return index
    raise AssertionError(f"{module} is in no layer: add {name} to LAYERS in {__file__}")


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, from its __init__.py)."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports() -> Iterator[Import]:
    """Every import of an iotfleet module by an iotfleet module, wherever in the file it is."""
    known = modules()
    for source, path in known.items():
        package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1 packages
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from iotfleet import policy` imports the module iotfleet.policy, not the facade
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            resolved = []
            for name in targets:
                target = name
                while target not in known and "." in target:  # `import iotfleet.x.y` where y is a name
                    target = target.rpartition(".")[0]
                resolved.append(target)
            for target in dict.fromkeys(resolved):  # once per module a statement imports
                if target in known and target != source and target.split(".")[0] == PACKAGE:
                    yield Import(source, target, f"{path.relative_to(SRC.parent)}:{getattr(node, 'lineno', 0)}")


def upward(found: list[Import]) -> list[Import]:
    """Imports of a higher layer, except by the facade (which may reference anything, lazily)."""
    return [
        i
        for i in found
        if i.source != PACKAGE and layer(i.target) > layer(i.source) and (i.source, i.target) not in ALLOWED
    ]


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The groups of nodes that reach each other (Tarjan's strongly connected components of two or more)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = itertools.count()

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def package_graph(found: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for i in found:
        if unit(i.source) != unit(i.target):
            graph[unit(i.source)].add(unit(i.target))
    return graph


def render(graph: dict[str, set[str]]) -> str:
    """One line per package, lowest layer first: ``package (layer n) -> what it imports``."""

    def short(name: str) -> str:
        return "iotfleet (facade)" if name == PACKAGE else name.removeprefix(f"{PACKAGE}.")

    def order(name: str) -> tuple[int, str]:
        return layer(name), name

    lines = []
    for name in sorted({*graph, *itertools.chain(*graph.values())}, key=order):
        targets = ", ".join(short(t) for t in sorted(graph.get(name, ()), key=order)) or "-"
        lines.append(f"{short(name)} (layer {layer(name)}) -> {targets}")
    return "\n".join(lines)


def checked(found: list[Import]) -> list[Import]:
    return [i for i in found if (i.source, i.target) not in ALLOWED]


def test_no_module_imports_a_higher_layer() -> None:
    found = list(imports())
    bad = upward(found)
    assert not bad, (
        "imports of a higher layer:\n"
        + "\n".join(
            f"  {i.where}: {i.source} (layer {layer(i.source)}) imports {i.target} (layer {layer(i.target)})"
            for i in bad
        )
        + "\n\nthe package graph:\n"
        + render(package_graph(found))
    )


def test_no_modules_and_no_packages_import_each_other() -> None:
    found = checked(list(imports()))
    module_cycles = cycles({(i.source, i.target) for i in found})
    package_cycles = cycles({(unit(i.source), unit(i.target)) for i in found if unit(i.source) != unit(i.target)})
    involved = sorted({f"  {i.where}: {i.source} imports {i.target}" for i in found if _in_any(i, module_cycles)})
    graph = "\n\nthe package graph:\n" + render(package_graph(found))
    assert not module_cycles, f"modules importing each other: {module_cycles}\n" + "\n".join(involved) + graph
    assert not package_cycles, f"packages importing each other: {package_cycles}" + graph


def _in_any(i: Import, groups: list[list[str]]) -> bool:
    return any(i.source in group and i.target in group for group in groups)


def test_the_allowed_exceptions_still_exist() -> None:
    """An allow-list entry whose import is gone must be deleted, so the list never hides a new violation."""
    found = {(i.source, i.target) for i in imports()}
    gone = set(ALLOWED) - found
    assert not gone, f"delete these entries from ALLOWED: {sorted(gone)}"


def test_the_reader_sees_imports_in_functions_and_under_type_checking() -> None:
    """The graph is only as good as its reader: a deferred import and a TYPE_CHECKING one both count."""
    found = {(i.source, i.target) for i in imports()}
    assert ("iotfleet.cli", "iotfleet.cloud.local") in found  # inside a command function
    assert ("iotfleet.shadow.client", "iotfleet.device.client") in found  # only under TYPE_CHECKING
    assert cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]
    assert upward([Import("iotfleet.topics", "iotfleet.cloud.local", "x:1")])  # a made-up upward import


if __name__ == "__main__":
    print(render(package_graph(list(imports()))))  # noqa: T201 - the graph for a person to read
