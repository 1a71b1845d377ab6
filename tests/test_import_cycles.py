"""No import cycle in the product: every import in runtime/, calib/ and compile/ (lazy ones inside functions
included) is read from the source, and two graphs must be acyclic:
- modules: `from a.b import c` is an edge to `a.b.c` when that is a module, else to `a.b`, and to the packages
  Python runs on the way there (`a`, `a.b`) unless they enclose the importing module (a package importing its
  own submodules is not a cycle);
- units: each top-level module and each sub-package (runtime.check, runtime.report, compile.quantize, ...) as
  one node, so that two packages importing each other's modules count as a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "calib", "compile")


def product_modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of the product."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs."""
    modules = product_modules()
    graph = {}
    for name, path in modules.items():
        enclosing = {*ancestors(name), *([name] if path.name == "__init__.py" else [])}
        edges = set()
        for target in imports_of(name, path, modules):
            edges |= {target, *(a for a in ancestors(target) if a in modules and a not in enclosing)}
        graph[name] = edges - {name}
    return graph


def unit_of(name: str) -> str:
    """runtime.report.page -> runtime.report; runtime.check -> runtime.check; runtime -> runtime."""
    return ".".join(name.split(".")[:2])


def unit_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for name, targets in graph.items():
        units.setdefault(unit_of(name), set()).update(unit_of(t) for t in targets if unit_of(t) != unit_of(name))
    return units


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_lazy_relative_and_package_imports() -> None:
    graph = module_graph()
    assert "calib.models" in graph["runtime.mmtoxicqa.evaluate"]  # the lazy --model edge, inside a function
    assert "compile.quantize" in graph["compile.qfold"]  # importing compile.quantize.derive runs its package
    assert "runtime.mmtoxicqa" not in graph["runtime.mmtoxicqa.runner"]  # ... but not the package it is in
    assert {"runtime", "calib", "compile"} <= set(graph) and len(graph) > 100


def test_no_import_cycle_between_modules() -> None:
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_packages() -> None:
    cycle = find_cycle(unit_graph(module_graph()))
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_a_planted_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert unit_graph({"x.p.m": {"x.q"}, "x.q": {"x.p.n"}, "x.p.n": set()}) == {"x.p": {"x.q"}, "x.q": {"x.p"}}
