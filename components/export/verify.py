"""The parity gate, run in a fresh process that loads the package and its export from disk.

A fresh process is the honest test: it sees only what was saved (no module or weight left over in
the exporting process's memory), as a server will. `python -m components.export.verify` is that
process; `verify_export` starts it and turns its verdict into an `ExportResult` or an `ExportError`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from components.errors import ExportError
from components.export.parity import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_TOLERANCE,
    LatencyRow,
    ParityReport,
    check_parity,
    length_variants,
    measure_latency,
    require_parity,
)
from components.export.spec import EXPORT_KINDS, RESULT_FILE, ExportResult, export_dir, read_spec

log = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[2]  # so the child imports this very `components`


def run_check(package_dir: str | Path, kind: str, texts: Sequence[str],
              batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, tolerance: float = DEFAULT_TOLERANCE,
              latency: bool = True, min_agreement: float = 1.0) -> tuple[ParityReport, list[LatencyRow]]:
    """Load the package and its `kind` export in this process; compare them on `texts` (+ length variants)."""
    import torch

    from components.export.runtime import open_runner
    from components.package import forward_logits, load_package, preprocess

    clf = load_package(package_dir, device="cpu")
    runner = open_runner(export_dir(package_dir, kind), read_spec(export_dir(package_dir, kind)))

    def tokenize(batch: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = clf.tokenizer(preprocess(batch, clf.meta), padding=True, truncation=True,
                            max_length=clf.meta.max_length, return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)

    def eager(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return forward_logits(clf.model, torch.from_numpy(input_ids),
                                  torch.from_numpy(attention_mask)).float().numpy()

    checked = list(texts) + length_variants(texts, clf.meta.max_length)
    report = check_parity(kind, tokenize, eager, runner, checked, clf.labels, batch_sizes, tolerance, min_agreement)
    table = measure_latency(tokenize, eager, runner, texts, batch_sizes) if latency and report.passed else []
    return report, table


def verify_export(package_dir: str | Path, kind: str, texts: Sequence[str],
                  batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, tolerance: float = DEFAULT_TOLERANCE,
                  latency: bool = True, raise_on_failure: bool = True, timeout: float = 1800,
                  min_agreement: float = 1.0) -> ExportResult:
    """Check the package's `kind` export in a fresh process; write `parity.json` beside it.

    Raises `ExportError` (with the `ExportResult` attached) when the export disagrees with the
    package, unless `raise_on_failure` is False; `runtime.load_export` refuses it either way.
    """
    d = export_dir(package_dir, kind)
    read_spec(d)  # fails early, naming the file, when there is no export to check
    with tempfile.TemporaryDirectory(prefix="fineship-parity-") as tmp:
        texts_file, out_file = Path(tmp) / "texts.json", Path(tmp) / "result.json"
        texts_file.write_text(json.dumps(list(texts)), encoding="utf-8")
        cmd = [sys.executable, "-m", "components.export.verify", "--package", str(Path(package_dir).resolve()),
               "--kind", kind, "--texts", str(texts_file), "--out", str(out_file),
               "--batch-sizes", ",".join(str(b) for b in batch_sizes), "--tolerance", repr(tolerance),
               "--min-agreement", repr(min_agreement)]
        if not latency:
            cmd.append("--no-latency")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ExportError(f"the parity check of the {kind} export took over {timeout:g} s; "
                              "check fewer texts or raise the timeout") from None
        if proc.returncode != 0 or not out_file.is_file():
            raise ExportError(f"the fresh-process parity check of the {kind} export in {d} failed to run "
                              f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        data = json.loads(out_file.read_text(encoding="utf-8"))
    report = ParityReport.model_validate(data["parity"])
    table = [LatencyRow.model_validate(r) for r in data["latency"]]
    return record_result(package_dir, kind, report, table, raise_on_failure)


def record_result(package_dir: str | Path, kind: str, report: ParityReport, table: Sequence[LatencyRow] = (),
                  raise_on_failure: bool = True) -> ExportResult:
    """Write the verdict as `parity.json` beside the export; `ExportError` (with the result) when it failed."""
    d = export_dir(package_dir, kind)
    spec = read_spec(d)
    result = ExportResult(kind=kind, path=str(d / spec.file), parity=report, latency=list(table), spec=spec)
    (d / RESULT_FILE).write_text(result.model_dump_json(indent=2), encoding="utf-8")
    log.info("%s export parity: %s (argmax agreement %.4f, max |diff| %.2e over %d texts)", kind,
             "passed" if report.passed else "FAILED", report.argmax_agreement, report.max_abs_diff, report.n_texts)
    if raise_on_failure:
        try:
            require_parity(report)
        except ExportError as err:
            raise ExportError(str(err), result=result) from None
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a package's export against the package (fresh process).")
    parser.add_argument("--package", required=True)
    parser.add_argument("--kind", required=True, choices=EXPORT_KINDS)
    parser.add_argument("--texts", required=True, help="JSON file with a list of texts")
    parser.add_argument("--out", required=True, help="where to write the JSON verdict")
    parser.add_argument("--batch-sizes", default=",".join(str(b) for b in DEFAULT_BATCH_SIZES))
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--min-agreement", type=float, default=1.0)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    report, table = run_check(args.package, args.kind, texts, [int(b) for b in args.batch_sizes.split(",")],
                              args.tolerance, not args.no_latency, args.min_agreement)
    payload = {"parity": report.model_dump(mode="json"), "latency": [r.model_dump(mode="json") for r in table]}
    Path(args.out).write_text(json.dumps(payload), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
