"""`model.tar.gz` for SageMaker: the model package at the root, the inference handler under `code/`.

Layout (what the SageMaker PyTorch inference container expects when `SAGEMAKER_PROGRAM` is
`inference.py` and `SAGEMAKER_SUBMIT_DIRECTORY` is `/opt/ml/model/code`)::

    config.json, model.safetensors, tokenizer files, fineship.json   the model package, unchanged
    export/<kind>/...                                               serving variants that passed their gate
    export/variants.json                                            the variant report and the chosen backend
    code/inference.py                                               components/serving/inference.py
    code/components/...                                             the fineship modules it imports
    code/requirements.txt                                           pinned runtime libraries
    code/fineship-build.json                                        the git commit of that code

`inference.py` imports `components.*` with absolute imports; the container puts `code/` on
`sys.path`, so the vendored modules under `code/components/` are what it runs, and nothing needs
fineship to be installed from an index. The archive is deterministic (sorted entries, zero
mtimes and owners, gzip without a timestamp): the same package gives the same bytes, so its
SHA-256 can name the S3 object and a re-upload of identical content can be skipped.

Exports are not among the approved files: the deployment builds them from the verified package files
(`components.export.variants`) and each is pinned to those weights by hash (`runtime.load_export`).
When the package has a variant report, only the variants that passed its gate go in, and the handler
serves the recorded choice (`FINESHIP_BACKEND` overrides it); onnxruntime joins the requirements when
an ONNX variant ships.

With `expected_files` (the approval signature's file digests), every package file is hashed as it is
written into the tar, from the very bytes that go in, so what ships is what was approved: a changed,
added or missing file stops the build with a `DeploymentStepError` naming it.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from components.errors import DeploymentError, DeploymentStepError
from components.export.choice import REPORT_FILE, read_report
from components.provenance import pinned_requirements

COMPONENTS_DIR = Path(__file__).resolve().parents[1]
HANDLER = COMPONENTS_DIR / "serving" / "inference.py"
EXPORT_DIR = "export"
CODE_DIR = "code"
BUILD_STEP = "build-archive"  # the deployer's step name (components.deploy.sagemaker.settings.BUILD)
# Written next to the package files by the review; an approval signs every file but this one.
SIGNATURE_FILE = "fineship.signature.json"
# What the handler needs beyond the container's own torch and numpy, pinned to the versions the
# local predictions (and the smoke test's expectations) were computed with. torch is not pinned:
# the official image ships it, and a pin would pull a multi-GB wheel at every container start.
RUNTIME_PACKAGES = ("transformers", "tokenizers", "safetensors", "pydantic")
ONNX_RUNTIME_PACKAGES = ("onnxruntime",)  # added when an ONNX variant ships


class ModelArchive(BaseModel):
    """A built `model.tar.gz`."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    size_bytes: int
    unpacked_bytes: int
    members: list[str]
    has_export: bool
    requirements: list[str]
    backend: str | None = None  # the backend recorded in export/variants.json (the handler's default)


def runtime_requirements(onnx: bool = False) -> list[str]:
    """`code/requirements.txt` lines: each runtime library pinned to the installed version (with `onnx`,
    ONNX Runtime too)."""
    return pinned_requirements(RUNTIME_PACKAGES + (ONNX_RUNTIME_PACKAGES if onnx else ()))


def _module_file(dotted: str) -> Path | None:
    rel = Path(*dotted.split(".")[1:])
    for candidate in (COMPONENTS_DIR / rel.with_suffix(".py"), COMPONENTS_DIR / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _components_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "components")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "components":
            names.add(node.module)
            # `from components.serving import handler` names a module, not an attribute
            names.update(f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}"))
    return names


def handler_modules() -> list[Path]:
    """Every `components` file the handler imports, directly or not (also inside functions, such as the
    export runtime behind `FINESHIP_BACKEND`), with the package `__init__`s and what they import."""
    seen: set[Path] = set()
    todo = [HANDLER]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for dotted in _components_imports(path):
            f = _module_file(dotted)
            if f is None:
                raise DeploymentError(f"{path.name} imports {dotted}, which is not a file under components/")
            todo.append(f)
        for parent in path.relative_to(COMPONENTS_DIR).parents:  # importing a module runs its packages' __init__
            init = COMPONENTS_DIR / parent / "__init__.py"
            if init.is_file():
                todo.append(init)
    return sorted(seen)


def find_export_dir(package_dir: str | Path) -> Path | None:
    """The package's `export/` directory (TorchScript/ONNX exports, see `components.export`), or None."""
    candidate = Path(package_dir) / EXPORT_DIR
    return candidate if candidate.is_dir() and any(candidate.iterdir()) else None


