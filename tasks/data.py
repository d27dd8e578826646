"""Data tasks: load, validate, split."""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from components.config import DriftConfig
from components.data.io import DatasetRef, read_dataset
from components.data.profile import DataProfile, DriftPolicy, build_profile, compare_profiles
from components.data.split import Splits, explicit_splits, split_frame
from components.data.validation import ValidationPolicy, ValidationReport, validate_frame
from components.errors import DataValidationError
from components.registry.mlflow_registry import MlflowRegistry
from tasks.common import artifact_key, md_table, retry_transient


@task(name="load-dataset", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_transient,
      timeout_seconds=600, cache_policy=NO_CACHE)
def load_dataset(uri: str, fmt: str = "auto", s3_client: Any | None = None) -> tuple[pd.DataFrame, DatasetRef]:
    """Read a dataset from a local path or S3."""
    df, ref = read_dataset(uri, fmt, s3_client=s3_client)
    get_run_logger().info("loaded %s: %d rows, fingerprint %s", uri, ref.rows, ref.fingerprint[:12])
    return df, ref


def validation_markdown(report: ValidationReport) -> str:
    rows = []
    for r in report.results:
        status = "pass" if r.success else ("**FAIL**" if r.severity == "error" else "warn")
        example = "; ".join(str(e) for e in r.examples[:5]) if r.examples else ""
        rows.append([r.rule, r.severity, status, r.unexpected_count, r.message if not r.success else "", example])
    verdict = "passed" if report.passed else "FAILED: training did not start"
    counts = md_table(["class", "rows"], [[k, v] for k, v in sorted(report.class_counts.items())])
    return (f"# Data validation: {verdict}\n\nDataset `{report.dataset}`, {report.rows} rows, "
            f"suite v{report.suite_version}.\n\n"
            + md_table(["rule", "severity", "outcome", "offending rows", "what to do", "examples"], rows)
            + "\n\n## Rows per class\n\n" + counts)


def _tokenizer(model: str | None) -> Any | None:
    """The training model's tokenizer, for the truncation rule; None (rule skipped) when it cannot load."""
    if not model:
        return None
    from transformers import AutoTokenizer

    from components.training.model_factory import resolve_model_path

    try:
        return AutoTokenizer.from_pretrained(resolve_model_path(model))
    except (OSError, ValueError) as err:
        get_run_logger().warning("truncation rule skipped: cannot load the tokenizer of %s (%s)", model, err)
        return None


def _log_docs(docs: Path, tracking_uri: str, run_id: str) -> None:
    # The docs' bundled fonts and animated help images are 4 MB per run and not needed to read them.
    for heavy in (docs / "static" / "fonts", *(docs / "static" / "images").glob("*.gif")):
        shutil.rmtree(heavy, ignore_errors=True) if heavy.is_dir() else heavy.unlink(missing_ok=True)
    MlflowRegistry(tracking_uri).log_dir(run_id, docs, "validation/data_docs")


# Deterministic steps are cached on the data's content hash: the frames themselves are excluded from the
# cache key and their fingerprints passed in their place.
DATA_CACHE = (INPUTS - "df" - "validation_df" - "test_df") + TASK_SOURCE


@task(name="check-data", timeout_seconds=900, cache_policy=DATA_CACHE, persist_result=True,
      cache_expiration=timedelta(days=7))
def check_data(df: pd.DataFrame, fingerprint: str, policy: ValidationPolicy, dataset: str,
               tokenizer_model: str | None, reference: DataProfile | None, drift: DriftConfig | None,
               docs_dir: str) -> tuple[ValidationReport, DataProfile | None]:
    """Run the GX suite (and drift checks against `reference`) and profile the data; Data Docs go to `docs_dir`."""
    report = validate_frame(df, policy, dataset, _tokenizer(tokenizer_model), docs_dir=docs_dir)
    profile = None
    if report.passed:
        profile = build_profile(df, policy.text_column, policy.label_column)
        if reference is not None and drift is not None:
            report = report.with_results(compare_profiles(
                reference, profile, df[policy.text_column], DriftPolicy(**drift.model_dump())))
    return report, profile


