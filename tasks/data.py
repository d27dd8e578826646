"""Data tasks: load, validate, split (and write what they found to the run)."""

from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from pydantic import BaseModel, ConfigDict

from components.config import DataConfig, DriftPolicy, PipelineConfig
from components.data.cleaning import clean_frame, clean_frames, evaluation_file_policy, with_removals
from components.data.io import DatasetRef, read_dataset
from components.data.policy import rule_tokenizer, validation_policy
from components.data.profile import DataProfile, build_profile, compare_profiles
from components.data.split import Splits, explicit_splits, split_frame
from components.data.validation import ValidationPolicy, ValidationReport, validate_frame
from components.errors import DataValidationError
from components.registry.mlflow_registry import MlflowRegistry
from components.registry.model_card import MANIFEST_ARTIFACT, PROFILE_ARTIFACT, split_params
from tasks.common import RETRIED_IO, artifact_key, md_table, report_stage, retry_transient
from tasks.results import DATA_CODE_CACHE, DataCheck, ResultJSONSerializer

__all__ = ["DataCheck", "DataInputs", "LoadedDataset", "load_inputs", "split_data", "validate_inputs"]


class LoadedDataset(BaseModel):
    """A dataset read into memory, with what exactly it held."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    frame: pd.DataFrame
    ref: DatasetRef


class DataInputs(BaseModel):
    """The training data and the optional explicit validation and test files."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    main: LoadedDataset
    validation: LoadedDataset | None = None
    test: LoadedDataset | None = None

    @property
    def extras(self) -> dict[str, LoadedDataset]:
        return {k: v for k, v in (("validation", self.validation), ("test", self.test)) if v is not None}

    @property
    def fingerprints(self) -> str:
        """The content hashes of every input file: the key of the cached steps."""
        return ":".join(d.ref.fingerprint for d in (self.main, *self.extras.values()))


@task(name="load-dataset", retries=3, retry_delay_seconds=[2, 5, 15], retry_condition_fn=retry_transient,
      timeout_seconds=600, cache_policy=NO_CACHE)
def load_dataset(uri: str, fmt: str = "auto", s3_client: Any | None = None) -> LoadedDataset:
    """Read a dataset from a local path or S3."""
    df, ref = read_dataset(uri, fmt, s3_client=s3_client)
    report_stage("load", "%s: %d rows, fingerprint %s", uri, ref.rows, ref.fingerprint[:12])
    return LoadedDataset(frame=df, ref=ref)


def load_inputs(data: DataConfig, s3_client: Callable[[], Any]) -> DataInputs:
    """Load the training data and any explicit validation/test files (`s3_client` is called only for s3://)."""
    paths = {"main": data.path, "validation": data.validation_path, "test": data.test_path}
    s3 = s3_client() if any(p and p.startswith("s3://") for p in paths.values()) else None
    return DataInputs(**{k: load_dataset(p, data.format, s3) for k, p in paths.items() if p})


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
            + cleaning_markdown(report) + "\n\n## Rows per class\n\n" + counts)


def cleaning_markdown(report: ValidationReport) -> str:
    """The rows the data.rules drop / repair policies removed or fixed before validation (empty when none)."""
    c = report.cleaning
    if c is None:
        return ""
    rows = [[f"data.rules.{r.rule}", r.action, r.rows, "; ".join(str(e) for e in r.examples[:5])] for r in c.rules]
    return (f"\n\n## Cleaned before validation\n\n{c.rows_in} rows read, {c.rows_out} validated "
            f"({c.rows_in - c.rows_out} dropped).\n\n" + md_table(["policy", "action", "rows", "examples"], rows))


def _log_docs(docs: Path, registry: MlflowRegistry, run_id: str) -> None:
    # The docs' bundled fonts and animated help images are 4 MB per run and not needed to read them.
    for heavy in (docs / "static" / "fonts", *(docs / "static" / "images").glob("*.gif")):
        shutil.rmtree(heavy, ignore_errors=True) if heavy.is_dir() else heavy.unlink(missing_ok=True)
    registry.log_dir(run_id, docs, "validation/data_docs")


