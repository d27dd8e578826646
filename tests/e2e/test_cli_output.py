"""What a person sees of `fineship run`: one line per stage, a summary, the error once, and the rest in a log file.

The first test runs the console script as a person does, on a terminal (a pseudo-terminal, so the progress bar
and colours are on); the others run the command in-process against the session's Prefect harness.
"""

from __future__ import annotations

import json
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.tiny import REPO, SAMPLE

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
NOISE = ("Finished in state", "LOAD REPORT", "UserWarning", "Add type hints", "Loading weights", "View run",
         "prefect.task_runs", "httpx")
STAGES = ["load", "validate", "split", "labels", "recipe", "train", "evaluate candidate", "baseline", "gate", "package",
          "register", "promote", "signature", "deploy"]


def _settings(tiny_bert: Path) -> list[str]:
    sets = [f"training.model={tiny_bert}", "training.epochs=2", "training.learning_rate=0.003",
            "training.max_length=48", "gate.min_accuracy=0.0", "gate.min_macro_f1=0.0", "deploy.port=0",
            "registry.model_name=cli-news", "registry.experiment=cli"]
    return [a for s in sets for a in ("--set", s)]


def _on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run `fineship ARGS` with stdout and stderr on a pseudo-terminal; return its exit code and what it drew."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))  # a new pty has 0 columns
    proc = subprocess.Popen([str(Path(sys.executable).parent / "fineship"), *args], stdin=subprocess.DEVNULL,
                            stdout=child, stderr=child, cwd=REPO, env=env, close_fds=True)
    os.close(child)
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
        assert time.monotonic() < deadline, "fineship run did not finish in time"
    os.close(main)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def _screen(raw: str) -> list[str]:
    """The lines left on the screen: colours dropped, a line redrawn with carriage returns kept as last drawn."""
    lines = []
    for line in ANSI.sub("", raw).replace("\r\n", "\n").split("\n"):
        line = line.split("\r")[-1].rstrip()
        if line:
            lines.append(line)
    return lines


def test_run_on_a_terminal_prints_a_line_per_stage_and_logs_the_rest(prefect_harness, tiny_bert, tmp_path):
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FINESHIP_", "PREFECT_API", "MLFLOW_"))}
    env.update({"FINESHIP_HOME": str(home), "FINESHIP_AUTO_PROMOTE": "true", "COLUMNS": "160", "TERM": "xterm",
                # the tiny model's gate is below fineship's default floor: the session's weakest floor (conftest)
                "FINESHIP_AUTO_PROMOTE_GATE": os.environ["FINESHIP_AUTO_PROMOTE_GATE"],
                "FINESHIP_PREFECT_API_URL": PREFECT_API_URL.value()})  # the session's server: no start-up here
    code, raw = _on_a_terminal(["run", "--config", "ci", "--data", str(SAMPLE), *_settings(tiny_bert)], env)
    screen = _screen(raw)
    try:
        assert code == 0, "\n".join(screen)
        assert "training:" in ANSI.sub("", raw)  # the progress bar was drawn while the model trained ...
        assert not any(line.startswith("training:") for line in screen)  # ... and cleared when it ended
        stage_lines = [line for line in screen if line[:1] in "✓!-✗"]
        assert [re.split(r"\s{2,}", line[2:])[0] for line in stage_lines] == STAGES, screen
        assert re.search(r"[✓!] train\s+\d+\.\ds\s+\d+ steps, [\d.]+ samples/s", "\n".join(screen))
        assert re.search(r"✓ split\s+\d+\.\ds\s+train \d+ / validation \d+ / test \d+, leakage 0", "\n".join(screen))
        for row in ("MLflow run:", "registered model:", "endpoint:", "sample prediction:", "full log:"):
            assert sum(line.lstrip().startswith(row) for line in screen) == 1, (row, screen)
        assert not [line for line in screen if any(n in line for n in NOISE)], screen
        assert len(screen) <= 30, screen
        log = Path(next(line for line in screen if "full log:" in line).split("full log:")[1].strip())
        text = log.read_text()
        assert "Finished in state Completed()" in text and "Add type hints" in text  # the noise went here
        assert "train: " in text  # and the stage lines too, with the rest of the run's log
    finally:
        subprocess.run([str(Path(sys.executable).parent / "fineship"), "endpoint", "stop", "fineship-ci"],
                       env=env, cwd=REPO, capture_output=True, timeout=120)


