"""The `tljax` and `harness` packages have no import cycles, checked statically with `ast` (nothing under test is imported).

Graph: one node per module (`tljax/train/loop.py` -> `tljax.train.loop`, `tljax/methods/__init__.py` ->
`tljax.methods`). Every `import` / `from ... import ...` anywhere in a module is an edge (`ast.walk`: inside
functions, methods, `if TYPE_CHECKING:`, `try:` ...), relative imports resolved; only edges to modules of the
package are kept, self-edges are dropped. `import a.b.c` -> `a.b.c`; `from p import n` -> `p.n` when that is a
module, else `p`. The parent `__init__`s that Python runs on the way are not edges: only explicit imports count.

Re-export rule: an edge from a package `P` (its `__init__.py`) to one of its own submodules `P.x...` is dropped
when that `__init__` is *re-export only*: its top-level statements are just a docstring, `import` /
`from ... import`, and assignments (`=` or annotated) to plain names whose values are built only from constants,
names, attributes and tuple / list / set / dict displays (`__all__`, registries of imported names). Anything
else (a `def`, a `class`, a call, an `if` / `try` block, ...) makes the `__init__` count fully.

A failure lists, for every strongly connected component (Tarjan), the shortest cycle through each of its
edges, as `a -> b -> a` with the `file:line` of every import that makes each edge.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

Graph = dict[str, dict[str, list[str]]]  # importer -> imported -> ["file:line", ...]
_PLAIN = (ast.Constant, ast.Name, ast.Attribute, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.Starred,
          ast.expr_context)


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file for every `.py` under the package directory `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def owner(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of a dotted name that is one of `modules` ("" if none: not our package)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


def reexport_only(tree: ast.Module) -> bool:
    """Whether a package `__init__` holds only a docstring, imports and plain-name assignments (see above)."""
    for i, node in enumerate(tree.body):
        docstring = i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if docstring or isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else None
        if (targets is None or not all(isinstance(t, ast.Name) for t in targets)
                or any(not isinstance(n, _PLAIN) for n in ast.walk(node.value or ast.Constant(None)))):
            return False
    return True


def import_graph(root: Path, package: str) -> Graph:
    """The import graph of the package in directory `root`, re-export edges already dropped (see above)."""
    modules = module_files(root, package)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        found: set[tuple[int, str]] = set()  # (line, imported module or name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {(node.lineno, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if is_package else name.split(".")[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found |= {(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
                          for a in node.names}
        found = {(line, owner(target, modules)) for line, target in found}
        skip_own = is_package and reexport_only(tree)
        for line, target in sorted(found):
            if target and target != name and not (skip_own and target.startswith(name + ".")):
                graph[name].setdefault(target, []).append(f"{path.relative_to(root.parent)}:{line}")
    return graph


def components(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = stack[stack.index(v):]
            del stack[stack.index(v):]
            on_stack.difference_update(scc)
            if len(scc) > 1:
                found.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def find_cycles(graph: Graph) -> list[str]:
    """For each edge inside a cycle, the shortest cycle through it, deduplicated, with file:line per edge."""
    reports: dict[tuple[str, ...], str] = {}
    for scc in components(graph):
        members = set(scc)
        for a in scc:
            for b in sorted(set(graph[a]) & members):
                came: dict[str, str] = {b: b}  # shortest path b ~> a inside the component (BFS)
                queue = deque([b])
                while a not in came:
                    v = queue.popleft()
                    for w in sorted(set(graph[v]) & members - came.keys()):
                        came[w] = v
                        queue.append(w)
                cycle = [a]
                while cycle[-1] != b:
                    cycle.append(came[cycle[-1]])
                cycle = [a, *reversed(cycle[1:])]
                cycle = cycle[cycle.index(min(cycle)):] + cycle[:cycle.index(min(cycle))]  # start at the smallest
                edges = "\n".join(f"    {x} -> {y}  ({', '.join(graph[x][y])})"
                                  for x, y in zip(cycle, cycle[1:] + cycle[:1]))
                reports[tuple(cycle)] = f"{' -> '.join(cycle + cycle[:1])}\n{edges}"
    return [reports[key] for key in sorted(reports)]


@pytest.mark.parametrize("package", ["tljax", "harness"])
def test_no_import_cycles(package: str) -> None:
    """No module of tljax, or of the harness and its app, imports itself back, however indirectly."""
    cycles = find_cycles(import_graph(Path(__file__).resolve().parents[1] / package, package))
    assert not cycles, f"{len(cycles)} import cycle(s) in {package}:\n" + "\n".join(cycles)


def test_checker_finds_cycles_and_allows_reexports(tmp_path: Path) -> None:
    """A cycle through an import inside a function is found; a re-export-only `__init__` is not a cycle."""
    def write(files: dict[str, str]) -> None:
        for rel, text in files.items():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text(text)

    write({"cyc/__init__.py": "", "cyc/a.py": "def f():\n    from . import b\n", "cyc/b.py": "import cyc.a\n"})
    assert find_cycles(import_graph(tmp_path / "cyc", "cyc")) == [
        "cyc.a -> cyc.b -> cyc.a\n    cyc.a -> cyc.b  (cyc/a.py:2)\n    cyc.b -> cyc.a  (cyc/b.py:1)"]

    init = ('"""Re-exports."""\nfrom rex.x import X\nfrom rex.y import Y\n'
            '__all__ = ["X", "Y"]\nREGISTRY: dict[str, type] = {"x": X, "y": Y}\n')
    write({"rex/__init__.py": init, "rex/x.py": "from rex import Y\nfrom rex.y import Y\nclass X: ...\n",
           "rex/y.py": "class Y: ...\n"})
    assert find_cycles(import_graph(tmp_path / "rex", "rex")) == []
    write({"rex/__init__.py": init + "def make(name):\n    return REGISTRY[name]()\n"})  # no longer re-export only
    assert [c.splitlines()[0] for c in find_cycles(import_graph(tmp_path / "rex", "rex"))] == ["rex -> rex.x -> rex"]
