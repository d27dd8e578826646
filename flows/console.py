"""What a person sees of a `fineship` command that runs flows: one line per stage as it finishes, a summary,
and an error printed once, with where the full log is.

Everything else a run prints (Prefect's per-task state lines, MLflow's notices and warnings, transformers'
load report and weight-loading bars, Python warnings) goes to a log file under `<home>/logs/` that the summary
and the error name; `--verbose` shows it on the terminal instead. The stage lines come from `report_stage`
(tasks/common.py): log records on Prefect's task-run logger that carry a `StageEvent`, so the Prefect run page
shows the same lines.

The redirection is Python-level (`sys.stdout`/`sys.stderr` and the logging handlers), so it also works when a
command runs in-process under a test runner; output a library writes straight to file descriptor 2 from C code
still reaches the terminal.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape

from components import progress
from tasks.common import STAGE_RECORD, StageEvent

__all__ = ["CommandConsole", "command_console", "own_process"]

MARKS = {"ok": ("✓", "green"), "warning": ("!", "yellow"), "failed": ("✗", "red"), "rejected": ("✗", "yellow"),
         "skipped": ("-", "dim")}
TASK_LOGGER = "prefect.task_runs"
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3.connectionpool")


_process_owned = False


def own_process() -> None:
    """Called by the console entry point: the process ends with the command, so the redirection is not undone
    (Prefect's and MLflow's shutdown messages then go to the log file too)."""
    global _process_owned
    _process_owned = True


class _Redirect(io.TextIOBase):
    """A text stream that writes to the log file while the command runs and to the original stream afterwards
    (a library may keep a reference, e.g. a logging handler created during the command)."""

    def __init__(self, log: TextIO, after: TextIO) -> None:
        self.target, self.after = log, after

    def write(self, text: str) -> int:
        return self._live().write(text)

    def flush(self) -> None:
        self._live().flush()

    def _live(self) -> TextIO:  # a stream closed since (a test runner's) falls back to the process's own
        return sys.__stderr__ if getattr(self.target, "closed", False) else self.target

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def release(self) -> None:
        self.target = self.after


@dataclass
class CommandConsole:
    """The terminal side of one command: stage lines, the summary, one error or a JSON document."""

    command: str
    log_path: Path | None
    out: Console  # what the person reads: the summary (stdout)
    lines: Console  # stage lines: stdout, or stderr when stdout carries JSON
    err: Console  # the error (stderr)
    json_mode: bool = False
    stages: list[StageEvent] = field(default_factory=list)
    failed_task: str | None = None
    started: float = field(default_factory=time.monotonic)

    def stage(self, event: StageEvent) -> None:
        self.stages.append(event)
        mark, colour = MARKS.get(event.outcome, ("·", "white"))
        seconds = f"{event.seconds:6.1f}s" if event.seconds is not None else " " * 7
        self.lines.print(f"[{colour}]{mark}[/] [bold]{escape(event.stage):<18}[/] {seconds}  {escape(event.figure)}")

    def where_logged(self) -> str:
        """Where the command's full log is, as the summary and the error say it."""
        return str(self.log_path) if self.log_path else "above (--verbose)"

    def fail(self, err: BaseException, code: int, what: str | None = None) -> NoReturn:
        """Print the error once (what failed, why and what to do are in the message) and exit with `code`."""
        stopped = [s.stage for s in self.stages if s.outcome in ("failed", "rejected")]
        stage = what or (f"stage {stopped[-1]}" if stopped else f"stage {self.failed_task}" if self.failed_task else None)
        headline = f"{self.command} failed" + (f" at {stage}" if stage else "")
        message = str(err) or type(err).__name__
        if self.json_mode:
            self.emit_json({"ok": False, "command": self.command, "failed_at": stage, "error": message,
                            "error_type": type(err).__name__})
        else:
            self.err.print(f"[red bold]{escape(headline)}[/]: {escape(message)}")
            self.err.print(f"  full log: {escape(self.where_logged())}", style="dim")
        raise typer.Exit(code)

    def emit_json(self, payload: dict[str, Any]) -> None:
        document = {**payload, "stages": [s.model_dump() for s in self.stages],
                    "seconds": round(time.monotonic() - self.started, 2),
                    "log": str(self.log_path) if self.log_path else None}
        self.out.file.write(json.dumps(document, indent=2, default=str) + "\n")
        self.out.file.flush()

    def row(self, label: str, value: str) -> None:
        """One summary line: `label:` in a column, or a continuation of the line above when `label` is empty."""
        self.out.print(f"  {label + ':' if label else '':<19}{escape(value)}")