@task(name="publish-validation", timeout_seconds=300, cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def publish_validation(report: ValidationReport, tracking_uri: str | None = None, run_id: str | None = None) -> None:
    """Publish the report (Prefect artifact, MLflow run with Data Docs); raise when an error rule failed."""
    logger = get_run_logger()
    if tracking_uri and run_id:
        MlflowRegistry(tracking_uri).log_dict(run_id, report.model_dump(), "validation/report.json")
        if report.docs_dir and Path(report.docs_dir).is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                docs = Path(tmp) / "data_docs"
                shutil.copytree(report.docs_dir, docs)
                _log_docs(docs, tracking_uri, run_id)
    create_markdown_artifact(validation_markdown(report), key=artifact_key("validation"),
                             description=f"Data validation of {report.dataset}")
    for r in report.warnings:
        logger.warning("%s: %s", r.rule, r.message)
    if not report.passed:
        raise DataValidationError(report.summary(), report)
    logger.info("validation passed (%d rules, %d warnings)", len(report.results), len(report.warnings))


def validate_data(df: pd.DataFrame, fingerprint: str, policy: ValidationPolicy, dataset: str, docs_root: Path,
                  tokenizer_model: str | None = None, reference: DataProfile | None = None,
                  drift: DriftConfig | None = None, tracking_uri: str | None = None,
                  run_id: str | None = None) -> tuple[ValidationReport, DataProfile | None]:
    """Check (cached on the content hash) then publish; raises `DataValidationError` on an error rule."""
    docs_dir = str(docs_root / f"{fingerprint[:16]}-{_policy_hash(policy, reference)}")
    report, profile = check_data(df, fingerprint, policy, dataset, tokenizer_model, reference, drift, docs_dir)
    publish_validation(report, tracking_uri, run_id)
    return report, profile


def _policy_hash(policy: ValidationPolicy, reference: DataProfile | None) -> str:
    from components.provenance import config_hash

    return config_hash({"policy": policy.model_dump(mode="json"),
                        "reference": reference.model_dump(mode="json") if reference else None})[:12]


@task(name="split-data", timeout_seconds=900, cache_policy=DATA_CACHE, persist_result=True,
      cache_expiration=timedelta(days=7))
def compute_split(df: pd.DataFrame, fingerprints: str, text_col: str, label_col: str, train: float,
                  validation: float, test: float, seed: int, validation_df: pd.DataFrame | None = None,
                  test_df: pd.DataFrame | None = None, near_duplicate_threshold: float | None = None) -> Splits:
    """Split deterministically (or apply explicit evaluation files); cached on the data's content hash."""
    if test_df is not None:
        return explicit_splits(df, validation_df, test_df, text_col, label_col, seed, validation)
    return split_frame(df, text_col, label_col, train, validation, test, seed, near_duplicate_threshold)


@task(name="publish-split", timeout_seconds=120, cache_policy=NO_CACHE)
def publish_split(splits: Splits) -> None:
    """Publish sizes per class as a table artifact: every run, cache hit or not."""
    m = splits.manifest
    classes = sorted({c for sizes in m.class_sizes.values() for c in sizes})
    create_table_artifact(
        [{"class": c, **{s: m.class_sizes[s].get(c, 0) for s in ("train", "validation", "test")}} for c in classes]
        + [{"class": "total", **m.sizes}],
        key=artifact_key("split"), description=f"Split sizes per class (seed {m.seed}, leakage {m.leakage}, "
                                               f"{m.duplicate_groups} duplicate groups kept together, digest {m.digest})")
    get_run_logger().info("split %s, leakage %d, digest %s", m.sizes, m.leakage, m.digest)


def split_data(df: pd.DataFrame, fingerprints: str, text_col: str, label_col: str, train: float, validation: float,
               test: float, seed: int, validation_df: pd.DataFrame | None = None, test_df: pd.DataFrame | None = None,
               near_duplicate_threshold: float | None = None) -> Splits:
    """Split (cached) then publish the split's artifact."""
    splits = compute_split(df, fingerprints, text_col, label_col, train, validation, test, seed, validation_df,
                           test_df, near_duplicate_threshold)
    publish_split(splits)
    return splits
