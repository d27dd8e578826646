"""Which serving variant of a package a server runs: the variant report, the gate, the choice.

The deployment builds a package's serving variants (`components.export.variants`), holds each to the
variant gate on the registered version's test split and records the result, with the backend it chose,
as `<package>/export/variants.json` (`VariantReport`). This module is what a server needs of that
record, and nothing heavier: servers and the SageMaker handler import it (it is vendored into
`model.tar.gz`), so it imports no training or deployment code.

Variants: `eager` (the package's model), `torchscript`, `onnx` (exact exports, see
`components.export`), `onnx-int8` (the ONNX graph with dynamic int8 quantisation) and `bf16` (the
eager model cast to bfloat16, built only on CPUs with native bf16: nothing is written for it, it is
made from the verified weights when the server loads).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field

from components.config import DEFAULT_VARIANTS, Variant  # noqa: F401  (DEFAULT_VARIANTS re-exported)
from components.errors import ExportError
from components.export.spec import EXPORT_ROOT, package_weights_sha256
from components.package import TextClassifier, load_package

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = get_args(Variant)
"""Every serving variant, in the order they are built (and preferred on equal speed)."""
AUTO = "auto"
REPORT_FILE = "variants.json"


class VariantPolicy(BaseModel):
    """The variant gate: how close to the eager model a variant must stay on the test split to be served."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_agreement: float = Field(0.995, ge=0, le=1, description="Share of test texts on which the variant must "
                                 "predict the eager model's label (equal to the floor passes).")
    max_accuracy_drop: float = Field(0.005, ge=0, le=1, description="Largest accuracy drop against the eager model "
                                     "on the test split, as a fraction (0.005 = 0.5 points; equal passes).")


class VariantResult(BaseModel):
    """One variant: was it built, did it pass the gate (and by how much), how fast is it here."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    name: str
    built: bool
    passed: bool
    agreement: float | None = Field(None, description="Share of test texts with the eager model's label.")
    accuracy: float | None = Field(None, description="Accuracy on the test split's labels.")
    accuracy_drop: float | None = Field(None, description="Eager accuracy minus this variant's (fraction).")
    rows_per_s: float | None = Field(None, description="Texts per second on this machine (passed variants only).")
    reason: str | None = Field(None, description="Why it was not built or failed the gate.")

    def summary(self) -> str:
        """One line for tags and logs."""
        if not self.built:
            return f"not built: {self.reason}"
        numbers = (f"agreement {self.agreement:.2%}, accuracy {self.accuracy:.4f} "
                   f"(drop {100 * (self.accuracy_drop or 0):+.2f} pts)") if self.agreement is not None else ""
        if not self.passed:
            return f"refused: {self.reason}" + (f"; {numbers}" if numbers else "")
        speed = f", {self.rows_per_s:.1f} rows/s" if self.rows_per_s is not None else ""
        return f"passed: {numbers}{speed}"


class VariantReport(BaseModel):
    """Every variant of one package, gated on one test split and timed on one machine, and the backend chosen."""

    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")

    package_sha256: str = Field(description="Hash of the package weights the variants were built from.")
    n_texts: int = Field(description="Test texts the gate ran on (0: none recorded, only eager is served).")
    eager_accuracy: float | None = None
    policy: VariantPolicy = VariantPolicy()
    variants: list[VariantResult]
    machine: str = Field("", description="Where the timings were measured (CPU, cores, threads).")
    requested: str = AUTO
    chosen: str | None = Field(None, description="The backend the deployment serves (`choose_backend`).")
    created_at: float = Field(default_factory=time.time)

    def get(self, name: str) -> VariantResult | None:
        return next((v for v in self.variants if v.name == name), None)

    def passed(self) -> list[VariantResult]:
        return [v for v in self.variants if v.passed]


def gate_variant(agreement: float, accuracy: float, eager_accuracy: float,
                 policy: VariantPolicy = VariantPolicy()) -> list[str]:
    """Why a variant fails the gate (empty: it passes). Equal to a limit passes on both sides.

    `agreement`: share of test texts on which the variant predicts the eager model's label; accuracies
    on the test split's labels, as fractions.
    """
    reasons = []
    slack = 1e-9  # 0.9 - 0.895 is 0.0050000000000000044 in floating point: a drop equal to the limit passes
    if agreement < policy.min_agreement - slack:
        reasons.append(f"agrees with the eager model on {agreement:.2%} of test texts, under the "
                       f"{policy.min_agreement:.2%} floor")
    drop = eager_accuracy - accuracy
    if drop > policy.max_accuracy_drop + slack:
        reasons.append(f"accuracy {accuracy:.4f} is {100 * drop:.2f} points under the eager model's "
                       f"{eager_accuracy:.4f} (at most {100 * policy.max_accuracy_drop:.2f} allowed)")
    return reasons


def choose_backend(report: VariantReport, requested: str = AUTO) -> str:
    """The backend to serve: with `auto`, the fastest variant that passed; otherwise `requested`, if it passed.

    Eager is the fallback of `auto` (it always passes: it is the reference). A requested variant that was
    not built or failed its gate raises `ExportError` saying why and what to do.
    """
    if requested == AUTO:
        timed = [v for v in report.passed() if v.rows_per_s is not None]
        if not timed:
            return "eager"
        order = {name: i for i, name in enumerate(VARIANTS)}
        return max(timed, key=lambda v: (v.rows_per_s, -order.get(v.name, len(order)))).name
    if requested not in VARIANTS:
        raise ExportError(f"unknown backend {requested!r}; use auto or one of {', '.join(VARIANTS)}")
    if requested == "eager":
        return requested
    result = report.get(requested)
    if result is None:
        raise ExportError(f"backend {requested!r} was requested but not built for this deployment; add it to "
                          "deploy.variants or use backend auto")
    if not result.passed:
        raise ExportError(f"backend {requested!r} is refused: {result.summary()}; serve another backend "
                          f"(auto picks the fastest that passed: "
                          f"{', '.join(v.name for v in report.passed()) or 'eager'})")
    return requested


def report_path(package_dir: str | Path) -> Path:
    """`<package>/export/variants.json`."""
    return Path(package_dir) / EXPORT_ROOT / REPORT_FILE


def write_report(package_dir: str | Path, report: VariantReport) -> Path:
    path = report_path(package_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return path


def read_report(package_dir: str | Path) -> VariantReport | None:
    """The package's variant report, or None when its variants were never built."""
    path = report_path(package_dir)
    if not path.is_file():
        return None
    try:
        return VariantReport.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ExportError(f"{path} is not a variant report ({str(err)[:300]}); redeploy to rebuild it") from None