# Deterministic steps are cached on the data's content hash: the frames themselves are excluded from the
# cache key and their fingerprints passed in their place.
# The key also holds the suite version and the code of validation and split (tasks/results.py), and results are
# persisted as JSON, never pickle.
DATA_CACHE = (INPUTS - "df" - "validation_df" - "test_df") + TASK_SOURCE + DATA_CODE_CACHE


@task(name="check-data", timeout_seconds=900, cache_policy=DATA_CACHE, persist_result=True,
      result_serializer=ResultJSONSerializer(), cache_expiration=timedelta(days=7))
def check_data(df: pd.DataFrame, fingerprint: str, policy: ValidationPolicy, dataset: str,
               tokenizer_model: str | None, reference: DataProfile | None, drift: DriftPolicy | None,
               docs_dir: str) -> DataCheck:
    """Clean `df` by the policy's drop / repair rules, run the GX suite on the result (and drift checks against
    `reference`) and profile it; Data Docs go to `docs_dir`."""
    cleaned = clean_frame(df, policy)
    df = cleaned.frame
    report = validate_frame(df, policy, dataset, rule_tokenizer(tokenizer_model), docs_dir=docs_dir,
                            cleaning=cleaned.report)
    profile = None
    if report.passed:
        profile = build_profile(df, policy.text_column, policy.label_column)
        if reference is not None and drift is not None:
            report = report.with_results(compare_profiles(reference, profile, df[policy.text_column], drift))
    return DataCheck(report=report, profile=profile)


@task(name="publish-validation", timeout_seconds=300, cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient)
def publish_validation(check: DataCheck, registry: MlflowRegistry | None = None, run_id: str | None = None) -> None:
    """Publish the report (Prefect artifact; MLflow run with Data Docs and the data profile); raise when an error
    rule failed."""
    logger = get_run_logger()
    report = check.report
    if registry is not None and run_id:
        registry.log_dict(run_id, report.model_dump(), "validation/report.json")
        if check.profile is not None:
            registry.log_dict(run_id, check.profile.model_dump(), PROFILE_ARTIFACT)
        if report.docs_dir and Path(report.docs_dir).is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                docs = Path(tmp) / "data_docs"
                shutil.copytree(report.docs_dir, docs)
                _log_docs(docs, registry, run_id)
    create_markdown_artifact(validation_markdown(report), key=artifact_key("validation"),
                             description=f"Data validation of {report.dataset}")
    for line in report.cleaning.lines() if report.cleaning is not None else []:
        logger.warning("cleaned before validation: %s", line)
    for r in report.warnings:
        logger.warning("%s: %s", r.rule, r.message)
    cleaned = "; " + ", ".join(report.cleaning.lines()) if report.cleaning is not None and report.cleaning.rules else ""
    if not report.passed:
        report_stage("validate", "failed: %s%s", ", ".join(r.rule for r in report.errors), cleaned, outcome="failed")
        raise DataValidationError(report.summary(), report)
    report_stage("validate", "passed (%d rules, %d warnings%s)", len(report.results), len(report.warnings), cleaned,
                 outcome="warning" if report.warnings else "ok")


def validate_data(data: LoadedDataset, policy: ValidationPolicy, docs_root: Path,
                  tokenizer_model: str | None = None, reference: DataProfile | None = None,
                  drift: DriftPolicy | None = None, registry: MlflowRegistry | None = None,
                  run_id: str | None = None, dataset: str | None = None) -> DataCheck:
    """Check (cached on the content hash) then publish; raises `DataValidationError` on an error rule."""
    fingerprint = data.ref.fingerprint
    docs_dir = str(docs_root / f"{fingerprint[:16]}-{_policy_hash(policy, reference)}")
    check = check_data(data.frame, fingerprint, policy, dataset or data.ref.uri, tokenizer_model, reference, drift,
                       docs_dir)
    publish_validation(check, registry, run_id)
    return check


def validate_inputs(inputs: DataInputs, config: PipelineConfig, policy: ValidationPolicy, docs_root: Path,
                    reference: DataProfile | None, registry: MlflowRegistry, run_id: str) -> DataCheck:
    """Validate the training data (with drift against the champion's profile) and any explicit eval files."""
    check = validate_data(inputs.main, policy, docs_root, config.training.model, reference, config.data.drift,
                          registry, run_id)
    for name, extra in inputs.extras.items():
        validate_data(extra, evaluation_file_policy(policy), docs_root, dataset=f"{name} file")
    return check


