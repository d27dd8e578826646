"""Training throughput: a tutorial-style loop against fineship's trainer, same model, data and batch size.

    .venv/bin/python benchmarks/train_throughput.py [--datasets sms-spam,bbc-news] [--epochs 2]

The Hugging Face `Trainer` is the peer a user would actually pick (`hf_trainer_run`: dynamic padding,
length-grouped sampling, bf16 where fineship's `auto` picks it, fineship's learning-rate recipe).
The tutorial loop is what the notebooks this project grew from do: tokenise everything padded
to max_length=128, a shuffled DataLoader of fixed-shape batches, plain Adam (constant 5e-5), fp32,
no schedule, no clipping. fineship's trainer runs with its defaults (dynamic padding,
length-grouped batches, AdamW peaking at 1e-4 with warm-up and linear decay, clipping,
`precision: auto`) and once more with `precision: fp32` to separate what bf16 adds. All runs:
all-MiniLM-L6-v2, batch size 16, the same stratified training subset and epochs, no validation
split (so no early stopping: every run trains the same number of examples), accuracy on the same
held-out subset. samples/s counts training examples over the training loop's wall time
(evaluation excluded); samples per CPU-second over the process's CPU time.

Per dataset the last line is
RESULT dataset=<d> speedup=<fineship/tutorial samples/s> vs_hf=<fineship/Trainer samples/s> tutorial_acc=<a>
hf_acc=<h> fineship_acc=<b>.
Targets (issue 14): speedup >= 8 on SMS Spam and >= 2.5 on BBC News, vs_hf >= 1.3 on both, the fp32 path
>= 1.0x the tutorial on BBC, accuracy within 0.005 of the better of tutorial and Trainer. fineship's defaults
batch by a token budget (16 rows of the longest texts, 16 x 128 tokens: batches of short texts hold more rows);
a further fineship run with 16 rows in every batch, as the peers have them, shows what that adds; it is in the
table and the chart, not in the RESULT line. The chart goes to docs/img/.
The results replace the "Training throughput" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks._report import Results, bar_chart, machine  # noqa: E402

DATA = REPO.parent / "shared" / "data"
BATCH_SIZE = 16
TUTORIAL_LR = 5e-5  # constant, plain Adam: the tutorials' recipe
FINESHIP_LR = 1e-4  # peak of warm-up + linear decay: fineship's recipe for MiniLM (benchmarks/quality.py)
MAX_LENGTH = 128
SEED = 42
SUBSETS = {"sms-spam": (1200, 500, 2), "bbc-news": (600, 300, 3)}  # (train rows, test rows, epochs)


def load_dataset(name: str, data_dir: Path = DATA) -> pd.DataFrame:
    """A dataset of ../shared/data as a frame with `text` and `label` columns."""
    if name == "sms-spam":
        return pd.read_csv(data_dir / "sms-spam" / "SMSSpamCollection", sep="\t", header=None,
                           names=["label", "text"], quoting=csv.QUOTE_NONE, encoding="utf-8")
    if name == "bbc-news":
        return pd.read_csv(data_dir / "bbc-news" / "bbc-text.csv").rename(columns={"category": "label"})
    if name == "movie-review":  # one sentence per line, a file per polarity
        rows = [(line.strip(), label) for label in ("neg", "pos")
                for line in (data_dir / "movie-review" / f"rt-polarity.{label}").read_text("utf-8").splitlines()
                if line.strip()]
        return pd.DataFrame(rows, columns=["text", "label"])
    raise SystemExit(f"unknown dataset {name!r}; use sms-spam, bbc-news or movie-review")


def subset(df: pd.DataFrame, n_train: int, n_test: int, seed: int = SEED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified train/test subsets with no text in both (duplicates dropped first)."""
    from sklearn.model_selection import train_test_split

    df = df.drop_duplicates("text").reset_index(drop=True)
    train, rest = train_test_split(df, train_size=n_train, stratify=df.label, random_state=seed)
    test, _ = train_test_split(rest, train_size=n_test, stratify=rest.label, random_state=seed)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def load_average() -> float:
    return os.getloadavg()[0]


