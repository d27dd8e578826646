"""Markdown tables for artifacts, model cards and reports."""

from __future__ import annotations

from typing import Any


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table; pipes and newlines inside cells are escaped."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
