"""Shared by the benchmark scripts: machine description, their RESULT lines, and writing one section of
docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery number here was measured by the script named in its section, on the machine it names.\n"


def machine() -> str:
    """One line: cores, CPU model, Python, torch."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = "n/a"
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, torch {torch_v}, "
            f"{datetime.now(timezone.utc):%Y-%m-%d}")


def write_section(title: str, body: str) -> Path:
    """Replace (or append) the `## title` section of docs/benchmarks.md, leaving other sections alone."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text.rstrip() + "\n")
    return DOC


class Results:
    """A benchmark's RESULT lines: each printed to stdout when it is known (so a benchmark's last stdout lines
    are its RESULT lines), then all of them written below the body of its docs/benchmarks.md section."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        """Print one `RESULT key=value ...` line and keep it for the section."""
        print(line, flush=True)
        self.lines.append(line)

    def write(self, body: str) -> Path:
        """Replace the benchmark's section with `body` and a code block of the RESULT lines (path on stderr)."""
        path = write_section(self.title, body.rstrip() + "\n\n```\n" + "\n".join(self.lines) + "\n```\n")
        print("wrote", path, file=sys.stderr)
        return path