def _policy_hash(policy: ValidationPolicy, reference: DataProfile | None) -> str:
    from components.provenance import config_hash

    return config_hash({"policy": policy.model_dump(mode="json"),
                        "reference": reference.model_dump(mode="json") if reference else None})[:12]


@task(name="split-data", timeout_seconds=900, cache_policy=DATA_CACHE, persist_result=True,
      result_serializer=ResultJSONSerializer(), cache_expiration=timedelta(days=7))
def compute_split(df: pd.DataFrame, fingerprints: str, text_col: str, label_col: str, train: float,
                  validation: float, test: float, seed: int, validation_df: pd.DataFrame | None = None,
                  test_df: pd.DataFrame | None = None, near_duplicate_threshold: float | None = None,
                  cleaning: ValidationPolicy | None = None) -> Splits:
    """Split deterministically (or apply explicit evaluation files); cached on the data's content hash.

    With `cleaning` (a policy that drops or repairs), the frames are cleaned as validation cleaned them first,
    and the manifest records what was removed."""
    frames, cleaned = clean_frames({"train": df, "validation": validation_df, "test": test_df}, cleaning)
    df, validation_df, test_df = frames["train"], frames["validation"], frames["test"]
    if test_df is not None:
        splits = explicit_splits(df, validation_df, test_df, text_col, label_col, seed, validation)
    else:
        splits = split_frame(df, text_col, label_col, train, validation, test, seed, near_duplicate_threshold)
    return with_removals(splits, cleaned)


@task(name="publish-split", timeout_seconds=120, cache_policy=NO_CACHE)
def publish_split(splits: Splits) -> None:
    """Publish sizes per class as a table artifact: every run, cache hit or not."""
    m = splits.manifest
    classes = sorted({c for sizes in m.class_sizes.values() for c in sizes})
    create_table_artifact(
        [{"class": c, **{s: m.class_sizes[s].get(c, 0) for s in ("train", "validation", "test")}} for c in classes]
        + [{"class": "total", **m.sizes}],
        key=artifact_key("split"), description=f"Split sizes per class (seed {m.seed}, leakage {m.leakage}, "
                                               f"{m.duplicate_groups} duplicate groups kept together, digest {m.digest}"
                                               + (f"; removed before the split: {m.removed}" if m.removed else "") + ")")
    report_stage("split", "%s, leakage %d, digest %s", " / ".join(f"{k} {v}" for k, v in m.sizes.items()), m.leakage,
                 m.digest[:12])


def split_data(inputs: DataInputs, config: PipelineConfig) -> Splits:
    """Clean by the data.rules drop / repair policies, split (cached on the inputs' content hashes and the
    policy), then publish the split's artifact."""
    d, sp = config.data, config.split
    policy = validation_policy(config)
    splits = compute_split(inputs.main.frame, inputs.fingerprints, d.text_column, d.label_column, sp.train,
                           sp.validation, sp.test, sp.seed, inputs.validation.frame if inputs.validation else None,
                           inputs.test.frame if inputs.test else None, sp.near_duplicate_threshold,
                           policy if policy.cleans else None)
    publish_split(splits)
    return splits


@task(name="record-split", timeout_seconds=300, **RETRIED_IO)
def record_split(registry: MlflowRegistry, run_id: str, config: PipelineConfig, dataset: DatasetRef,
                 splits: Splits) -> None:
    """Write the split to the MLflow run: manifest, the three frames as dataset inputs, digest and sizes."""
    m, label = splits.manifest, config.data.label_column
    registry.log_dict(run_id, m.model_dump(), MANIFEST_ARTIFACT)
    registry.log_dataset_inputs(run_id, {k: splits.frame(k) for k in ("train", "validation", "test")}, dataset.uri,
                                {k: f"{m.digest}-{k}" for k in ("train", "validation", "test")}, label)
    registry.set_tags(run_id, {"fineship.split_digest": m.digest})
    registry.log_params(run_id, split_params(config, dataset, m))
