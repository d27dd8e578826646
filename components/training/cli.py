"""The training entry point: one command for a single process, `torchrun`, and SageMaker.

    python -m components.training.cli --config flows/configs/demo.yaml --train data/train.csv \\
        [--validation data/val.csv] --output-dir out/package [--result-json out/result.json] \\
        [--set training.epochs=2 ...]

    python -m torch.distributed.run --nproc_per_node 2 -m components.training.cli ...   # data parallel

The config is a pipeline config (its `data` section names the columns and labels, its
`training` section is the run); `--set` overrides any field. Without `--validation` the
training file is split (stratified, seeded) with the config's validation share. Rank 0 writes
the model package and the result (a `TrainedModel` as JSON). Exit codes: 0 trained, 1 a
fineship error (the message says what to fix), 143 stopped by SIGTERM after checkpointing:
run the same command again to resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from components.config import PipelineConfig, load_config
from components.errors import DataLoadError, FineshipError

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 143  # 128 + SIGTERM, the shell's convention for "terminated"
_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json", ".csv.gz", ".tsv.gz", ".jsonl.gz")


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one data file, or every supported file under a directory (a SageMaker channel), concatenated."""
    from components.data.io import read_dataset

    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(_SUFFIXES))
        if not files:
            raise DataLoadError(f"{p} holds no data file ({', '.join(_SUFFIXES)})")
        return pd.concat([read_dataset(str(f))[0] for f in files], ignore_index=True)
    if not p.is_file():
        raise DataLoadError(f"{p} does not exist")
    return read_dataset(str(p))[0]


def prepare_splits(config: PipelineConfig, train_df: pd.DataFrame,
                   validation_df: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Training and validation frames plus the label set, splitting validation off when none is given."""
    from components.data.split import split_frame

    d = config.data
    for name, df in (("training", train_df), ("validation", validation_df)):
        if df is not None:
            missing = [c for c in (d.text_column, d.label_column) if c not in df.columns]
            if missing:
                raise DataLoadError(f"the {name} data has no column(s) {missing}; it has {list(df.columns)} "
                                    f"(set data.text_column / data.label_column)")
    if validation_df is None:
        share = config.split.validation or 0.1
        parts = split_frame(train_df, d.text_column, d.label_column, 1 - share, share, 0.0, config.split.seed)
        train_df, validation_df = parts.train, parts.validation
    labels = list(d.labels) if d.labels else sorted(train_df[d.label_column].astype(str).unique())
    return train_df, validation_df, labels


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m components.training.cli", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="pipeline config YAML (flows/configs/*.yaml); default: the defaults")
    ap.add_argument("--train", required=True, help="training data: a file or a directory of files")
    ap.add_argument("--validation", help="validation data: a file or a directory; default: split off --train")
    ap.add_argument("--output-dir", required=True, help="where rank 0 writes the model package")
    ap.add_argument("--result-json", help="where rank 0 writes the TrainedModel as JSON")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a config field, e.g. training.epochs=2 (repeatable)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def run(config: PipelineConfig, train_path: str | Path, validation_path: str | Path | None, output_dir: str | Path,
        result_json: str | Path | None = None, progress: bool = True) -> int:
    """Train from files with `config` (joining a `torchrun` process group if there is one); an exit code."""
    from components.training.distributed import init_distributed, shutdown_distributed
    from components.training.trainer import TrainingInterrupted, train

    ctx = init_distributed()
    try:
        d = config.data
        train_df, val_df, labels = prepare_splits(
            config, read_table(train_path), read_table(validation_path) if validation_path else None)
        trained = train(train_df[d.text_column].astype(str).tolist(), train_df[d.label_column].astype(str).tolist(),
                        val_df[d.text_column].astype(str).tolist(), val_df[d.label_column].astype(str).tolist(),
                        labels, config.training, output_dir, progress=progress and ctx.is_main)
        if result_json and ctx.is_main:
            out = Path(result_json)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(trained.model_dump_json(indent=2), encoding="utf-8")
        return 0
    except TrainingInterrupted as stop:
        log.warning("%s", stop)
        return EXIT_INTERRUPTED
    finally:
        shutdown_distributed()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.overrides)
        return run(config, args.train, args.validation, args.output_dir, args.result_json,
                   progress=not args.no_progress)
    except FineshipError as err:
        log.error("%s", err)
        return 1


if __name__ == "__main__":
    sys.exit(main())
