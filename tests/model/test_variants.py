"""Serving variants: each is built, held to the variant gate on the test split, timed; the choice is served.

One module fixture builds eager, ONNX int8 and bf16 variants of the tiny trained BERT on the sample
data's test split (TorchScript and ONNX fp32 keep their own tests in test_export.py). bf16 is built
here whatever the CPU (`bf16_native=True`): the gate path is the same, only the speed differs. The
split has 58 texts, where one disagreement is 1.7%, and the 32-wide model is coarser under int8 than
real ones, so the fixture's gate asks for 95% agreement and a 5-point drop at most; the default limits'
boundaries are tested on their own below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.errors import ExportError
from components.export.choice import (
    VariantPolicy,
    VariantReport,
    VariantResult,
    choose_backend,
    describe,
    gate_variant,
    read_report,
    report_path,
    write_report,
)
from components.export.parity import check_parity
from components.export.spec import RESULT_FILE, export_dir
from components.export.variants import TimingOptions, build_variants
from components.package import load_package
from components.serving.backends import load_backend

FAST = TimingOptions(n_texts=16, batch_sizes=(8,), seconds=0.2)
TINY_POLICY = VariantPolicy(min_agreement=0.95, max_accuracy_drop=0.05)


def _onnx_or_skip() -> None:
    from components.export.onnx import onnx_available

    if not onnx_available():
        pytest.skip("onnx, onnxscript or onnxruntime is not installed (pip install 'fineship[onnx]')")


@pytest.fixture(scope="module")
def test_split(sample_df) -> tuple[list[str], list[str]]:
    from components.data.split import split_frame

    test = split_frame(sample_df, "text", "label", 0.8, 0.1, 0.1, 42).test
    return test.text.tolist(), test.label.tolist()


@pytest.fixture(scope="module")
def built(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory, test_split) -> tuple[Path, VariantReport]:
    _onnx_or_skip()
    pkg = tmp_path_factory.mktemp("variants") / "package"
    shutil.copytree(tiny_package, pkg)
    texts, labels = test_split
    report = build_variants(pkg, texts, labels, variants=("eager", "onnx-int8", "bf16"), policy=TINY_POLICY,
                            timing=FAST, bf16_native=True)
    report = report.model_copy(update={"chosen": choose_backend(report)})
    write_report(pkg, report)  # as the deployment records it
    return pkg, report


def _with(pkg: Path, report: VariantReport, chosen: str | None, **changes: VariantResult) -> VariantReport:
    variants = [changes.get(v.name, v) for v in report.variants]
    out = report.model_copy(update={"variants": variants, "chosen": chosen})
    write_report(pkg, out)
    return out


def test_int8_and_bf16_variants_pass_the_gate_on_the_test_split_and_are_timed(built, test_split):
    pkg, report = built
    assert [v.name for v in report.variants] == ["eager", "onnx-int8", "bf16"]
    assert report.n_texts == len(test_split[0]) and report.eager_accuracy > 0.5  # the tiny model learnt something
    for v in report.variants:
        assert v.built and v.passed, v.summary()
        assert v.agreement >= 0.95 and v.accuracy_drop <= 0.05 and v.rows_per_s > 0
    parity = json.loads((export_dir(pkg, "onnx-int8") / RESULT_FILE).read_text())["parity"]
    assert parity["passed"] and parity["min_agreement"] == 0.95  # the int8 file has its own parity record
    assert not (export_dir(pkg, "bf16")).exists()  # bf16 is made from the weights at load time: no file
    int8 = load_backend(pkg, "onnx-int8")
    assert int8.backend == "onnx-int8"
    eager = load_package(pkg, device="cpu")
    agree = np.mean(int8.logits(test_split[0]).argmax(1) == eager.logits(test_split[0]).argmax(1))
    assert agree >= 0.95


def test_auto_serves_the_fastest_variant_that_passed(built):
    _, report = built
    fastest = max(report.passed(), key=lambda v: v.rows_per_s).name
    assert choose_backend(report) == fastest
    slow = report.get("eager").model_copy(update={"rows_per_s": 1.0})
    fast_but_refused = report.get("onnx-int8").model_copy(update={"passed": False, "rows_per_s": None,
                                                                  "reason": "accuracy drop"})
    bf16 = report.get("bf16").model_copy(update={"rows_per_s": 2.0})
    changed = report.model_copy(update={"variants": [slow, fast_but_refused, bf16]})
    assert choose_backend(changed) == "bf16"
    assert choose_backend(changed, "eager") == "eager"
    with pytest.raises(ExportError, match="'onnx-int8' is refused: refused: accuracy drop.*auto picks"):
        choose_backend(changed, "onnx-int8")
    with pytest.raises(ExportError, match="'torchscript' was requested but not built"):
        choose_backend(changed, "torchscript")


def test_the_recorded_choice_is_what_the_server_and_the_sagemaker_handler_load(built, monkeypatch):
    from components.serving import inference

    pkg, report = built
    _with(pkg, report, "onnx-int8")
    monkeypatch.delenv("FINESHIP_BACKEND", raising=False)
    assert load_backend(pkg, "auto").backend == "onnx-int8"
    assert inference.model_fn(str(pkg)).backend == "onnx-int8"
    monkeypatch.setenv("FINESHIP_BACKEND", "bf16")  # the operator's override still wins
    assert inference.model_fn(str(pkg)).backend == "bf16"
    report_path(pkg).unlink()
    monkeypatch.delenv("FINESHIP_BACKEND")
    assert getattr(load_backend(pkg, "auto"), "backend", "eager") == "eager"  # nothing recorded: eager


def test_a_variant_that_failed_its_gate_or_was_never_gated_is_not_served(built):
    pkg, report = built
    failed = report.get("onnx-int8").model_copy(update={"passed": False, "reason": "accuracy 0.80 is 2.00 points"})
    _with(pkg, report, "eager", **{"onnx-int8": failed})
    with pytest.raises(ExportError, match="'onnx-int8'.*did not pass the variant gate.*2.00 points"):
        load_backend(pkg, "onnx-int8")  # its parity.json passed; the gate's verdict still refuses it
    assert load_backend(pkg, "bf16").backend == "bf16"  # positive control: the same report, a passed variant
    stale = report.model_copy(update={"package_sha256": "0" * 64, "chosen": "bf16"})
    write_report(pkg, stale)
    with pytest.raises(ExportError, match="made for other weights"):
        load_backend(pkg, "auto")
    report_path(pkg).unlink()
    for backend in ("bf16", "onnx-int8"):  # not exact: never served without a gate record
        with pytest.raises(ExportError, match="never gated"):
            load_backend(pkg, backend)
    write_report(pkg, report)


def test_an_int8_file_changed_after_its_check_is_refused(built, tmp_path: Path):
    pkg, report = built
    copy = tmp_path / "package"
    shutil.copytree(pkg, copy)
    write_report(copy, report)
    assert load_backend(copy, "onnx-int8").backend == "onnx-int8"
    model = export_dir(copy, "onnx-int8") / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ExportError, match="changed after their parity check"):
        load_backend(copy, "onnx-int8")


def test_a_degraded_variant_is_refused_by_the_gate_and_never_chosen(built, test_split, monkeypatch):
    import torch

    import components.export.variants as variants

    pkg, _ = built
    real = variants.load_bf16

    def degraded(package_dir):  # a bf16 cast gone wrong: the classifier head loses its sign
        clf = real(package_dir)
        with torch.no_grad():
            for p in clf.model.classifier.parameters():
                p.mul_(-1)
        return clf

    monkeypatch.setattr(variants, "load_bf16", degraded)
    texts, labels = test_split
    report = build_variants(pkg, texts, labels, variants=("eager", "bf16"), timing=None, bf16_native=True)
    bf16 = report.get("bf16")
    assert bf16.built and not bf16.passed and bf16.rows_per_s is None
    assert "floor" in bf16.reason and "points under" in bf16.reason
    assert choose_backend(report) == "eager"
    assert describe(report)["fineship.serving.bf16"].startswith("refused:")


def test_without_a_test_split_only_eager_is_served(built):
    pkg, _ = built
    report = build_variants(pkg, [], [], variants=("eager", "onnx-int8"), timing=FAST)
    assert report.n_texts == 0 and [v.name for v in report.passed()] == ["eager"]
    assert report.get("onnx-int8").reason == "no test split recorded with the version to gate it on"
    with pytest.raises(ExportError, match="'onnx-int8' is refused: not built"):
        choose_backend(report, "onnx-int8")
    assert choose_backend(report) == "eager"


def test_bf16_is_not_built_on_a_cpu_without_native_bf16(built, test_split):
    pkg, _ = built
    report = build_variants(pkg, test_split[0][:8], test_split[1][:8], variants=("bf16",), timing=None,
                            bf16_native=False)
    assert not report.get("bf16").built and "no native bf16" in report.get("bf16").reason


# -- pure: the gate's boundaries, the int8 parity floor, the archive -----------------------------------------

@pytest.mark.parametrize(("agreement", "accuracy", "passes"), [
    (0.995, 0.900, True),    # agreement equal to the floor passes
    (0.9949, 0.900, False),  # just under it fails
    (1.0, 0.895, True),      # a drop of exactly 0.5 points passes
    (1.0, 0.8949, False),    # just over fails
    (1.0, 0.950, True),      # better than eager passes
])
def test_the_variant_gate_boundaries(agreement: float, accuracy: float, passes: bool):
    assert (gate_variant(agreement, accuracy, 0.900, VariantPolicy()) == []) is passes


def test_the_int8_parity_check_holds_a_floor_on_agreement_not_a_logit_tolerance():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 3))

    def tokenize(texts):
        idx = np.array([[int(t)] for t in texts])
        return idx, np.ones_like(idx)

    def reference(ids, mask):
        return logits[ids[:, 0]]

    def close(ids, mask):  # quantisation noise: logits move, labels do not
        return reference(ids, mask) * 0.9

    def flips(ids, mask):  # 1% of labels change
        out = reference(ids, mask).copy()
        out[ids[:, 0] % 100 == 0] *= -1
        return out

    texts, labels = [str(i) for i in range(400)], ["a", "b", "c"]
    ok = check_parity("onnx-int8", tokenize, reference, close, texts, labels, (8,), float("inf"), 0.995)
    assert ok.passed and ok.max_abs_diff > 1e-4
    bad = check_parity("onnx-int8", tokenize, reference, flips, texts, labels, (8,), float("inf"), 0.995)
    assert not bad.passed and "at most 0.50% allowed" in bad.reasons()[0]
    nan = check_parity("onnx-int8", tokenize, reference, lambda i, m: reference(i, m) * np.nan, texts, labels, (8,),
                       float("inf"), 0.0)
    assert not nan.passed


def test_the_archive_carries_the_passed_variants_and_the_choice(tmp_path: Path):
    from components.deploy.package_tar import build_model_archive

    pkg = tmp_path / "pkg"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "fineship.json",
                 "export/torchscript/model.pt", "export/torchscript/parity.json",
                 "export/onnx/model.onnx", "export/onnx-int8/model.onnx", "export/onnx-int8/parity.json"):
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_bytes(name.encode())
    passed = {"built": True, "passed": True, "agreement": 1.0, "accuracy": 0.9, "accuracy_drop": 0.0}
    report = VariantReport(package_sha256="x", n_texts=10, variants=[
        VariantResult(name="eager", rows_per_s=10, **passed),
        VariantResult(name="torchscript", built=True, passed=False, reason="parity check failed"),
        VariantResult(name="onnx-int8", rows_per_s=30, **passed)], chosen="onnx-int8")
    write_report(pkg, report)
    archive = build_model_archive(pkg, tmp_path / "model.tar.gz", {"git_commit": "abc"})
    exports = [m for m in archive.members if m.startswith("export/")]
    assert exports == ["export/onnx-int8/model.onnx", "export/onnx-int8/parity.json", "export/variants.json"]
    assert archive.backend == "onnx-int8" and any(r.startswith("onnxruntime==") for r in archive.requirements)
    assert read_report(pkg).chosen == "onnx-int8"
    report_path(pkg).unlink()  # no report: every export ships, as before variants existed
    legacy = build_model_archive(pkg, tmp_path / "legacy.tar.gz", {"git_commit": "abc"})
    assert "export/torchscript/model.pt" in legacy.members and legacy.backend is None
