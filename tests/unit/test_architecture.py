"""House rules that hold for the whole tree: modules stay small, and the project's modules import each other
without cycles. (components/ importing no Prefect is tests/unit/test_layout.py.)"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support.imports import imported_modules, python_modules

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "tasks", "flows")
MAX_LINES = 600


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports (module level and inside functions)."""
    modules = python_modules(root, packages)
    return {name: {m for m in imported_modules(path, name, modules) if m in modules and m != name}
            for name, path in modules.items()}


def strongly_connected(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of `graph` (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def a_cycle(graph: Mapping[str, set[str]], component: list[str]) -> list[str]:
    """The shortest import cycle through the first module of `component`: [a, b, ..., a]."""
    start, members = component[0], set(component)
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & members):
            if child == start:
                path = [node]
                while (up := parent[path[-1]]) is not None:
                    path.append(up)
                return [*reversed(path), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"{component} is not a cycle")


def cycles(graph: Mapping[str, set[str]]) -> list[str]:
    """Every group of modules that import each other, each shown as one cycle `a -> b -> a`."""
    return [" -> ".join(a_cycle(graph, c)) + (f"  (all of: {', '.join(c)})" if len(c) > 2 else "")
            for c in sorted(strongly_connected(graph)) if len(c) > 1]


def test_no_module_is_longer_than_600_lines():
    long = {str(p.relative_to(REPO)): n for p in python_modules(REPO, PACKAGES).values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split by responsibility): {long}"


def test_the_project_modules_import_each_other_without_cycles():
    found = cycles(import_graph(REPO))
    assert not found, ("import cycles (move the shared piece down a layer, or the choice up to its caller):\n"
                       + "\n".join(found))


def test_the_cycle_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path):
    pkg = tmp_path / "components"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from components.sub.b import thing\n")  # re-export: no cycle
    (pkg / "a.py").write_text("from components.sub import b\n")
    (pkg / "sub" / "b.py").write_text("thing = 1\n\ndef f():\n    from ..a import x\n")  # lazy and relative
    (pkg / "c.py").write_text("import components.a\n")
    graph = import_graph(tmp_path, ("components",))
    assert graph["components.a"] == {"components.sub.b"}
    assert graph["components.sub.b"] == {"components.a"}
    assert graph["components.sub"] == {"components.sub.b"}
    assert cycles(graph) == ["components.a -> components.sub.b -> components.a"]


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a -> b -> c -> a  (all of: a, b, c)"]),
    ({"a": {"b", "c"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, ["a -> b -> a", "c -> d -> c"]),
])
def test_cycles_are_found_and_shown(graph, expected):
    assert cycles(graph) == expected


def test_flows_only_compose():
    """The training flow's body stays short: task calls and control flow, no work of its own."""
    import ast
    import inspect

    from flows.training import training_flow

    fn = ast.parse(inspect.getsource(training_flow.fn)).body[0]
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) else fn.body  # the docstring does not count
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= 60, f"training_flow's body is {lines} lines: move the work into tasks and components"
    calls = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
             for n in ast.walk(fn) if isinstance(n, ast.Call)}
    registry_writes = {"log_dict", "log_text", "log_params", "log_metrics", "set_tags", "set_version_tags",
                       "log_and_register", "start_run", "end_run", "set_alias"}
    assert not calls & registry_writes, f"registry writes in the flow body (make them tasks): {calls & registry_writes}"