def tutorial_run(model_path: str, train: pd.DataFrame, test: pd.DataFrame, labels: list[str],
                 epochs: int) -> dict[str, float]:
    """The tutorial loop, faithfully: max_length padding, fixed batches, plain Adam, fp32."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(labels))
    label_id = {name: i for i, name in enumerate(labels)}
    enc = tokenizer(train.text.tolist(), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                    return_tensors="pt")
    data = TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor([label_id[y] for y in train.label]))
    loader = DataLoader(data, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(SEED))
    optimizer = torch.optim.Adam(model.parameters(), lr=TUTORIAL_LR)
    model.train()
    loads, seen, start, cpu_start = [load_average()], 0, time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for input_ids, mask, y in loader:
            optimizer.zero_grad()
            out = model(input_ids=input_ids, attention_mask=mask, labels=y)
            out.loss.backward()
            optimizer.step()
            seen += len(y)
        loads.append(load_average())
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    test_enc = tokenizer(test.text.tolist(), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                         return_tensors="pt")
    preds = []
    with torch.no_grad():
        for i in range(0, len(test), 32):
            preds.append(model(input_ids=test_enc["input_ids"][i:i + 32],
                               attention_mask=test_enc["attention_mask"][i:i + 32]).logits.argmax(-1))
    acc = float((torch.cat(preds).numpy() == np.array([label_id[y] for y in test.label])).mean())
    return {"samples_per_second": seen / seconds, "train_seconds": seconds, "accuracy": acc,
            "samples_per_cpu_second": seen / cpu_seconds, "load": float(np.mean(loads))}


def fineship_run(train: pd.DataFrame, test: pd.DataFrame, labels: list[str], epochs: int,
                 precision: str, threads: int | None, batch_size: int | None = None) -> dict[str, float]:
    """fineship's trainer on the same data, max_length and epochs. The batch and the learning-rate recipe are its
    defaults (`components/training/recipe.py`: 16 rows of the longest texts, a budget of 16 x max_length tokens,
    1e-4 for this model, 10% warm-up) unless `batch_size` fixes the rows per batch as the peers have them."""
    from components.config import TrainingConfig
    from components.package import load_package
    from components.training.trainer import train as fineship_train

    cfg = TrainingConfig(model="default", max_length=MAX_LENGTH, batch_size=batch_size, epochs=epochs, seed=SEED,
                         precision=precision, num_threads=threads)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        trained = fineship_train(train.text.tolist(), train.label.tolist(), [], [], labels, cfg, Path(tmp) / "pkg",
                                 progress=False)
        load_after = load_average()
        preds = [p.label for p in load_package(trained.package_dir, device="cpu").predict(test.text.tolist())]
    acc = float(np.mean(np.array(preds) == test.label.to_numpy()))
    return {"samples_per_second": trained.samples_per_second, "train_seconds": trained.train_seconds - trained.eval_seconds,
            "accuracy": acc, "samples_per_cpu_second": len(train) * epochs / trained.cpu_seconds,
            "load": (load_before + load_after) / 2, "precision_used": trained.precision,
            "warmup_ratio": (trained.training or cfg).warmup_ratio}


def hf_trainer_run(model_path: str, train: pd.DataFrame, test: pd.DataFrame, labels: list[str], epochs: int,
                   bf16: bool, warmup_ratio: float) -> dict[str, float]:
    """The peer a user would pick: `transformers.Trainer` at its best settings here. DataCollatorWithPadding
    (dynamic padding), length-grouped sampling, bf16 where the CPU has it (the precision fineship's `auto` chose),
    and fineship's recipe: AdamW peaking at FINESHIP_LR, the warm-up share fineship's recipe chose, linear decay,
    clipping at 1.0, same batch size and epochs; no evaluation or checkpoint during training."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(labels))
    label_id = {name: i for i, name in enumerate(labels)}
    enc = tokenizer(train.text.tolist(), truncation=True, max_length=MAX_LENGTH)  # unpadded: the collator pads
    data = [{"input_ids": ids, "attention_mask": mask, "labels": label_id[y]}
            for ids, mask, y in zip(enc["input_ids"], enc["attention_mask"], train.label)]  # a map-style dataset
    with tempfile.TemporaryDirectory() as tmp:
        arguments = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=BATCH_SIZE, num_train_epochs=epochs,
            learning_rate=FINESHIP_LR, warmup_steps=warmup_ratio, lr_scheduler_type="linear", max_grad_norm=1.0,
            train_sampling_strategy="group_by_length", bf16=bf16, use_cpu=not torch.cuda.is_available(),
            save_strategy="no", eval_strategy="no", report_to=[], logging_strategy="no", seed=SEED,
            dataloader_num_workers=0, disable_tqdm=True)
        trainer = Trainer(model=model, args=arguments, train_dataset=data,
                          data_collator=DataCollatorWithPadding(tokenizer))
        loads, start, cpu_start = [load_average()], time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        loads.append(load_average())
    model.eval()
    preds = []
    with torch.no_grad():
        for i in range(0, len(test), 32):
            enc = tokenizer(test.text.tolist()[i:i + 32], padding=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")
            preds.append(model(**enc).logits.argmax(-1))
    acc = float((torch.cat(preds).numpy() == np.array([label_id[y] for y in test.label])).mean())
    seen = len(train) * epochs
    return {"samples_per_second": seen / seconds, "train_seconds": seconds, "accuracy": acc,
            "samples_per_cpu_second": seen / cpu_seconds, "load": float(np.mean(loads))}


def main() -> None:
    import torch
    import transformers

    from components.training.model_factory import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="sms-spam,bbc-news")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every dataset (default: per dataset)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for every run (default: torch's default, the physical cores)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the subsets (a smoke run: 0.05)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = resolve_model_path("default")
    rows, results, sizes, chart = [], Results("Training throughput"), [], {}
    for name in args.datasets.split(","):
        n_train, n_test = (max(20, int(n * args.scale)) for n in SUBSETS[name][:2])
        epochs = args.epochs or SUBSETS[name][2]
        train, test = subset(load_dataset(name, args.data_dir), n_train, n_test)
        sizes.append(f"{name} {len(train)}/{len(test)} rows, {epochs} epochs")
        labels = sorted(train.label.unique())
        print(f"\n== {name}: {len(train)} training and {len(test)} test rows, {epochs} epochs, batch "
              f"{BATCH_SIZE}, torch threads {torch.get_num_threads()}", flush=True)
        runs = {f"tutorial (max_length padding, Adam {TUTORIAL_LR:g}, fp32)": tutorial_run(model_path, train, test, labels, epochs)}
        print("tutorial done", runs, flush=True)
        auto = fineship_run(train, test, labels, epochs, "auto", args.threads)
        runs[f"fineship (defaults: precision auto = {auto['precision_used']})"] = auto
        print("fineship done", auto, flush=True)
        if auto["precision_used"] != "fp32":
            runs["fineship (precision fp32)"] = fineship_run(train, test, labels, epochs, "fp32", args.threads)
        runs[f"fineship ({BATCH_SIZE} rows per batch, as the peers)"] = fineship_run(
            train, test, labels, epochs, "auto", args.threads, batch_size=BATCH_SIZE)
        bf16 = auto["precision_used"] == "bf16"
        hf = hf_trainer_run(model_path, train, test, labels, epochs, bf16, auto["warmup_ratio"])
        runs[f"HF Trainer (dynamic padding, group_by_length, {'bf16' if bf16 else 'fp32'})"] = hf
        print("HF Trainer done", hf, flush=True)
        tutorial = next(iter(runs.values()))
        print(f"{'run':<50} {'samples/s':>10} {'per CPU-s':>10} {'train s':>9} {'accuracy':>9} {'load avg':>9}")
        for run, r in runs.items():
            print(f"{run:<50} {r['samples_per_second']:>10.2f} {r['samples_per_cpu_second']:>10.2f} "
                  f"{r['train_seconds']:>9.1f} {r['accuracy']:>9.4f} {r['load']:>9.2f}")
            chart.setdefault(name, {})[run] = r["samples_per_second"]
            rows.append(f"| {name} | {run} | {r['samples_per_second']:.2f} | "
                        f"{r['samples_per_second'] / tutorial['samples_per_second']:.2f}x | "
                        f"{r['samples_per_cpu_second']:.2f} | "
                        f"{r['samples_per_cpu_second'] / tutorial['samples_per_cpu_second']:.2f}x | "
                        f"{r['train_seconds']:.0f} | {r['accuracy']:.4f} | {r['load']:.2f} |")
        speedup = auto["samples_per_second"] / tutorial["samples_per_second"]
        results.add(f"RESULT dataset={name} speedup={speedup:.2f} "
                    f"vs_hf={auto['samples_per_second'] / hf['samples_per_second']:.2f} "
                    f"tutorial_acc={tutorial['accuracy']:.4f} hf_acc={hf['accuracy']:.4f} "
                    f"fineship_acc={auto['accuracy']:.4f}")
    if not args.no_write:
        command = (f".venv/bin/python benchmarks/train_throughput.py --datasets {args.datasets}"
                   + (f" --epochs {args.epochs}" if args.epochs else "")
                   + (f" --threads {args.threads}" if args.threads else "")
                   + (f" --scale {args.scale}" if args.scale != 1.0 else ""))
        body = (f"Machine: {machine()} (`nproc` = {os.cpu_count()}), torch threads {torch.get_num_threads()}, "
                f"transformers {transformers.__version__}. The machine is shared: the 1-minute load average during "
                f"each run is in the last column (above {os.cpu_count()} means other processes competed for the "
                f"cores, which slows every run and makes single numbers noisy).\n\n"
                f"Command: `{command}`. Model all-MiniLM-L6-v2, batch size {BATCH_SIZE} (fineship's defaults: "
                f"{BATCH_SIZE} rows of the longest texts within a budget of {BATCH_SIZE * MAX_LENGTH} tokens, so batches "
                f"of shorter texts hold more rows; the '{BATCH_SIZE} rows per batch' run has the peers' batches), "
                f"max_length {MAX_LENGTH}, "
                f"stratified subsets ({'; '.join(sizes)}), no validation split. Each side trains with its own "
                f"recipe: the tutorial with constant Adam at {TUTORIAL_LR}, fineship with AdamW peaking at "
                f"{FINESHIP_LR} (its recipe for this model: linear warm-up over 10% of the steps, at least 20, and "
                f"linear decay to 0; the learning rate does not change samples/s), the HF Trainer with the same peak "
                f"and warm-up share. With "
                f"the tutorial's 5e-5 fineship's decaying schedule under-trained the short BBC run (measured: "
                f"accuracy 0.883 vs 0.947 on 400 rows x 2 epochs, bf16 and fp32 alike). samples/s is wall clock "
                f"(the issue's definition of speedup); samples per CPU-second divides by the process's CPU time instead, which other "
                f"processes' load inflates far less.\n\n"
                "| dataset | run | train samples/s | vs tutorial | samples per CPU-s | vs tutorial | train s "
                "| test accuracy | load avg |\n|---|---|---|---|---|---|---|---|---|\n"
                + "\n".join(rows) + "\n\n"
                + bar_chart("train_throughput", "Training throughput (samples/s, higher is better)", chart,
                            "training samples/s"))
        results.write(body)


if __name__ == "__main__":
    main()
