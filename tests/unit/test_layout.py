"""The package's layout rules (ARCHITECTURE.md), checked on its source: the import graph has
no cycles, between modules or between subpackages; only the core-facing modules import
``_core``; no module reaches into another subpackage's private modules; and outside the
manager's fs drivers, no manager code compares driver names."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import nydus_hybrid
from nydus_hybrid.manager import drivers

PACKAGE = Path(nydus_hybrid.__file__).parent
ROOT = "nydus_hybrid"

# The modules that wrap the Rust core; everything else goes through them.
CORE_FACING = {
    "nydus_hybrid.image",
    "nydus_hybrid.builder",
    "nydus_hybrid.blobs",
    "nydus_hybrid.config",
    "nydus_hybrid.version",
    "nydus_hybrid.mounts.fuse",
    "nydus_hybrid.mounts.idmap",
    "nydus_hybrid.mounts.fscache",
    # The daemon's early mount: it runs before the wrappers (and their imports) may load.
    "nydus_hybrid.daemon.early",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in PACKAGE.rglob("*.py")}
CORE = f"{ROOT}._core"  # the extension module: imported, never parsed


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(name: str) -> Set[str]:
    """The package modules ``name`` imports when it runs (lazy imports in functions count;
    ``if TYPE_CHECKING:`` blocks do not)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(
                        package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else [])
                    )
                for a in child.names:
                    # `from pkg import mod` imports a module; `from mod import name` imports mod
                    imported = f"{base}.{a.name}"
                    found.add(imported if imported in MODULES or imported == CORE else base)
            visit(child)

    visit(tree)
    return {m for m in found if m == ROOT or m.startswith(ROOT + ".")}


GRAPH = {name: runtime_imports(name) for name in MODULES}
GRAPH[CORE] = set()


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of ``graph`` as a path, or []."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def dfs(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = dfs(node)
            if cycle:
                return cycle
    return []


def unit(name: str) -> str:
    """The subpackage (or top-level module) a module belongs to."""
    parts = name.split(".")
    return ".".join(parts[:2])


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    # A package's __init__ runs before its modules: an edge into a package is an edge into
    # its __init__, which is how Python resolves it too.
    graph = {m: {i for i in imps if i != m} for m, imps in GRAPH.items()}
    assert find_cycle(graph) == []


def test_no_import_cycle_between_subpackages():
    graph: Dict[str, Set[str]] = {}
    for m, imps in GRAPH.items():
        if m == ROOT:
            continue  # the package's __init__ re-exports the image API
        graph.setdefault(unit(m), set()).update(unit(i) for i in imps if unit(i) not in (unit(m), ROOT))
    assert find_cycle(graph) == []


def test_only_the_core_facing_modules_import_core():
    importers = {m for m, imps in GRAPH.items() if CORE in imps}
    assert importers <= CORE_FACING, f"import nydus_hybrid._core only through {sorted(CORE_FACING)}"
    assert importers, "the checker saw no import of _core at all"


def test_no_reach_into_another_subpackages_private_modules():
    bad = []
    for m, imps in GRAPH.items():
        for i in imps:
            private = any(p.startswith("_") for p in i.split(".")[1:]) and i != CORE
            if private and unit(i) != unit(m):
                bad.append(f"{m} -> {i}")
    assert bad == []


def test_the_daemon_process_is_imported_by_nobody_else():
    """daemon/ is the nydusd-compatible process only: the rest of the package drives it through
    its API, never by importing it."""
    importers = {m for m, imps in GRAPH.items() for i in imps if unit(i) == f"{ROOT}.daemon" and unit(m) != unit(i)}
    assert importers == set()


def test_manager_code_outside_the_drivers_never_compares_driver_names():
    names = set(drivers.NAMES)
    assert names >= {"fusedev", "fscache"}
    offenders = []
    for m, path in MODULES.items():
        if not m.startswith(f"{ROOT}.manager") or m.startswith(f"{ROOT}.manager.drivers"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                for operand in [node.left, *node.comparators]:
                    consts = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                    for c in consts:
                        if isinstance(c, ast.Constant) and c.value in names:
                            offenders.append(f"{m}:{node.lineno}")
    assert offenders == []
