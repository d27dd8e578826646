"""The layout contract: components/ is plain library code with no Prefect in it."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_under_components_imports_prefect():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "components").rglob("*.py") if "prefect" in _imports(p)]
    assert offenders == []


def test_the_check_would_catch_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from prefect import task\n")
    assert "prefect" in _imports(bad)


def test_components_do_not_import_tasks_or_flows():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "components").rglob("*.py")
                 if _imports(p) & {"tasks", "flows"}]
    assert offenders == []