def resolve_backend(package_dir: str | Path, backend: str) -> str:
    """`backend`, or for `auto` the backend recorded in the package's variant report (eager when none)."""
    if backend != AUTO:
        return backend
    report = read_report(package_dir)
    return report.chosen if report is not None and report.chosen else "eager"


def require_gated(package_dir: str | Path, backend: str) -> None:
    """Refuse a non-eager backend that the package's variant report shows failed (or never took) the gate.

    Without a report, an exact export still loads on its parity report alone (`load_export`); bf16 and
    int8, which are not exact, need the gate. The report must be about the package's current weights.
    """
    if backend == "eager":
        return
    report = read_report(package_dir)
    if report is None:
        if backend in ("bf16", "onnx-int8"):
            raise ExportError(f"backend {backend!r} was never gated for {package_dir} (no {report_path(package_dir)}); "
                              "deploy it through the deployment flow, which builds and gates the variants")
        return
    if report.package_sha256 != package_weights_sha256(package_dir):
        raise ExportError(f"{report_path(package_dir)} was made for other weights than the package holds; "
                          "redeploy to rebuild the variants")
    result = report.get(backend)
    if result is None or not result.passed:
        why = result.summary() if result is not None else "not built"
        raise ExportError(f"backend {backend!r} of {package_dir} did not pass the variant gate ({why}); serve "
                          f"one that did: {', '.join(v.name for v in report.passed())}")


def load_bf16(package_dir: str | Path) -> TextClassifier:
    """The package's eager model cast to bfloat16 on the CPU (built from the package's weights at load time)."""
    import torch

    clf = load_package(package_dir, device="cpu")
    clf.model.to(torch.bfloat16)
    clf.backend = "bf16"  # type: ignore[attr-defined]  # reported by the server's /ping
    return clf


def machine_description() -> str:
    """CPU model, cores and torch threads: where a report's timings hold."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}; {os.cpu_count()} cores; torch threads {torch.get_num_threads()}"


def describe(report: VariantReport) -> dict[str, Any]:
    """Version tags mirroring the report (for people: tags authorise nothing)."""
    tags = {"fineship.serving.backend": report.chosen or "", "fineship.serving.requested": report.requested,
            "fineship.serving.machine": report.machine[:250]}
    tags |= {f"fineship.serving.{v.name}": v.summary()[:500] for v in report.variants}
    return tags
