"""Does torch.compile pay for fine-tuning here? One training step of fineship's loop, eager against compiled.

    .venv/bin/python benchmarks/compile_train.py [--steps 30] [--threads 2]

The step is the trainer's (forward with the attention mask, cross-entropy, backward, clipping at 1.0, fused AdamW,
attention dropout 0), on all-MiniLM-L6-v2 in fp32 (this CPU has no native bf16), batch 16, on real batches:

- `bbc`: BBC News articles, every row 128 tokens: one shape, the best case for a compiler.
- `sms`: SMS Spam messages in length-grouped batches padded to their longest row (what fineship trains on):
  a new sequence length almost every step, which makes torch.compile recompile or trace dynamic shapes.

Per dataset both loops run the same batches twice: the second pass is the steady state, and the compiled
loop's first pass minus its second is what compiling cost. `break_even_steps` is how many steps the compiled loop needs before its saving repays
the compile time (none: it is never faster). fineship adopts torch.compile only where this says it pays on the
runs people make; writes the "torch.compile" section of docs/benchmarks.md with a chart.

RESULT dataset=<d> eager_ms=<e> compiled_ms=<c> compile_s=<s> break_even_steps=<n>
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fresh inductor cache: compile time as a new machine or container pays it (a warm on-disk cache from an earlier
# run cut it from 35.6 s to 3.6 s here).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fineship-inductor-")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)

from benchmarks._report import Results, bar_chart, machine  # noqa: E402
from benchmarks.train_throughput import BATCH_SIZE, FINESHIP_LR, MAX_LENGTH, SEED, load_dataset  # noqa: E402


def batches(dataset: str, tokenizer, n: int) -> list[dict]:
    """`n` training batches as fineship builds them: length-grouped, padded to the batch's longest row."""
    import torch

    df = load_dataset(dataset).sample(n=BATCH_SIZE * n * 4, random_state=SEED)
    enc = tokenizer(df.text.tolist(), truncation=True, max_length=MAX_LENGTH)["input_ids"]
    labels = {name: i for i, name in enumerate(sorted(df.label.unique()))}
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))  # length-grouped
    groups = [order[i:i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
    random.Random(SEED).shuffle(groups)
    out = []
    for rows in groups[:n]:
        width = max(len(enc[i]) for i in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            ids[r, :len(enc[i])], mask[r, :len(enc[i])] = torch.tensor(enc[i]), 1
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": torch.tensor([labels[y] for y in df.label.iloc[rows]])})
    return out


def run(dataset: str, compiled: bool, steps: int) -> dict:
    """Seconds of each training step, the first ones included."""
    import torch

    from components.training.model_factory import build_model

    torch.manual_seed(SEED)
    model, tokenizer = build_model("default", sorted(load_dataset(dataset).label.unique()), attention_dropout=0.0)
    model.train()
    data = batches(dataset, tokenizer, steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=FINESHIP_LR, fused=True)
    forward = torch.compile(model) if compiled else model
    passes = []
    for _ in range(2):  # the first pass compiles (every shape once), the second runs the same batches compiled
        times = []
        for batch in data:
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(
                forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
        passes.append(times)
    return {"first": passes[0], "second": passes[1], "widths": [b["input_ids"].shape[1] for b in data]}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="bbc-news,sms-spam")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results, rows, chart = Results("torch.compile"), [], {}
    for dataset in args.datasets.split(","):
        eager, comp = run(dataset, False, args.steps), run(dataset, True, args.steps)
        # The same batches in the same order: the second pass of each is its steady state.
        eager_ms = 1000 * sum(eager["second"]) / args.steps
        compiled_ms = 1000 * sum(comp["second"]) / args.steps
        overhead_s = sum(comp["first"]) - sum(comp["second"])  # what compiling every shape cost
        saving_ms = eager_ms - compiled_ms
        break_even = f"{overhead_s * 1000 / saving_ms:.0f}" if saving_ms > 0 else "none"
        shapes = len(set(comp["widths"]))
        print(f"{dataset}: eager {eager_ms:.0f} ms/step, compiled {compiled_ms:.0f} ms/step in steady state, "
              f"{overhead_s:.1f} s compiling over {args.steps} steps of {shapes} shapes; break-even {break_even}")
        rows.append(f"| {dataset} | {shapes} | {eager_ms:.0f} | {compiled_ms:.0f} | {eager_ms / compiled_ms:.2f}x | "
                    f"{overhead_s:.1f} | {sum(eager['first']):.1f} | {sum(comp['first']):.1f} | {break_even} |")
        chart[dataset] = {"eager ms/step": eager_ms, "compiled ms/step (steady)": compiled_ms}
        results.add(f"RESULT dataset={dataset} eager_ms={eager_ms:.0f} compiled_ms={compiled_ms:.0f} "
                    f"compile_s={overhead_s:.1f} break_even_steps={break_even}")
    if not args.no_write:
        body = (f"Machine: {machine()}, torch threads {torch.get_num_threads()}, load average "
                f"{os.getloadavg()[0]:.2f} at the end. Command: `.venv/bin/python benchmarks/compile_train.py "
                f"--datasets {args.datasets} --steps {args.steps}`. One step of fineship's training loop (forward, "
                "cross-entropy, backward, clipping, fused AdamW; all-MiniLM-L6-v2, fp32, batch 16, max_length 128, "
                "attention dropout 0), eager against `torch.compile(model)` (inductor, default mode), on the same "
                f"{args.steps} real batches, twice: BBC News rows all fill 128 tokens (one shape); SMS Spam batches are "
                "length-grouped and padded to their longest row, as fineship trains. ms/step is the second pass over "
                "the batches (every shape already compiled); compile seconds is the compiled loop's first pass minus "
                "its second, with an empty inductor cache (what a new machine or container pays); the totals are the "
                "first passes, what a run of that many steps costs.\n\n"
                "| data | shapes | eager ms/step | compiled ms/step | speedup | compile s | eager first pass s | "
                "compiled first pass s | break-even steps |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
                + bar_chart("compile_train", "Training step, eager vs torch.compile (ms, lower is better)", chart,
                            "ms per step"))
        results.write(body)


if __name__ == "__main__":
    main()