class _StageHandler(logging.Handler):
    """Turns stage records into stage lines, and remembers which task failed."""

    def __init__(self, console: CommandConsole) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, STAGE_RECORD, None)
        if isinstance(event, StageEvent):
            self.console.stage(event)
        elif record.getMessage().startswith("Finished in state Failed") and getattr(record, "task_name", None):
            task = record.task_name  # type: ignore[attr-defined]
            reported = any(s.outcome in ("failed", "rejected") for s in self.console.stages)
            if self.console.failed_task is None:
                self.console.failed_task = task
                if not reported:  # a stage that failed without saying so itself
                    self.console.stage(StageEvent(stage=task, outcome="failed", figure="see the error below"))


def _log_file(command: str) -> Path:
    from flows.settings import Settings

    logs = Settings().home_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{command}-{datetime.now():%Y%m%d-%H%M%S}-{time.time_ns() % 10**6:06d}.log"


@contextmanager
def command_console(command: str, *, verbose: bool = False, json_mode: bool = False) -> Iterator[CommandConsole]:
    """Run a command's body with library output in a log file (unless `verbose`) and stage lines on the terminal."""
    stdout, stderr = sys.stdout, sys.stderr
    out = Console(file=stdout, highlight=False, soft_wrap=True)
    err = Console(file=stderr, highlight=False, soft_wrap=True)
    lines = err if json_mode else out
    if verbose:
        console = CommandConsole(command, None, out, lines, err, json_mode)
        handler = _StageHandler(console)
        logging.getLogger(TASK_LOGGER).addHandler(handler)
        try:
            yield console
        finally:
            logging.getLogger(TASK_LOGGER).removeHandler(handler)
        return
    log_path = _log_file(command)
    log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
    redirect_out, redirect_err = _Redirect(log, stdout), _Redirect(log, stderr)
    console = CommandConsole(command, log_path, out, lines, err, json_mode)
    stage_handler = _StageHandler(console)
    file_handler = logging.StreamHandler(redirect_err)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    swapped: list[tuple[logging.StreamHandler, TextIO]] = []
    for logger in (lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)):
        for h in logger.handlers:  # console handlers of libraries already imported (propagate=False ones)
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) and \
                    getattr(h, "stream", None) in (stdout, stderr, sys.__stdout__, sys.__stderr__):
                swapped.append((h, h.stream))
                h.setStream(redirect_err)
    for h in saved_root[1]:  # Prefect's rich console handler, basicConfig's: the log file replaces them
        root.removeHandler(h)
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in QUIET_LOGGERS:  # one line per HTTP request is noise even in the log file
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(TASK_LOGGER).addHandler(stage_handler)
    logging.captureWarnings(True)
    sys.stdout, sys.stderr = redirect_out, redirect_err
    progress.set_terminal(stderr)  # the training bar, when the terminal is a terminal
    try:
        yield console
    finally:
        progress.set_terminal(None)
        logging.getLogger(TASK_LOGGER).removeHandler(stage_handler)
        log.flush()
        if not _process_owned:  # the console entry point keeps logging to the file while the process ends
            _restore(stdout, stderr, saved_root, quiet, swapped, file_handler)
            redirect_out.release()
            redirect_err.release()
            log.close()


def _restore(stdout: TextIO, stderr: TextIO, saved_root: tuple[int, list[logging.Handler]], quiet: dict[str, int],
             swapped: list[tuple[logging.StreamHandler, TextIO]], file_handler: logging.Handler) -> None:
    sys.stdout, sys.stderr = stdout, stderr
    logging.captureWarnings(False)
    root = logging.getLogger()
    root.removeHandler(file_handler)
    root.setLevel(saved_root[0])
    for h in saved_root[1]:
        root.addHandler(h)
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    for h, stream in swapped:
        h.setStream(stream)
