"""The layout contract: components/ is plain library code with no Prefect in it; tasks wrap components
and flows compose tasks, never the other way round. Imports inside functions count too
(tests/support/imports.py)."""

from pathlib import Path

from tests.support.imports import imported_modules

REPO = Path(__file__).resolve().parents[2]


def _top_level(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def _offenders(package: str, forbidden) -> list[str]:
    return sorted(f"{p.relative_to(REPO)}: {', '.join(sorted(n for n in _top_level(p) if forbidden(n)))}"
                  for p in (REPO / package).rglob("*.py") if any(forbidden(n) for n in _top_level(p)))


def _is_prefect(name: str) -> bool:
    return name == "prefect" or name.startswith("prefect_")  # and its integrations (prefect_aws)


def test_no_module_under_components_imports_prefect():
    assert _offenders("components", _is_prefect) == []


def test_the_check_would_catch_an_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from prefect import task\n    import prefect_aws.s3\n")
    assert {"prefect", "prefect_aws"} <= _top_level(bad)
    assert all(_is_prefect(n) for n in _top_level(bad))


def test_components_do_not_import_tasks_or_flows():
    assert _offenders("components", lambda n: n in {"tasks", "flows"}) == []


def test_tasks_do_not_import_flows():
    assert _offenders("tasks", lambda n: n == "flows") == []