def package_files(package_dir: str | Path) -> list[tuple[str, Path]]:
    """(archive name, file) for every file of the package, its `export/` directory included; with a variant
    report there, only the variants that passed the gate (and the report)."""
    root = Path(package_dir)
    report = read_report(root)
    shipped = None if report is None else {v.name for v in report.passed()}

    def ships(name: str) -> bool:
        if name.startswith(f"{CODE_DIR}/"):
            return False
        if shipped is None or not name.startswith(f"{EXPORT_DIR}/"):
            return True
        parts = name.split("/")
        return name == f"{EXPORT_DIR}/{REPORT_FILE}" or (len(parts) > 2 and parts[1] in shipped)

    return [(f.relative_to(root).as_posix(), f) for f in sorted(root.rglob("*"))
            if f.is_file() and ships(f.relative_to(root).as_posix())]


def package_size_bytes(package_dir: str | Path) -> int:
    """Bytes of the package files (weights, tokenizer, exports) as they will be unpacked."""
    return sum(f.stat().st_size for _, f in package_files(package_dir))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def in_approved_set(name: str) -> bool:
    """Whether an archive member is one of the package files an approval lists: not the exports under
    `export/` (made at deploy time), not `code/`, not the signature file itself."""
    return not (name.startswith((f"{EXPORT_DIR}/", f"{CODE_DIR}/")) or name == SIGNATURE_FILE)


def _approved_bytes(name: str, data: bytes, expected: Mapping[str, str], package_dir: str | Path) -> None:
    if name not in expected:
        raise DeploymentStepError(f"{name} in {package_dir} is not among the approved files: the package changed "
                                  "after the approval; deploy the package exactly as approved or approve it again",
                                  BUILD_STEP)
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected[name]:
        raise DeploymentStepError(f"{name} in {package_dir} differs from the approved file (sha256 {digest[:16]}..., "
                                  f"approved {expected[name][:16]}...): the package changed after the approval; "
                                  "deploy the package exactly as approved or approve it again", BUILD_STEP)


def build_model_archive(package_dir: str | Path, out_path: str | Path, manifest: dict[str, str],
                        expected_files: Mapping[str, str] | None = None) -> ModelArchive:
    """Write `model.tar.gz` for `package_dir` to `out_path` (deterministic bytes for the same inputs).

    `expected_files` (relative POSIX path -> SHA-256 hex of every package file, as the approval signature
    lists them): each package file is checked against it from the bytes written into the tar, and the
    package's files (without `export/`, `code/` and the signature file) must be exactly its files; any
    difference raises `DeploymentStepError` naming the file.
    """
    files = package_files(package_dir)
    if not files:
        raise DeploymentError(f"{package_dir} holds no files to package")
    report = read_report(package_dir)
    onnx = any(name.startswith(f"{EXPORT_DIR}/onnx") for name, _ in files)
    requirements = runtime_requirements(onnx)
    entries: list[tuple[str, bytes]] = []
    for name, f in files:
        data = f.read_bytes()  # read once: the bytes checked are the bytes written
        if expected_files is not None and in_approved_set(name):
            _approved_bytes(name, data, expected_files, package_dir)
        entries.append((name, data))
    if expected_files is not None:
        written = {name for name, _ in entries}
        missing = sorted(n for n in expected_files if in_approved_set(n) and n not in written)
        if missing:
            raise DeploymentStepError(f"approved file(s) {', '.join(missing)} missing from {package_dir}: deploy the "
                                      "package exactly as approved or approve it again", BUILD_STEP)
    entries.append(("code/inference.py", HANDLER.read_bytes()))
    entries += [(f"code/components/{f.relative_to(COMPONENTS_DIR).as_posix()}", f.read_bytes())
                for f in handler_modules()]
    entries.append(("code/requirements.txt", ("\n".join(requirements) + "\n").encode()))
    entries.append(("code/fineship-build.json", json.dumps(manifest, indent=2, sort_keys=True).encode()))
    entries.sort(key=lambda e: e[0])

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            _add(tar, name, data)
    with open(out, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    blob = out.read_bytes()
    return ModelArchive(path=str(out), sha256=hashlib.sha256(blob).hexdigest(), size_bytes=len(blob),
                        unpacked_bytes=sum(len(d) for _, d in entries), members=[n for n, _ in entries],
                        has_export=any(n.startswith(f"{EXPORT_DIR}/") for n, _ in entries),
                        requirements=requirements, backend=report.chosen if report is not None else None)
