"""The package's import graph (every import statement, at any depth, read with ast): no circles, and
the layering rule: nothing below the replay (cache, model, sim, trace, report, kernels, ...) imports
`mtbench.replay`; only the layers that drive it do: the CLI, the serving layer (open-loop arrivals and
capacity checks feed the replay's batches) and the fleet (one replay per GPU)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("mtbench", "kernels")
MAY_IMPORT_REPLAY = ("mtbench.cli", "mtbench.replay", "mtbench.serve", "mtbench.fleet", "mtbench.__main__")


def _modules() -> dict[str, Path]:
    modules = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` resolves to (its longest known prefix)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                resolved = _target(target, modules)
                if resolved is not None and resolved != name and not _is_parent_package(resolved, name):
                    graph[name].add(resolved)
    return graph


def _is_parent_package(target: str, name: str) -> bool:
    """`import mtbench` inside mtbench.x (a version lookup) is not a dependency on every module."""
    return name.startswith(target + ".") and target in ROOTS


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (found := visit(child)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert len(graph) > 50 and any(graph.values()), "the graph builder found nothing: it would prove nothing"
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_nothing_below_the_replay_imports_it() -> None:
    graph = import_graph()
    offenders = sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                       if target.startswith("mtbench.replay") and not name.startswith(MAY_IMPORT_REPLAY))
    assert not offenders, offenders


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
