"""Where long work draws its progress bar: the terminal a person watches, or nowhere.

`fineship` commands send library output to a log file (flows/console.py) but keep the real terminal for the
training bar; they register it here. Without a registered terminal the bar goes to `sys.stderr`. A bar is
drawn only on a terminal (a TTY): in a log file or a Prefect worker's captured output its redraws are noise.
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["bar_stream", "set_terminal"]

_terminal: TextIO | None = None


def set_terminal(stream: TextIO | None) -> None:
    """Register the terminal the person watches (None: back to `sys.stderr`)."""
    global _terminal
    _terminal = stream


def bar_stream() -> TextIO | None:
    """The stream to draw a progress bar on, or None when that stream is not a terminal."""
    stream = _terminal if _terminal is not None else sys.stderr
    try:
        return stream if stream.isatty() else None
    except (AttributeError, ValueError):  # a closed or file-less stream
        return None
