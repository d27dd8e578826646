"""Build a package's serving variants, gate each on the test split, time each on this machine.

`build_variants` makes every variant under the package's `export/` directory (exact exports checked
for parity in a fresh process, int8 held to argmax agreement), then scores each against the eager
model on the registered version's test split: label agreement with eager and accuracy drop
(`choice.gate_variant`). Variants that pass are timed together, taking turns, on a sample of the test
texts at the server's batch sizes (a short, bounded measurement). `choice.choose_backend` then picks what to serve, and
`choice.write_report` records it beside the exports, where the server and the SageMaker handler read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.errors import ExportError, ModelPackageError
from components.export.choice import (
    DEFAULT_VARIANTS,
    VARIANTS,
    VariantPolicy,
    VariantReport,
    VariantResult,
    gate_variant,
    load_bf16,
    machine_description,
)
from components.export.spec import package_weights_sha256
from components.package import TextClassifier, load_package
from components.training.trainer import cpu_has_native_bf16

log = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]  # so the timing process imports this very `components`


class TimingOptions(BaseModel):
    """How each passed variant is timed: a sample of test texts at the server's batch sizes, within a budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_texts: int = Field(64, ge=1, description="Test texts per timed pass (cycled when the split is smaller).")
    batch_sizes: tuple[int, ...] = Field((8, 32), description="Batch sizes timed (the server's max_batch is 32).")
    seconds: float = Field(3.0, gt=0, description="Time budget per variant; at least one pass per batch size.")
    max_gate_texts: int = Field(512, ge=1, description="Test texts the gate scores at most.")


def _accuracy(logits: np.ndarray, labels: Sequence[str], names: Sequence[str]) -> float:
    predicted = [names[i] for i in logits.argmax(axis=1)]
    return float(np.mean([p == t for p, t in zip(predicted, labels)]))


