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


def bar_chart(name: str, title: str, groups: dict[str, dict[str, float]], unit: str,
              second: tuple[str, dict[str, dict[str, float]]] | None = None) -> str:
    """Write docs/img/<name>.png: grouped bars, one group per key of `groups` (a dataset), one bar per run inside
    it, labelled with its value; `second` = (unit, groups) adds a panel beside it (p99 latency next to req/s).
    Returns the Markdown that shows it, relative to docs/benchmarks.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(unit, groups)] + ([second] if second else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (label, data) in zip(axes[0], panels):
        runs = list(dict.fromkeys(run for values in data.values() for run in values))
        width = 0.8 / max(len(runs), 1)
        for k, run in enumerate(runs):
            xs = [g + k * width for g in range(len(data))]
            ys = [values.get(run, 0.0) for values in data.values()]
            bars = ax.bar(xs, ys, width, label=run)
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
        ax.set_xticks([g + width * (len(runs) - 1) / 2 for g in range(len(data))], list(data))
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=1, frameon=False)
    fig.suptitle(title, fontsize=10)
    img = DOC.parent / "img" / f"{name}.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(img, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"![{title}](img/{img.name})"


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
