"""Reading a project's imports with `ast`, for the tests that hold the house rules (tests/unit/test_layout.py,
tests/unit/test_architecture.py). Every import counts: at module level and inside functions (a lazy import
still runs, and still closes a cycle)."""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterable
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """The dotted name of the module in `path` (`a/b/__init__.py` is `a.b`), relative to `root`."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def python_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted name -> file of every module under the top-level `packages` of `root`."""
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}


def imported_modules(path: Path, module: str = "", known: Collection[str] = ()) -> set[str]:
    """The dotted names the file at `path` (the module `module`) imports, relative imports resolved.

    `import a.b` gives "a.b"; `from a.b import c` gives "a.b.c" when that is in `known` (a module),
    else "a.b". A package's `__init__` run on the way to a submodule is not counted: it is not what
    the code asked for, and counting it would make every package whose `__init__` re-exports a
    submodule look like a cycle.
    """
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                anchor = here[:len(here) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                name = f"{base}.{alias.name}"
                names.add(name if name in known else base)
    return names