def rows_per_second(classifiers: dict[str, TextClassifier], texts: Sequence[str],
                    options: TimingOptions = TimingOptions()) -> dict[str, float]:
    """Texts per second of each classifier on `texts` (cycled to `n_texts`) at the timing's batch sizes.

    The classifiers take turns, round after round (one pass per batch size each, after a warm-up pass),
    so load from other processes on the machine falls on all of them alike; rounds repeat while the
    budget (`seconds` per classifier) lasts, at least one. Each figure is the median over rounds of
    texts over time.
    """
    sample = (list(texts) * (1 + options.n_texts // max(1, len(texts))))[: options.n_texts]
    for clf in classifiers.values():  # warm-up: first-call allocation, TorchScript's profiling runs
        for bs in options.batch_sizes:
            clf.logits(sample, batch_size=bs)
    rates: dict[str, list[float]] = {name: [] for name in classifiers}
    deadline = time.perf_counter() + options.seconds * len(classifiers)
    while True:
        for name, clf in classifiers.items():
            start = time.perf_counter()
            for bs in options.batch_sizes:
                clf.logits(sample, batch_size=bs)
            elapsed = time.perf_counter() - start
            rates[name].append(len(sample) * len(options.batch_sizes) / elapsed if elapsed > 0 else float("inf"))
        if time.perf_counter() >= deadline:
            break
    return {name: float(np.median(r)) for name, r in rates.items()}


def _build(package_dir: Path, name: str, texts: Sequence[str], bf16_native: bool,
           policy: VariantPolicy) -> TextClassifier:
    """Make variant `name` (exports are checked for parity) and load it as a server would; `ExportError` if not.

    onnx-int8 quantises the ONNX graph (exported first when the package has none from these weights); its
    parity check asks for the gate's agreement floor at every batch size (dynamic quantisation scales
    activations per batch, so its answers can depend on which texts share a batch).
    """
    from components.export import export_package
    from components.export.runtime import load_export

    if name == "eager":
        return load_package(package_dir, device="cpu")
    if name == "bf16":
        if not bf16_native:
            raise ExportError("this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is slower than fp32")
        return load_bf16(package_dir)
    result = export_package(package_dir, name, texts, latency=False, raise_on_failure=False,
                            min_agreement=policy.min_agreement)
    if not result.passed:
        raise ExportError("parity check failed: " + "; ".join(result.parity.reasons()[:2]))
    return load_export(package_dir, name)


def build_variants(package_dir: str | Path, texts: Sequence[str], labels: Sequence[str],
                   variants: Sequence[str] = DEFAULT_VARIANTS, policy: VariantPolicy = VariantPolicy(),
                   timing: TimingOptions | None = TimingOptions(), bf16_native: bool | None = None) -> VariantReport:
    """Build, gate and time each of `variants` of the package on the test split (`texts`, `labels`).

    Eager is always included (it is the reference). Without test texts only eager is served: the
    others are reported as not built. `bf16_native` (default: detected) says whether this CPU has
    native bf16; bf16 is built only where it does. A variant that cannot be built or fails the gate is
    reported with the reason and never raises; the report's `chosen` is left for `choose_backend`.
    `timing` None skips the timing (nothing is timed, so `auto` would serve eager).
    """
    pkg = Path(package_dir)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ExportError(f"unknown variant(s) {', '.join(unknown)}; use {', '.join(VARIANTS)}")
    if len(texts) != len(labels):
        raise ExportError(f"{len(texts)} test texts but {len(labels)} labels; pass the test split's pairs")
    limit = (timing or TimingOptions()).max_gate_texts
    texts, labels = list(texts)[:limit], list(labels)[:limit]
    native = cpu_has_native_bf16() if bf16_native is None else bf16_native
    eager = load_package(pkg, device="cpu")
    results: list[VariantResult] = []
    eager_logits = eager.logits(texts) if texts else None
    eager_accuracy = _accuracy(eager_logits, labels, eager.labels) if texts else None
    wanted = ["eager"] + [v for v in VARIANTS if v in variants and v != "eager"]
    passed: list[str] = []  # timed afterwards, together, in a fresh process
    for name in wanted:
        started = time.perf_counter()
        if not texts and name != "eager":
            result = VariantResult(name=name, built=False, passed=False,
                                   reason="no test split recorded with the version to gate it on")
        else:
            result = _gate_one(pkg, name, texts, labels, eager, eager_logits, eager_accuracy, policy, native)
            if result.passed and texts:
                passed.append(name)
        log.info("variant %s: %s (%.1f s)", name, result.summary(), time.perf_counter() - started)
        results.append(result)
    if passed and timing is not None:
        try:
            speeds = time_as_served(pkg, passed, texts, timing)
        except ExportError as err:  # untimed variants are not chosen by auto: eager serves
            log.warning("%s; auto will serve eager", err)
            speeds = {}
        results = [r.model_copy(update={"rows_per_s": speeds[r.name]}) if r.name in speeds else r for r in results]
    return VariantReport(package_sha256=package_weights_sha256(pkg), n_texts=len(texts),
                         eager_accuracy=eager_accuracy, policy=policy, variants=results,
                         machine=machine_description())


def _gate_one(pkg: Path, name: str, texts: list[str], labels: list[str], eager: TextClassifier,
              eager_logits: np.ndarray | None, eager_accuracy: float | None, policy: VariantPolicy,
              native: bool) -> VariantResult:
    """Build one variant and score it against eager (its result without speed)."""
    try:
        clf = eager if name == "eager" else _build(pkg, name, texts, native, policy)
    except (ExportError, ModelPackageError, ImportError, RuntimeError) as err:
        return VariantResult(name=name, built=False, passed=False, reason=str(err)[:1000])
    if eager_logits is None or eager_accuracy is None:  # eager without a test split: served, not timed
        return VariantResult(name=name, built=True, passed=True, reason="no test split: not gated or timed")
    try:
        logits = eager_logits if clf is eager else clf.logits(texts)
    except (RuntimeError, ValueError) as err:  # a runtime that fails on real inputs fails the gate
        return VariantResult(name=name, built=True, passed=False, reason=f"failed on the test texts: {err}"[:1000])
    finite = bool(np.isfinite(logits).all())
    agreement = float(np.mean(logits.argmax(axis=1) == eager_logits.argmax(axis=1)))
    accuracy = _accuracy(logits, labels, eager.labels)
    reasons = gate_variant(agreement, accuracy, eager_accuracy, policy)
    if not finite:
        reasons.insert(0, "produced non-finite logits (NaN or inf)")
    return VariantResult(name=name, built=True, passed=not reasons, agreement=agreement, accuracy=accuracy,
                         accuracy_drop=eager_accuracy - accuracy, reason="; ".join(reasons) or None)


def _load_variant(package_dir: Path, name: str) -> TextClassifier:
    """A built variant as the server loads it (exports only with their passing parity record)."""
    from components.export.runtime import load_export

    if name == "eager":
        return load_package(package_dir, device="cpu")
    if name == "bf16":
        return load_bf16(package_dir)
    return load_export(package_dir, name)


def time_as_served(package_dir: str | Path, names: Sequence[str], texts: Sequence[str],
                   timing: TimingOptions = TimingOptions(), timeout: float = 900) -> dict[str, float]:
    """`rows_per_second` of the variants `names`, measured in a fresh process set up as the server sets itself up.

    The server starts with `OMP_WAIT_POLICY=PASSIVE` (torch's idle OpenMP threads sleep instead of spinning),
    which only takes effect before torch loads; on a busy 2-core machine spinning threads made eager look
    5x slower than it serves (measured), so the timing cannot run in this process, which has torch loaded.
    """
    with tempfile.TemporaryDirectory(prefix="fineship-timing-") as tmp:
        texts_file, out_file = Path(tmp) / "texts.json", Path(tmp) / "speeds.json"
        texts_file.write_text(json.dumps(list(texts)), encoding="utf-8")
        cmd = [sys.executable, "-m", "components.export.variants", "--package", str(Path(package_dir).resolve()),
               "--variants", ",".join(names), "--texts", str(texts_file), "--out", str(out_file),
               "--timing", timing.model_dump_json()]
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ExportError(f"timing the serving variants took over {timeout:g} s; lower the timing budget") from None
        if proc.returncode != 0 or not out_file.is_file():
            raise ExportError(f"timing the serving variants of {package_dir} failed (exit {proc.returncode}): "
                              f"{proc.stderr.strip()[-2000:]}")
        return {k: float(v) for k, v in json.loads(out_file.read_text(encoding="utf-8")).items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time a package's built variants (run by `time_as_served`).")
    parser.add_argument("--package", required=True)
    parser.add_argument("--variants", required=True, help="comma-separated variant names")
    parser.add_argument("--texts", required=True, help="JSON file with a list of texts")
    parser.add_argument("--out", required=True, help="where to write {variant: rows per second}")
    parser.add_argument("--timing", default=TimingOptions().model_dump_json(), help="TimingOptions as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pkg = Path(args.package)
    classifiers = {name: _load_variant(pkg, name) for name in args.variants.split(",")}
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    speeds = rows_per_second(classifiers, texts, TimingOptions.model_validate_json(args.timing))
    Path(args.out).write_text(json.dumps(speeds), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
