"""Data validation: a versioned Great Expectations 1.x suite, defined in code, run through a Checkpoint.

Rules carry a severity: *error* stops the pipeline, *warning* is reported and the run goes on.
Text-specific checks run on derived columns (normalised text, blank flags, per-class counts) so
that each one is still an ordinary GX expectation with its own result and examples.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

SUITE_VERSION = "1.0.0"
Severity = Literal["error", "warning"]
_WS = re.compile(r"\s+")

# Derived column names: a prefix no user column is expected to have.
NORM = "__fs_norm_text"
IS_STR = "__fs_text_is_str"
CLASS_COUNT = "__fs_class_count"


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

    @property
    def errors(self) -> list[RuleResult]:
        return [r for r in self.results if not r.success and r.severity == "error"]

    @property
    def warnings(self) -> list[RuleResult]:
        return [r for r in self.results if not r.success and r.severity == "warning"]

    def summary(self) -> str:
        """A plain-text report: one line per failed rule, with what to do."""
        head = f"validation of {self.dataset} ({self.rows} rows, suite {self.suite_version}): " + (
            "PASSED" if self.passed else "FAILED"
        )
        lines = [head]
        for r in self.results:
            if not r.success:
                lines.append(f"  [{r.severity.upper()}] {r.rule}: {r.message}")
                for ex in r.examples[:3]:
                    lines.append(f"      e.g. {ex}")
        if len(lines) == 1:
            lines.append(f"  all {len(self.results)} rules passed")
        return "\n".join(lines)


class ValidationPolicy(BaseModel):
    """Thresholds of the suite; defaults suit short news-style texts."""

    model_config = ConfigDict(frozen=True)

    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None
    min_examples_per_class: int = 5
    max_duplicate_rate: float = 0.05


@dataclass(frozen=True)
class _Rule:
    name: str
    severity: Severity
    column: str | None
    build: Callable[[], Any]
    explain: Callable[[dict[str, Any]], str]


def normalise_text(s: pd.Series) -> pd.Series:
    """Lower-case and collapse whitespace: the identity used by duplicate and leakage checks."""
    return s.astype("string").str.lower().str.replace(_WS, " ", regex=True).str.strip()


def _rules(p: ValidationPolicy) -> list[_Rule]:
    import great_expectations as gx

    E = gx.expectations
    t, y = p.text_column, p.label_column
    rules = [
        _Rule("table_not_empty", "error", None, lambda: E.ExpectTableRowCountToBeBetween(min_value=1),
              lambda r: "the dataset has no rows; add labelled examples below the header"),
        _Rule("text_not_null", "error", t, lambda: E.ExpectColumnValuesToNotBeNull(column=t),
              lambda r: f"{r['unexpected_count']} rows have no value in text column '{t}'; fill or drop them"),
        _Rule("text_is_string", "error", t,
              lambda: E.ExpectColumnValuesToBeInSet(column=IS_STR, value_set=[True]),
              lambda r: f"{r['unexpected_count']} values of '{t}' are not strings; store the text as text"),
        _Rule("text_not_blank", "error", t,
              lambda: E.ExpectColumnValuesToNotMatchRegex(column=t, regex=r"^\s*$"),
              lambda r: f"{r['unexpected_count']} texts in '{t}' are empty or whitespace only; drop them"),
        _Rule("label_not_null", "error", y, lambda: E.ExpectColumnValuesToNotBeNull(column=y),
              lambda r: f"{r['unexpected_count']} rows have no label in '{y}'; label or drop them"),
        _Rule("at_least_two_classes", "error", y,
              lambda: E.ExpectColumnUniqueValueCountToBeBetween(column=y, min_value=2),
              lambda r: f"'{y}' holds {r.get('observed_value', 0)} distinct label(s); a classifier needs at least 2"),
        _Rule("min_examples_per_class", "error", y,
              lambda: E.ExpectColumnValuesToBeBetween(column=CLASS_COUNT, min_value=p.min_examples_per_class),
              lambda r: f"{r['unexpected_count']} rows belong to classes with fewer than {p.min_examples_per_class} examples; "
              "add examples or lower data.min_examples_per_class"),
        _Rule("duplicate_rate", "warning", t,
              lambda: E.ExpectColumnValuesToBeUnique(column=NORM, mostly=1 - p.max_duplicate_rate),
              lambda r: f"{r['unexpected_count']} rows share their normalised text with another row "
              f"(over {p.max_duplicate_rate:.0%} allowed); the split keeps duplicates together"),
    ]
    if p.labels is not None:
        rules.insert(5, _Rule(
            "labels_in_set", "error", y,
            lambda: E.ExpectColumnValuesToBeInSet(column=y, value_set=list(p.labels)),
            lambda r: f"{r['unexpected_count']} labels in '{y}' are outside the allowed set {sorted(p.labels)}; "
            "fix them or set data.labels"))
    return rules


def _derived_frame(df: pd.DataFrame, p: ValidationPolicy) -> pd.DataFrame:
    rows = df[[p.text_column, p.label_column]].copy()
    text = rows[p.text_column]
    rows[IS_STR] = np.fromiter((isinstance(v, str) for v in text), dtype=bool, count=len(text)) | text.isna().to_numpy()
    rows[NORM] = normalise_text(text.where(rows[IS_STR], None))
    labels = rows[p.label_column]
    rows[CLASS_COUNT] = labels.map(labels.value_counts(dropna=True)).fillna(0).astype(int)
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


def validate_frame(df: pd.DataFrame, policy: ValidationPolicy, dataset: str = "dataset") -> ValidationReport:
    """Run the suite on `df` through a GX Checkpoint; return a `ValidationReport` (never raises on bad data)."""
    missing = _missing_columns(df, policy)
    if missing:
        return ValidationReport(dataset=dataset, rows=len(df), passed=False, results=missing)

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    rows = _derived_frame(df, policy)
    rules = _rules(policy)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = ctx.data_sources.add_pandas("fineship").add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"fineship-text-v{SUITE_VERSION}"))
    for rule in rules:
        exp = rule.build()
        exp.meta = {"rule": rule.name, "severity": rule.severity}
        suite.add_expectation(exp)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="fineship", data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name="fineship", validation_definitions=[vd],
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
            res.setdefault("unexpected_count", 0)
            results.append(RuleResult(
                rule=rule.name, severity=rule.severity, success=bool(er.success), column=rule.column,
                unexpected_count=int(res.get("unexpected_count") or 0),
                message="ok" if er.success else rule.explain(res),
                examples=[] if er.success else _examples(res, rows, policy)))
    order = {r.name: i for i, r in enumerate(rules)}
    results.sort(key=lambda r: order[r.rule])
    passed = not any(not r.success and r.severity == "error" for r in results)
    counts = rows[policy.label_column].dropna().astype(str).value_counts()
    log.info("validation of %s: %s", dataset, "passed" if passed else "failed")
    return ValidationReport(dataset=dataset, rows=len(df), passed=passed, results=results,
                            class_counts={str(k): int(v) for k, v in counts.items()})
