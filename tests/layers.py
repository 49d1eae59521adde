"""The package's layers and the import rules between them (ARCHITECTURE.md), read from the source.

Every import counts, at the top of a module or inside a function: a lazy import that crosses a
layer the wrong way or closes a cycle is the same coupling, only harder to see.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = "pytest_ledger_rollout"
# Top to bottom; a module may import its own layer and the layers below it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("pytest and command line", (f"{PACKAGE}.plugin", f"{PACKAGE}.suites", f"{PACKAGE}.__main__")),
    ("phases", (f"{PACKAGE}.phases",)),
    ("config", (f"{PACKAGE}.config",)),
    ("checks", (f"{PACKAGE}.checks",)),
    ("targets", (f"{PACKAGE}.targets",)),
    ("base", (f"{PACKAGE}.results", f"{PACKAGE}.masking", f"{PACKAGE}.processes", PACKAGE)),
)
PYTEST_MODULES = ("pytest", "_pytest", "pluggy")


def package_sources(root: Path) -> dict[str, Path]:
    """Module name -> file, for the package and its suites (installed as ``PACKAGE.suites``)."""
    sources: dict[str, Path] = {}
    for folder, prefix in ((root / PACKAGE, PACKAGE), (root / "suites", f"{PACKAGE}.suites")):
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            sources[".".join((prefix, *parts))] = path
    return sources


def imports_of(module: str, path: Path) -> Iterator[tuple[str, tuple[str, ...], int]]:
    """(imported module, names taken from it, line) for every import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base, tuple(alias.name for alias in node.names), node.lineno


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index): the longest prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            within = module == prefix or module.startswith(prefix + ".")
            if within and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def _resolve(imported: str, names: tuple[str, ...], modules: Mapping[str, Path]) -> list[str]:
    """The package modules an import loads: ``from pkg import mod`` loads pkg.mod."""
    targets = [imported] if imported in modules else []
    targets += [f"{imported}.{name}" for name in names if f"{imported}.{name}" in modules]
    return targets


def layering_problems(root: Path) -> list[str]:
    modules = package_sources(root)
    graph: dict[str, set[str]] = {module: set() for module in modules}
    problems: list[str] = []
    for module, path in modules.items():
        own = layer_of(module)
        assert own is not None, f"{module} belongs to no layer: add it to LAYERS"
        where = f"{path.relative_to(root)}"
        for imported, names, line in imports_of(module, path):
            if imported.split(".")[0] in PYTEST_MODULES and own != 0:
                problems.append(f"{where}:{line}: {LAYERS[own][0]} layer imports {imported}")
            for target in _resolve(imported, names, modules):
                graph[module].add(target)
                theirs = layer_of(target)
                assert theirs is not None
                if theirs < own:
                    problems.append(
                        f"{where}:{line}: {LAYERS[own][0]} layer imports {target} "
                        f"({LAYERS[theirs][0]} layer, above it)"
                    )
            private = [name for name in names if name.startswith("_") and name != "__version__"]
            if private and imported in modules and imported != module:
                problems.append(
                    f"{where}:{line}: imports private {', '.join(private)} of {imported}"
                )
    problems += [f"import cycle among: {', '.join(cycle)}" for cycle in _cycles(graph)]
    return problems


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor == node or successor.startswith(node + "."):
                continue  # a package's __init__ importing its own modules is not a cycle
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