@pytest.fixture
def cli(prefect_harness, fineship_home):
    import flows.cli
    from prefect import flow  # noqa: F401 - Prefect configures logging on first use: not inside CliRunner's streams,
    # which it closes (Prefect's console handlers would stay bound to them for the rest of the session)

    runner = CliRunner()
    return lambda *args: runner.invoke(flows.cli.app, list(args), catch_exceptions=False)


def test_a_failing_validation_prints_its_report_once(cli, fineship_home, tiny_bert):
    r = cli("run", "--config", "ci", "--data", str(SAMPLE), *_settings(tiny_bert), "--set", "data.max_chars=40")
    assert r.exit_code == 3, r.output
    assert "✗ validate" in r.stdout and "failed: text_length" in r.stdout
    assert r.stderr.count("outside 1..40 characters") == 1 and r.stdout.count("outside 1..40") == 0
    assert "run failed at stage validate" in r.stderr
    log = Path(re.search(r"full log: (\S+)", r.stderr).group(1))
    assert log.parent == fineship_home / "logs" and "DataValidationError" in log.read_text()  # the traceback
    assert "Traceback" not in r.output and "Finished in state" not in r.output


def test_json_reports_a_run_for_scripts(cli, fineship_home, tiny_bert):
    r = cli("run", "--config", "ci", "--data", str(SAMPLE), *_settings(tiny_bert), "--no-deploy", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # stdout holds the document and nothing else
    assert doc["ok"] is True and doc["registered"]["name"] == "cli-news" and doc["registered"]["version"] == "1"
    assert 0.0 <= doc["test"]["accuracy"] <= 1.0 and doc["gate"]["passed"] is True
    assert [s["stage"] for s in doc["stages"]][:6] == ["load", "validate", "split", "labels", "recipe", "train"]
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in doc["stages"])
    assert Path(doc["log"]).is_file() and doc["endpoint"] is None
    assert re.search(r"[✓!] train ", r.stderr)  # the person still sees the stages
    from components.registry.mlflow_registry import MlflowRegistry
    from flows.settings import Settings

    tags = MlflowRegistry(Settings().mlflow_tracking_uri).client.get_run(doc["mlflow_run_id"]).data.tags
    assert re.fullmatch(r"https?://[^/]+/.*runs/flow-run/[0-9a-f-]{36}", tags["fineship.prefect_flow_run_url"])

    bad = cli("run", "--config", "ci", "--data", str(SAMPLE), *_settings(tiny_bert), "--set", "data.max_chars=40",
              "--json")
    assert bad.exit_code == 3
    doc = json.loads(bad.stdout)
    assert doc["ok"] is False and doc["failed_at"] == "stage validate" and doc["error_type"] == "DataValidationError"
    assert "text_length" in doc["error"] and "outside 1..40" not in bad.stderr  # once: in the document


def test_a_refused_deployment_prints_its_reason_once(cli, fineship_home, tiny_package):
    from components.registry.mlflow_registry import MlflowRegistry
    from flows.settings import Settings

    registry = MlflowRegistry(Settings().mlflow_tracking_uri)
    run_id = registry.start_run("cli", "unreviewed")
    registry.log_and_register(run_id, tiny_package, "unreviewed", ["hello"], ["torch==2.13.0"],
                              {"fineship.gate": "passed"})
    r = cli("deploy", "--model", "unreviewed", "--version", "1", "--port", "0")
    assert r.exit_code == 4, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("deploy failed") and "has no signed approval" in lines[0], r.stderr
    assert "fineship approve unreviewed 1" in lines[0]  # what to do
    assert len(lines) == 2 and lines[1].strip().startswith("full log: "), r.stderr  # the reason, once; the log
    assert "has no signed approval" not in r.stdout and "Traceback" not in r.output
    assert "Traceback" in Path(lines[1].split("full log:")[1].strip()).read_text()  # the details are kept
