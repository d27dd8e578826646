"""Data validation: a versioned Great Expectations 1.x suite, defined in code, run through a Checkpoint.

Rules carry a severity: *error* stops the pipeline, *warning* is reported and the run goes on.
Text-specific checks run on derived columns (normalised text, character and token lengths,
conflict flags, per-class counts) so that each one is still an ordinary GX expectation with its
own result and offending examples.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

SUITE_VERSION = "2.0.0"
Severity = Literal["error", "warning"]
_WS = re.compile(r"\s+")
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\ud800-\udfff]"
_NUMERIC = re.compile(r"^[+-]?\d+(\.\d+)?$")

# Derived column names: a prefix no user column is expected to have.
TEXT = "__fs_text"
NORM = "__fs_norm_text"
IS_STR = "__fs_text_is_str"
CHARS = "__fs_chars"
TRUNCATED = "__fs_truncated"
CLASS_COUNT = "__fs_class_count"
CONFLICT = "__fs_conflicting_label"
LABEL_KIND_OK = "__fs_label_kind_ok"
TOKEN_SAMPLE = 20_000  # texts tokenised to estimate the truncated share


class RuleResult(BaseModel):
    """The outcome of one validation rule."""

    model_config = ConfigDict(frozen=True)

    rule: str
    severity: Severity
    success: bool
    column: str | None = None
    unexpected_count: int = 0
    message: str
    examples: list[dict[str, Any]] = Field(default_factory=list)


class ValidationReport(BaseModel):
    """What validation found; `passed` is False when any error-severity rule failed."""

    model_config = ConfigDict(frozen=True)

    suite_version: str = SUITE_VERSION
    dataset: str
    rows: int
    passed: bool
    results: list[RuleResult]
    class_counts: dict[str, int] = Field(default_factory=dict)
    docs_dir: str | None = Field(None, description="Great Expectations Data Docs built for this run, if any.")

    @property
    def errors(self) -> list[RuleResult]:
        return [r for r in self.results if not r.success and r.severity == "error"]

    @property
    def warnings(self) -> list[RuleResult]:
        return [r for r in self.results if not r.success and r.severity == "warning"]

    def with_results(self, extra: list[RuleResult]) -> ValidationReport:
        """This report plus more rule results (e.g. drift), with `passed` recomputed."""
        results = self.results + extra
        return self.model_copy(update={"results": results, "passed": not any(
            not r.success and r.severity == "error" for r in results)})

    def summary(self) -> str:
        """A plain-text report: one line per failed rule, with what to do."""
        head = f"validation of {self.dataset} ({self.rows} rows, suite {self.suite_version}): " + (
            "PASSED" if self.passed else "FAILED")
        lines = [head]
        for r in self.results:
            if not r.success:
                lines.append(f"  [{r.severity.upper()}] {r.rule}: {r.message}")
                for ex in r.examples[:3]:
                    lines.append(f"      e.g. {ex}")
        if len(lines) == 1:
            lines.append(f"  all {len(self.results)} rules passed")
        elif self.passed:
            lines.append(f"  no error: {len(self.warnings)} warning(s) only")
        return "\n".join(lines)


class ValidationPolicy(BaseModel):
    """Columns and thresholds of the suite; defaults suit news-style texts."""

    model_config = ConfigDict(frozen=True)

    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    min_examples_per_class: int = 5
    min_chars: int = 1
    max_chars: int = 100_000
    max_duplicate_rate: float = Field(0.5, description="Error above this share of duplicated rows.")
    warn_on_duplicates: bool = Field(True, description="Warn about any duplicated normalised text.")
    max_imbalance_ratio: float = Field(20.0, description="Warn when largest/smallest class exceeds this.")
    max_length: int | None = Field(None, description="Token budget of the model (for the truncation rule).")
    max_truncated_share: float = Field(0.25, description="Warn when more texts than this are truncated.")


@dataclass(frozen=True)
class _Rule:
    name: str
    severity: Severity
    column: str | None
    build: Callable[[], Any]
    explain: Callable[[dict[str, Any]], str]


def normalise_text(s: pd.Series) -> pd.Series:
    """Lower-case and collapse whitespace: the identity used by duplicate and leakage checks."""
    # str.split() with no argument splits on any unicode whitespace run and drops the ends.
    return pd.Series([" ".join(t.lower().split()) if isinstance(t, str) else None for t in s.tolist()],
                     index=s.index, dtype=object)


def _rules(p: ValidationPolicy, with_tokens: bool, imbalance_floor: float, redundant: int) -> list[_Rule]:
    import great_expectations as gx

    E = gx.expectations
    t, y = p.text_column, p.label_column
    n = lambda r: r.get("unexpected_count", 0)  # noqa: E731
    rules = [
        _Rule("table_not_empty", "error", None, lambda: E.ExpectTableRowCountToBeBetween(min_value=1),
              lambda r: "the dataset has no rows; add labelled examples below the header"),
        _Rule("text_not_null", "error", t, lambda: E.ExpectColumnValuesToNotBeNull(column=t),
              lambda r: f"{n(r)} rows have no value in text column '{t}'; fill or drop them"),
        _Rule("text_is_string", "error", t, lambda: E.ExpectColumnValuesToBeInSet(column=IS_STR, value_set=[True]),
              lambda r: f"{n(r)} values of '{t}' are not strings (numbers, lists...); store the text as text"),
        _Rule("text_not_blank", "error", t, lambda: E.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=r"^\s*$"),
              lambda r: f"{n(r)} texts in '{t}' are empty or whitespace only; drop them"),
        _Rule("text_length", "error", t,
              lambda: E.ExpectColumnValuesToBeBetween(column=CHARS, min_value=p.min_chars, max_value=p.max_chars),
              lambda r: f"{n(r)} texts in '{t}' are outside {p.min_chars}..{p.max_chars} characters; split or drop "
              "them (or raise the limit)"),
        _Rule("control_characters", "error", t,
              lambda: E.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=CONTROL_CHARS),
              lambda r: f"{n(r)} texts in '{t}' hold control characters or invalid unicode (U+FFFD, lone "
              "surrogates); clean the export or re-decode the source"),
        _Rule("label_not_null", "error", y, lambda: E.ExpectColumnValuesToNotBeNull(column=y),
              lambda r: f"{n(r)} rows have no label in '{y}'; label or drop them"),
        _Rule("label_types", "error", y,
              lambda: E.ExpectColumnValuesToBeInSet(column=LABEL_KIND_OK, value_set=[True]),
              lambda r: f"{n(r)} labels in '{y}' are numbers while the others are words (or the reverse); use one "
              "kind of label"),
        _Rule("at_least_two_classes", "error", y, lambda: E.ExpectColumnUniqueValueCountToBeBetween(column=y, min_value=2),
              lambda r: f"'{y}' holds {r.get('observed_value', 0)} distinct label(s); a classifier needs at least 2"),
        _Rule("min_examples_per_class", "error", y,
              lambda: E.ExpectColumnValuesToBeBetween(column=CLASS_COUNT, min_value=p.min_examples_per_class),
              lambda r: f"{n(r)} rows belong to classes with fewer than {p.min_examples_per_class} examples; "
              "add examples or lower data.min_examples_per_class"),
        _Rule("conflicting_labels", "error", y, lambda: E.ExpectColumnValuesToBeInSet(column=CONFLICT, value_set=[False]),
              lambda r: f"{n(r)} rows share their normalised text with a row of another label; fix or drop them"),
        _Rule("duplicate_rate_excessive", "error", t,
              lambda: E.ExpectColumnValuesToBeUnique(column=NORM, mostly=1 - p.max_duplicate_rate),
              lambda r: f"{n(r)} rows ({r.get('unexpected_percent', 0):.0f}%) are duplicates, over the "
              f"{p.max_duplicate_rate:.0%} limit; de-duplicate the export"),
        _Rule("class_imbalance", "warning", y,
              lambda: E.ExpectColumnValuesToBeBetween(column=CLASS_COUNT, min_value=imbalance_floor),
              lambda r: f"{n(r)} rows are in classes over {p.max_imbalance_ratio:g}x smaller than the largest; "
              "expect weak recall on them (collect more, or weight classes)"),
    ]
    if p.warn_on_duplicates:
        rules.append(_Rule("duplicates", "warning", t, lambda: E.ExpectColumnValuesToBeUnique(column=NORM),
                           lambda r: f"{n(r)} rows share their normalised text with another row ({redundant} "
                           "duplicated texts); the split keeps each group in one split"))
    if with_tokens:
        rules.append(_Rule(
            "truncated_share", "warning", t,
            lambda: E.ExpectColumnValuesToBeInSet(column=TRUNCATED, value_set=[False], mostly=1 - p.max_truncated_share),
            lambda r: f"{r.get('unexpected_percent', 0):.0f}% of texts (sampled) are longer than max_length="
            f"{p.max_length} tokens and will be truncated; raise training.max_length if the end matters"))
    if p.labels is not None:
        labels = list(p.labels)
        rules.insert(8, _Rule(
            "labels_in_set", "error", y, lambda: E.ExpectColumnValuesToBeInSet(column=y, value_set=labels),
            lambda r: f"{n(r)} labels in '{y}' are outside the allowed set {sorted(labels)}; fix them or set data.labels"))
        rules.insert(9, _Rule(
            "labels_all_present", "error", y, lambda: E.ExpectColumnDistinctValuesToContainSet(column=y, value_set=labels),
            lambda r: f"labels {sorted(set(labels) - set(map(str, r.get('observed_value') or [])))} of the allowed set "
            "have no example; add examples or remove them from data.labels"))
    return rules


def _derived_frame(df: pd.DataFrame, p: ValidationPolicy, tokenizer: Any | None) -> pd.DataFrame:
    rows = df[[p.text_column, p.label_column]].copy()
    raw = rows[p.text_column]
    is_str = np.fromiter((isinstance(v, str) for v in raw), dtype=bool, count=len(raw))
    rows[IS_STR] = is_str | raw.isna().to_numpy()
    text = raw.where(is_str, None)
    rows[TEXT] = text
    rows[NORM] = normalise_text(text)
    rows[CHARS] = text.astype("string").str.len().astype("float")
    labels = rows[p.label_column]
    label_str = labels.where(labels.isna(), labels.astype(str))
    rows[CLASS_COUNT] = label_str.map(label_str.value_counts(dropna=True)).fillna(0).astype(int)
    numeric = label_str.dropna().map(lambda v: bool(_NUMERIC.match(v)))
    majority = bool(numeric.mean() >= 0.5) if len(numeric) else False
    rows[LABEL_KIND_OK] = label_str.map(lambda v: True if v is None or v != v else bool(_NUMERIC.match(v)) == majority)
    pairs = pd.DataFrame({"n": rows[NORM], "y": label_str}).dropna()
    n_labels = pairs.groupby("n")["y"].nunique()
    rows[CONFLICT] = rows[NORM].map(n_labels).fillna(1).astype(int) > 1
    if tokenizer is not None and p.max_length:
        sample = text.dropna()
        if len(sample) > TOKEN_SAMPLE:
            sample = sample.sample(TOKEN_SAMPLE, random_state=0)
        lengths = [len(ids) for ids in tokenizer(sample.tolist(), truncation=False, add_special_tokens=True)["input_ids"]]
        truncated = pd.Series(np.array(lengths) > p.max_length, index=sample.index, dtype=object)
        rows[TRUNCATED] = truncated.reindex(rows.index)
    return rows


def _examples(result: dict[str, Any], rows: pd.DataFrame, p: ValidationPolicy) -> list[dict[str, Any]]:
    out = []
    for i in (result.get("partial_unexpected_index_list") or [])[:5]:
        if isinstance(i, dict):  # GX reports index dicts when index columns are configured
            i = next(iter(i.values()))
        rec: dict[str, Any] = {"row": int(i)}
        for c in (p.text_column, p.label_column):
            v = rows.at[i, c]
            if isinstance(v, str) and len(v) > 120:
                v = v[:117] + "..."
            rec[c] = None if pd.isna(v) is True else v
        out.append(rec)
    return out


def _missing_columns(df: pd.DataFrame, p: ValidationPolicy) -> list[RuleResult]:
    found = ", ".join(map(str, df.columns)) or "none"
    out = []
    for role, col in (("text", p.text_column), ("label", p.label_column)):
        if col not in df.columns:
            out.append(RuleResult(
                rule="required_columns", severity="error", success=False, column=col,
                message=f"required {role} column '{col}' is missing (columns found: {found}); rename the "
                f"column in the file or set data.{role}_column (--{role}-column)"))
    return out


def _docs_site(ctx: Any, docs_dir: Path) -> None:
    ctx.add_data_docs_site(site_name="fineship", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })


def validate_frame(df: pd.DataFrame, policy: ValidationPolicy, dataset: str = "dataset", tokenizer: Any | None = None,
                   docs_dir: str | Path | None = None) -> ValidationReport:
    """Run the suite on `df` through a GX Checkpoint and return a `ValidationReport` (never raises on bad data).

    `tokenizer` (optional) enables the truncation rule; `docs_dir` (optional) receives GX Data Docs.
    """
    missing = _missing_columns(df, policy)
    if missing:
        return ValidationReport(dataset=dataset, rows=len(df), passed=False, results=missing)

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX logs each ephemeral docs directory at INFO on this logger; it is noise for our users.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    rows = _derived_frame(df, policy, tokenizer)
    counts = rows.loc[rows[CLASS_COUNT] > 0, CLASS_COUNT]
    floor = float(counts.max()) / policy.max_imbalance_ratio if len(counts) else 0.0
    rules = _rules(policy, with_tokens=TRUNCATED in rows.columns, imbalance_floor=floor,
                   redundant=int(rows[NORM].dropna().duplicated().sum()))
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        Path(docs_dir).mkdir(parents=True, exist_ok=True)
        _docs_site(ctx, Path(docs_dir))
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=["fineship"]))
    batch = ctx.data_sources.add_pandas("fineship").add_dataframe_asset(re.sub(r"\W+", "-", dataset)[-60:] or "data") \
        .add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"fineship-text-v{SUITE_VERSION}"))
    for rule in rules:
        exp = rule.build()
        exp.meta = {"rule": rule.name, "severity": rule.severity}
        suite.add_expectation(exp)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="fineship", data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name="fineship", validation_definitions=[vd], actions=actions,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5}))
    outcome = checkpoint.run(batch_parameters={"dataframe": rows})
    by_rule = {r.name: r for r in rules}
    results: list[RuleResult] = []
    for run in outcome.run_results.values():
        for er in run.results:
            rule = by_rule[er.expectation_config.meta["rule"]]
            res = dict(er.result or {})
            if er.exception_info and er.exception_info.get("raised_exception"):
                results.append(RuleResult(
                    rule=rule.name, severity=rule.severity, success=False, column=rule.column,
                    message=f"could not be evaluated ({er.exception_info.get('exception_message')}); "
                    "check the column's values"))
                continue
            results.append(RuleResult(
                rule=rule.name, severity=rule.severity, success=bool(er.success), column=rule.column,
                unexpected_count=int(res.get("unexpected_count") or 0),
                message="ok" if er.success else rule.explain(res),
                examples=[] if er.success else _examples(res, rows, policy)))
    order = {r.name: i for i, r in enumerate(rules)}
    results.sort(key=lambda r: order[r.rule])
    passed = not any(not r.success and r.severity == "error" for r in results)
    label_counts = rows[policy.label_column].dropna().astype(str).value_counts()
    log.info("validation of %s: %s", dataset, "passed" if passed else "failed")
    return ValidationReport(dataset=dataset, rows=len(df), passed=passed, results=results,
                            class_counts={str(k): int(v) for k, v in label_counts.items()},
                            docs_dir=str(docs_dir) if docs_dir is not None else None)
