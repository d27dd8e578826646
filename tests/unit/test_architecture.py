"""House rules that hold for the whole tree: modules stay small, and the project's modules import each other
without cycles. (components/ importing no Prefect is tests/unit/test_layout.py.)"""

from __future__ import annotations

import re
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


def _flow_functions():
    """(module path, ast of the function) of every `@flow` in flows/."""
    import ast

    for path in sorted((REPO / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    getattr(d.func if isinstance(d, ast.Call) else d, "id", "") == "flow" for d in node.decorator_list):
                yield path.relative_to(REPO), node


REGISTRY_WRITES = {"log_dict", "log_text", "log_params", "log_metrics", "log_metric_batch", "log_artifact", "log_dir",
                   "set_tags", "set_version_tags", "log_and_register", "start_run", "end_run", "set_alias",
                   # the review component's writes
                   "approve", "record_approval", "reject", "auto_promote", "move_alias", "rollback", "sign_approval"}


def test_flows_only_compose():
    """Every flow composes tasks: no registry write in a flow body (each is a retried, visible task), one registry
    object per flow run, and the training flow's body stays short."""
    import ast

    flows = dict(((str(path), node.name), node) for path, node in _flow_functions())
    assert len(flows) >= 7, f"expected the project's flows, found {sorted(flows)}"
    for (path, name), fn in flows.items():
        calls = [n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                 for n in ast.walk(fn) if isinstance(n, ast.Call)]
        writes = set(calls) & REGISTRY_WRITES
        assert not writes, f"{path}:{name} writes to the registry in its body (make it a task): {writes}"
        assert calls.count("MlflowRegistry") <= 1, f"{path}:{name} builds more than one registry object"
    training = flows[("flows/training.py", "training_flow")]
    body = training.body[1:] if isinstance(training.body[0], ast.Expr) else training.body  # the docstring does not count
    lines = body[-1].end_lineno - body[0].lineno + 1
    assert lines <= 60, f"training_flow's body is {lines} lines: move the work into tasks and components"


def test_only_flows_and_the_cli_build_a_registry_and_only_aws_settings_build_clients():
    """Tasks and components receive the flow's one registry object; every boto3 client comes from `AwsSettings`."""
    offenders = [str(p.relative_to(REPO)) for d in ("tasks", "components") for p in (REPO / d).rglob("*.py")
                 if "MlflowRegistry(" in p.read_text()]
    assert offenders == [], f"a registry is built outside flows/: {offenders}"
    raw_clients = [str(p.relative_to(REPO)) for d in ("tasks", "components", "flows") for p in (REPO / d).rglob("*.py")
                   if p.name != "aws.py" and re.search(r"boto3\.(client|resource)\(|\.session\.Session\(",
                                                       p.read_text())]
    assert raw_clients == [], f"boto3 clients built outside components/aws.py (no retry policy): {raw_clients}"


def test_the_registry_object_leaves_the_process_environment_alone(tmp_path):
    import os

    from components.registry.mlflow_registry import MlflowRegistry, local_tracking_uri

    before = dict(os.environ)
    MlflowRegistry(local_tracking_uri(tmp_path / "mlflow.db"), tmp_path / "artifacts")
    assert dict(os.environ) == before


def test_the_overhead_benchmark_swaps_every_task_the_training_flow_calls():
    """benchmarks/overhead.py times the real flow with each task replaced by its `.fn`: every task the flow body
    calls must be among those it finds (derived from the flow's imports, so a new task cannot be missed)."""
    import ast
    import inspect

    from prefect import Task

    import flows.training
    from benchmarks.overhead import flow_tasks

    fn = ast.parse(inspect.getsource(flows.training.training_flow.fn))
    called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    tasks = {name for name in called if isinstance(getattr(flows.training, name, None), Task)}
    assert len(tasks) >= 10
    assert {getattr(flows.training, name).name for name in tasks} <= set(flow_tasks())
