"""The shape of the code, checked from its source with ``ast`` (nothing is imported).

- no import cycle between pvreg's modules, counting imports inside functions too (they run
  as surely as module-level ones, only later) but not ``if TYPE_CHECKING:`` blocks;
- no module over 550 lines under registry/, cli/, schemas/; at most 10 modules directly in registry/;
- the CLI library (typer) stays out of registry/ and schemas/, the Hub client (huggingface_hub)
  stays inside registry/hub/, and schemas/ (the boundary layer) never calls up into pvreg.registry.

Module names are what the wheel installs: the repository root is the package ``pvreg``
(pyproject.toml maps ``"pvreg" = "."``), so ``registry/storage/db.py`` is ``pvreg.registry.storage.db``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from helpers.paths import REPO

PACKAGES = ("registry", "cli", "schemas", "migrations")
MAX_LINES = 550
MAX_REGISTRY_TOP_LEVEL = 10


@dataclass(frozen=True)
class Import:
    """One imported module name as written (resolved to absolute), with where it was found."""

    target: str
    names: tuple[str, ...]
    line: int
    type_checking: bool


@dataclass
class Module:
    name: str
    path: Path
    imports: list[Import] = field(default_factory=list)

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def rel(self) -> str:
        return self.path.relative_to(REPO).as_posix()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["pvreg", *parts])


def _source_files() -> Iterator[Path]:
    yield REPO / "__init__.py"
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node``, flagged when it sits in the body of an ``if TYPE_CHECKING:`` (not its else)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield child, type_checking
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_checking
                yield from _walk(stmt, type_checking)
            continue
        yield child, type_checking
        yield from _walk(child, type_checking)


def _imports(name: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node, tc in _walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(a.name, (), node.lineno, tc) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the containing package, one level up per extra dot
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.append(Import(target, tuple(a.name for a in node.names), node.lineno, tc))
    return out


@cache
def modules() -> dict[str, Module]:
    found = {}
    for path in _source_files():
        name = _module_name(path) if path != REPO / "__init__.py" else "pvreg"
        found[name] = Module(name, path)
    for m in found.values():
        m.imports = _imports(m.name, m.path)
    return found


def import_graph(*, with_type_checking: bool = False) -> dict[str, set[str]]:
    """pvreg module -> the pvreg modules it imports.

    ``from P import n`` depends on the module ``P.n`` when there is one (a submodule), else on ``P``.
    """
    mods = modules()
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for m in mods.values():
        for imp in m.imports:
            if imp.type_checking and not with_type_checking:
                continue
            targets = [f"{imp.target}.{n}" if f"{imp.target}.{n}" in mods else imp.target for n in imp.names] \
                or [imp.target]
            graph[m.name] |= {t for t in targets if t in mods and t != m.name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (``[a, b, ..., a]``) if the graph has any, by depth-first search with three colours."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        colour[v] = GREY
        stack.append(v)
        for w in sorted(graph[v]):
            if colour[w] == GREY:
                return stack[stack.index(w):] + [w]
            if colour[w] == WHITE and (cycle := visit(w)):
                return cycle
        stack.pop()
        colour[v] = BLACK
        return None

    for v in sorted(graph):
        if colour[v] == WHITE and (cycle := visit(v)):
            return cycle
    return None


def _where(src: str, dst: str) -> str:
    m = modules()[src]
    parent, _, leaf = dst.rpartition(".")
    lines = sorted({i.line for i in m.imports if i.target == dst or (i.target == parent and leaf in i.names)})
    return f"{m.rel}:{','.join(map(str, lines))}"


# --- the checks of the checker ---------------------------------------------------------------------------------------


def test_the_cycle_finder_finds_cycles_and_only_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None  # a diamond is not a cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_the_import_reader_sees_function_local_and_relative_imports_but_not_type_checking(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "import typing\n"
        "from . import sibling\n"
        "from ..up import thing\n"
        "if TYPE_CHECKING:\n"
        "    from pvreg.hidden import X\n"
        "else:\n"
        "    import pvreg.shown_in_else\n"
        "if typing.TYPE_CHECKING:\n"
        "    import pvreg.hidden2\n"
        "def f():\n"
        "    from pvreg.registry import api\n"
        "    class C:\n"
        "        def g(self):\n"
        "            import pvreg.deep\n"
    )
    found = {(i.target, i.type_checking) for i in _imports("pvreg.registry.storage.m", src)}
    assert ("pvreg.registry.storage", False) in found  # from . import sibling
    assert ("pvreg.registry.up", False) in found
    assert ("pvreg.hidden", True) in found and ("pvreg.hidden2", True) in found
    assert ("pvreg.shown_in_else", False) in found
    assert ("pvreg.registry", False) in found and ("pvreg.deep", False) in found
    pkg = tmp_path / "__init__.py"
    pkg.write_text("from .sub import x\nfrom .. import y\n")
    found = {i.target for i in _imports("pvreg.registry.storage", pkg)}
    assert found == {"pvreg.registry.storage.sub", "pvreg.registry"}


def test_the_module_list_is_the_source_tree() -> None:
    mods = modules()
    assert {"pvreg", "pvreg.registry", "pvreg.registry.api", "pvreg.registry.storage.db", "pvreg.cli.main",
            "pvreg.schemas.vector", "pvreg.migrations.env"} <= set(mods)
    assert len(mods) == 1 + sum(1 for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
                                if "__pycache__" not in p.parts)
    # The root package re-exports the API: its edges are found, and no module outside pvreg is listed.
    graph = import_graph()
    assert {"pvreg.registry.api", "pvreg.registry.errors", "pvreg.registry.version"} <= graph["pvreg"]
    assert all(dst in mods for deps in graph.values() for dst in deps)


# --- the rules -------------------------------------------------------------------------------------------------------


def test_no_import_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    if cycle:
        steps = "\n".join(f"  {a} -> {b}   ({_where(a, b)})" for a, b in zip(cycle, cycle[1:]))
        print(f"import cycle:\n{steps}")
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_is_too_long() -> None:
    long = {}
    for m in modules().values():
        if m.rel.split("/")[0] in ("registry", "cli", "schemas"):
            n = len(m.path.read_text().splitlines())
            if n > MAX_LINES:
                long[m.rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def test_registry_top_level_stays_small() -> None:
    top = sorted(p.name for p in (REPO / "registry").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_REGISTRY_TOP_LEVEL, f"{len(top)} modules directly in registry/ (put them in a " \
                                               f"sub-package): {top}"


def _importers_of(library: str) -> dict[str, list[int]]:
    """Modules importing ``library`` (or a submodule of it) anywhere, TYPE_CHECKING blocks included."""
    out: dict[str, list[int]] = {}
    for m in modules().values():
        lines = [i.line for i in m.imports if i.target == library or i.target.startswith(library + ".")]
        if lines:
            out[m.rel] = lines
    return out


def test_typer_is_only_imported_by_the_cli() -> None:
    bad = {rel: lines for rel, lines in _importers_of("typer").items() if rel.split("/")[0] in ("registry", "schemas")}
    assert not bad, f"registry/ and schemas/ must not speak command line: {bad}"
    assert _importers_of("typer"), "the checker found no typer import at all: it is not looking"


def test_huggingface_hub_is_only_imported_by_registry_hub() -> None:
    importers = _importers_of("huggingface_hub")
    assert importers, "the checker found no huggingface_hub import at all: it is not looking"
    bad = {rel: lines for rel, lines in importers.items() if not rel.startswith("registry/hub/")}
    assert not bad, f"only registry/hub/ may import huggingface_hub: {bad}"


def test_schemas_do_not_import_the_registry() -> None:
    bad = {m.rel: [(i.target, i.line) for i in m.imports if i.target == "pvreg.registry"
                   or i.target.startswith("pvreg.registry.") or (i.target == "pvreg" and "registry" in i.names)]
           for m in modules().values() if m.rel.startswith("schemas/")}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"schemas/ is the boundary layer and must not import pvreg.registry: {bad}"
