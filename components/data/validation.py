"""Data validation: a versioned Great Expectations 1.x suite, defined in code, run through a Checkpoint.

Rules carry a severity: *error* stops the pipeline, *warning* is reported and the run goes on. A rule's
policy (`data.rules`, `ValidationPolicy.rules`) may also be *drop* or *repair*: `components.data.cleaning`
then removes or fixes the rows it flags before the suite runs, and the rule checks the cleaned data at
its default severity.
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
from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.config import FIXED_RULES, RULE_ACTIONS
from components.data.docs_offline import bundle_offline

log = logging.getLogger(__name__)

SUITE_VERSION = "2.1.0"
Severity = Literal["error", "warning"]
RuleAction = Literal["error", "warning", "drop", "repair"]
_WS = re.compile(r"\s+")
# C0 and C1 controls (C1, U+0080-U+009F, is what Windows-1252 punctuation becomes when decoded as Latin-1), the
# replacement character and lone surrogates.
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ud800-\udfff]"
_NUMERIC = re.compile(r"^[+-]?\d+(\.\d+)?$")
FLOAT_LABEL = r"^[+-]?\d+\.0+$"  # 1.0, 2.0: integer labels a spreadsheet stored as numbers
# A whole number, decimal or percentage, or a date (and time): what a text column holds when it is the wrong column.
NUMBER_OR_DATE = (r"^\s*(?:[+-]?\d[\d.,]*%?|\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}"
                  r"(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?)\s*$")
DEFAULT_SEVERITY: dict[str, Severity] = {
    **{rule: "error" for rule in RULE_ACTIONS}, "class_imbalance": "warning", "duplicates": "warning",
    "truncated_share": "warning"}
"""Each configurable rule's severity when `data.rules` leaves it unset (and after its rows were cleaned)."""

# Derived column names: a prefix no user column is expected to have.
TEXT = "__fs_text"
NORM = "__fs_norm_text"
IS_STR = "__fs_text_is_str"
CHARS = "__fs_chars"
TRUNCATED = "__fs_truncated"
CLASS_COUNT = "__fs_class_count"
CONFLICT = "__fs_conflicting_label"
LABEL_KIND_OK = "__fs_label_kind_ok"
LABEL_STR = "__fs_label_str"
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


class CleanedRule(BaseModel):
    """Rows one rule's policy dropped or repaired before validation."""

    model_config = ConfigDict(frozen=True)

    rule: str
    action: Literal["drop", "repair"]
    rows: int
    examples: list[dict[str, Any]] = Field(default_factory=list, description="Up to five rows, as they were read.")


class CleaningReport(BaseModel):
    """What the `data.rules` drop and repair policies did before the suite ran."""

    model_config = ConfigDict(frozen=True)

    rows_in: int
    rows_out: int
    rules: list[CleanedRule] = Field(default_factory=list)

    @property
    def removed(self) -> dict[str, int]:
        return {r.rule: r.rows for r in self.rules if r.action == "drop"}

    @property
    def repaired(self) -> dict[str, int]:
        return {r.rule: r.rows for r in self.rules if r.action == "repair"}

    def lines(self) -> list[str]:
        """One line per cleaned rule, e.g. `conflicting_labels: drop 12 rows`."""
        return [f"{r.rule}: {'dropped' if r.action == 'drop' else 'repaired'} {r.rows} row(s)" for r in self.rules]


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
    policy: ValidationPolicy | None = Field(None, description="The policy the suite ran with.")
    cleaning: CleaningReport | None = Field(
        None, description="Rows dropped or repaired before the suite ran (data.rules drop / repair), if any.")

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
        if self.cleaning is not None:
            c = self.cleaning
            lines.append(f"  cleaned before validation: {c.rows_in} rows read, {c.rows_out} validated"
                         + "".join(f"\n      {line}" for line in c.lines()))
        if len(lines) == 1 + (self.cleaning is not None):
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
    rules: dict[str, RuleAction] = Field(
        default_factory=dict, description="Action per rule (data.rules): error, warning, drop or repair; a rule "
        "not listed keeps its default severity (duplicates: none without warn_on_duplicates).")

    @field_validator("rules")
    @classmethod
    def _rule_actions(cls, v: dict[str, str]) -> dict[str, str]:
        for rule, action in v.items():
            if rule not in RULE_ACTIONS:
                what = "always an error" if rule in FIXED_RULES else "not a validation rule"
                raise ValueError(f"'{rule}' is {what}; rules with a policy: {', '.join(RULE_ACTIONS)}")
            if action not in RULE_ACTIONS[rule]:
                raise ValueError(f"{rule} takes {' | '.join(RULE_ACTIONS[rule])}, not {action!r}")
        return v

    def action(self, rule: str) -> RuleAction | None:
        """What this policy does with `rule`'s rows; None: the rule is not checked."""
        if rule in self.rules:
            return self.rules[rule]
        if rule == "duplicates" and not self.warn_on_duplicates:
            return None
        return DEFAULT_SEVERITY[rule]

    def severity(self, rule: str) -> Severity:
        """The rule's severity on the (cleaned) data: its action, or its default after a drop / repair."""
        action = self.action(rule)
        return action if action in ("error", "warning") else DEFAULT_SEVERITY[rule]  # type: ignore[return-value]

    @property
    def cleans(self) -> bool:
        """True when some rule drops or repairs rows before validation."""
        return any(a in ("drop", "repair") for a in self.rules.values())


ValidationReport.model_rebuild()


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
    sev = p.severity
    labels = list(p.labels) if p.labels is not None else None
    rules = [
        _Rule("table_not_empty", "error", None, lambda: E.ExpectTableRowCountToBeBetween(min_value=1),
              lambda r: "the dataset has no rows; add labelled examples below the header"),
        _Rule("text_not_null", sev("text_not_null"), t, lambda: E.ExpectColumnValuesToNotBeNull(column=t),
              lambda r: f"{n(r)} rows have no value in text column '{t}'; fill them, or drop them with "
              "data.rules.text_not_null=drop"),
        _Rule("text_is_string", sev("text_is_string"), t,
              lambda: E.ExpectColumnValuesToBeInSet(column=IS_STR, value_set=[True]),
              lambda r: f"{n(r)} values of '{t}' are not strings (numbers, lists...); store the text as text"),
        _Rule("text_not_blank", sev("text_not_blank"), t,
              lambda: E.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=r"^\s*$"),
              lambda r: f"{n(r)} texts in '{t}' are empty or whitespace only; drop them "
              "(data.rules.text_not_blank=drop)"),
        _Rule("text_not_numeric", sev("text_not_numeric"), t,
              lambda: E.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=NUMBER_OR_DATE, mostly=0.5),
              lambda r: f"{n(r)} of the texts in '{t}' ({r.get('unexpected_percent', 0):.0f}%) are numbers or "
              f"dates, not text: '{t}' looks like the wrong column; point data.text_column (--text-column) at the "
              "column holding the texts"),
        _Rule("text_length", sev("text_length"), t,
              lambda: E.ExpectColumnValuesToBeBetween(column=CHARS, min_value=p.min_chars, max_value=p.max_chars),
              lambda r: f"{n(r)} texts in '{t}' are outside {p.min_chars}..{p.max_chars} characters; split or drop "
              "them (data.rules.text_length=drop), or change the limit"),
        _Rule("control_characters", sev("control_characters"), t,
              lambda: E.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=CONTROL_CHARS),
              lambda r: f"{n(r)} texts in '{t}' hold control characters or invalid unicode (U+FFFD, lone "
              "surrogates); clean the export, re-decode the source, or strip them with "
              "data.rules.control_characters=repair"),
        _Rule("label_not_null", sev("label_not_null"), y, lambda: E.ExpectColumnValuesToNotBeNull(column=y),
              lambda r: f"{n(r)} rows have no label in '{y}'; label them, or drop them with "
              "data.rules.label_not_null=drop"),
        _Rule("label_format", sev("label_format"), y,
              lambda: E.ExpectColumnValuesToNotMatchRegex(column=LABEL_STR, regex=FLOAT_LABEL),
              lambda r: f"{n(r)} labels in '{y}' are written as floats (1.0, 2.0): a spreadsheet stored integer "
              "labels as numbers; re-export the column as text, or read 1.0 as 1 with "
              "data.rules.label_format=repair"),
        _Rule("label_types", sev("label_types"), y,
              lambda: E.ExpectColumnValuesToBeInSet(column=LABEL_KIND_OK, value_set=[True]),
              lambda r: f"{n(r)} labels in '{y}' are numbers while the others are words (or the reverse); use one "
              "kind of label"),
    ]
    if labels is not None:
        rules += [
            _Rule("labels_in_set", sev("labels_in_set"), y,
                  lambda: E.ExpectColumnValuesToBeInSet(column=y, value_set=labels),
                  lambda r: f"{n(r)} labels in '{y}' are outside the allowed set {sorted(labels)}; fix them, set "
                  "data.labels, or drop them with data.rules.labels_in_set=drop"),
            _Rule("labels_all_present", "error", y,
                  lambda: E.ExpectColumnDistinctValuesToContainSet(column=y, value_set=labels),
                  lambda r: f"labels {sorted(set(labels) - set(map(str, r.get('observed_value') or [])))} of the "
                  "allowed set have no example; add examples or remove them from data.labels")]
    rules += [
        _Rule("at_least_two_classes", "error", y, lambda: E.ExpectColumnUniqueValueCountToBeBetween(column=y, min_value=2),
              lambda r: f"'{y}' holds {r.get('observed_value', 0)} distinct label(s); a classifier needs at least 2"),
        _Rule("min_examples_per_class", sev("min_examples_per_class"), y,
              lambda: E.ExpectColumnValuesToBeBetween(column=CLASS_COUNT, min_value=p.min_examples_per_class),
              lambda r: f"{n(r)} rows belong to classes with fewer than {p.min_examples_per_class} examples; "
              "add examples, lower data.min_examples_per_class, or drop those classes with "
              "data.rules.min_examples_per_class=drop"),
        _Rule("conflicting_labels", sev("conflicting_labels"), y,
              lambda: E.ExpectColumnValuesToBeInSet(column=CONFLICT, value_set=[False]),
              lambda r: f"{n(r)} rows share their normalised text with a row of another label; fix them, or drop "
              "every row of each conflicting text with data.rules.conflicting_labels=drop"),
        _Rule("duplicate_rate_excessive", sev("duplicate_rate_excessive"), t,
              lambda: E.ExpectColumnValuesToBeUnique(column=NORM, mostly=1 - p.max_duplicate_rate),
              lambda r: f"{n(r)} rows ({r.get('unexpected_percent', 0):.0f}%) are duplicates, over the "
              f"{p.max_duplicate_rate:.0%} limit; de-duplicate the export (data.rules.duplicates=drop keeps one "
              "row of each)"),
        _Rule("class_imbalance", sev("class_imbalance"), y,
              lambda: E.ExpectColumnValuesToBeBetween(column=CLASS_COUNT, min_value=imbalance_floor),
              lambda r: f"{n(r)} rows are in classes over {p.max_imbalance_ratio:g}x smaller than the largest; "
              "expect weak recall on them (collect more, or weight classes)"),
    ]
    if p.action("duplicates") is not None:
        rules.append(_Rule("duplicates", sev("duplicates"), t, lambda: E.ExpectColumnValuesToBeUnique(column=NORM),
                           lambda r: f"{n(r)} rows share their normalised text with another row ({redundant} "
                           "duplicated texts); the split keeps each group in one split"))
    if with_tokens:
        rules.append(_Rule(
            "truncated_share", sev("truncated_share"), t,
            lambda: E.ExpectColumnValuesToBeInSet(column=TRUNCATED, value_set=[False], mostly=1 - p.max_truncated_share),
            lambda r: f"{r.get('unexpected_percent', 0):.0f}% of texts (sampled) are longer than max_length="
            f"{p.max_length} tokens and will be truncated; raise training.max_length if the end matters"))
    return rules


def string_mask(values: pd.Series) -> np.ndarray:
    """True where a value is a Python string."""
    return np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))


def label_strings(labels: pd.Series) -> pd.Series:
    """Labels as strings, missing labels as they are: the identity classes are counted by."""
    return labels.where(labels.isna(), labels.astype(str))


def label_kind_ok(label_str: pd.Series) -> pd.Series:
    """False for a numeric label among mostly word labels, or a word label among mostly numeric ones."""
    numeric = label_str.dropna().map(lambda v: bool(_NUMERIC.match(v)))
    majority = bool(numeric.mean() >= 0.5) if len(numeric) else False
    return label_str.map(lambda v: True if v is None or v != v else bool(_NUMERIC.match(v)) == majority)


def conflicting(norm: pd.Series, label_str: pd.Series) -> pd.Series:
    """True for rows whose normalised text also appears under another label."""
    pairs = pd.DataFrame({"n": norm, "y": label_str}).dropna()
    n_labels = pairs.groupby("n")["y"].nunique()
    return norm.map(n_labels).fillna(1).astype(int) > 1


def _derived_frame(df: pd.DataFrame, p: ValidationPolicy, tokenizer: Any | None) -> pd.DataFrame:
    rows = df[[p.text_column, p.label_column]].copy()
    raw = rows[p.text_column]
    is_str = string_mask(raw)
    rows[IS_STR] = is_str | raw.isna().to_numpy()
    text = raw.where(is_str, None)
    rows[TEXT] = text
    rows[NORM] = normalise_text(text)
    rows[CHARS] = text.astype("string").str.len().astype("float")
    label_str = label_strings(rows[p.label_column])
    rows[LABEL_STR] = label_str
    rows[CLASS_COUNT] = label_str.map(label_str.value_counts(dropna=True)).fillna(0).astype(int)
    rows[LABEL_KIND_OK] = label_kind_ok(label_str)
    rows[CONFLICT] = conflicting(rows[NORM], label_str)
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


def _simple(name: str) -> str:
    return re.sub(r"[\W_]+", "", name).casefold()


def _looks_like_data(name: str, p: ValidationPolicy) -> bool:
    """A column name that reads like a value: a sentence, a number, a label of the allowed set."""
    return len(name) > 40 or len(name.split()) >= 4 or bool(_NUMERIC.match(name)) or name in (p.labels or ())


def _missing_columns(df: pd.DataFrame, p: ValidationPolicy) -> list[RuleResult]:
    cols = [str(c) for c in df.columns]
    found = ", ".join(repr(c if len(c) <= 40 else c[:37] + "...") for c in cols) or "none"
    out = []
    for role, col in (("text", p.text_column), ("label", p.label_column)):
        if col in df.columns:
            continue
        near = [c for c in cols if _simple(c) == _simple(col)]
        seps = [d for d in (";", "\t", "|") if len(cols) == 1 and d in cols[0]]
        if near:
            fix = (f"column '{near[0]}' differs from '{col}' only in case, spacing or punctuation: set "
                   f"data.{role}_column='{near[0]}' (--{role}-column '{near[0]}') or rename the column in the file")
        elif any(_looks_like_data(c, p) for c in cols):
            fix = ("the file seems to have no header row: its first data row was read as the column names; add a "
                   f"header row naming the columns (e.g. '{p.text_column},{p.label_column}') as the first line")
        elif seps:
            fix = (f"the header was read as one column: the file seems separated by {seps[0]!r}; re-export it "
                   "comma-separated (or tab-separated as .tsv)")
        else:
            fix = f"rename the column in the file or set data.{role}_column (--{role}-column)"
        out.append(RuleResult(rule="required_columns", severity="error", success=False, column=col,
                              message=f"required {role} column '{col}' is missing (columns found: {found}); {fix}"))
    return out


def _docs_site(ctx: Any, docs_dir: Path) -> None:
    ctx.add_data_docs_site(site_name="fineship", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })


def validate_frame(df: pd.DataFrame, policy: ValidationPolicy, dataset: str = "dataset", tokenizer: Any | None = None,
                   docs_dir: str | Path | None = None, cleaning: CleaningReport | None = None) -> ValidationReport:
    """Run the suite on `df` through a GX Checkpoint and return a `ValidationReport` (never raises on bad data).

    `tokenizer` (optional) enables the truncation rule; `docs_dir` (optional) receives GX Data Docs; `cleaning`
    (from `components.data.cleaning.clean_frame`, which made `df`) is recorded in the report and the Data Docs.
    """
    missing = _missing_columns(df, policy)
    if missing:
        return ValidationReport(dataset=dataset, rows=len(df), passed=False, results=missing, policy=policy,
                                cleaning=cleaning)

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
        if cleaning is not None:
            (Path(docs_dir) / CLEANING_PAGE).write_text(cleaning_html(cleaning, dataset), encoding="utf-8")
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=["fineship"]))
    batch = ctx.data_sources.add_pandas("fineship").add_dataframe_asset(re.sub(r"\W+", "-", dataset)[-60:] or "data") \
        .add_batch_definition_whole_dataframe("all")
    notes = _cleaning_notes(cleaning, policy)
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"fineship-text-v{SUITE_VERSION}", notes=notes.get("")))
    for rule in rules:
        exp = rule.build()
        exp.meta = {"rule": rule.name, "severity": rule.severity}
        exp.notes = notes.get(rule.name)
        suite.add_expectation(exp)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="fineship", data=batch, suite=suite))
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(
        name="fineship", validation_definitions=[vd], actions=actions,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5}))
    outcome = checkpoint.run(batch_parameters={"dataframe": rows})
    if docs_dir is not None:
        bundle_offline(docs_dir)  # GX's pages load their CSS and scripts from CDNs: the docs must read offline
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
                            docs_dir=str(docs_dir) if docs_dir is not None else None, policy=policy,
                            cleaning=cleaning)


CLEANING_PAGE = "cleaning.html"
"""The page beside the Data Docs' index listing what the drop / repair policies did."""


def cleaning_html(cleaning: CleaningReport, dataset: str) -> str:
    """A standalone HTML page: per cleaned rule, the action, the row count and up to five rows."""
    from html import escape

    parts = [f"<h1>Cleaned before validation: {escape(dataset)}</h1>",
             f"<p>{cleaning.rows_in} rows read, {cleaning.rows_out} validated (suite {SUITE_VERSION}).</p>"]
    for r in cleaning.rules:
        parts.append(f"<h2>data.rules.{escape(r.rule)} = {r.action}: {r.rows} row(s)</h2>")
        if r.examples:
            keys = list(r.examples[0])
            parts.append("<table border=1 cellpadding=4><tr>" + "".join(f"<th>{escape(k)}</th>" for k in keys)
                         + "</tr>" + "".join("<tr>" + "".join(f"<td>{escape(repr(ex.get(k)))}</td>" for k in keys)
                                            + "</tr>" for ex in r.examples) + "</table>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>fineship cleaning</title></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def _cleaning_notes(cleaning: CleaningReport | None, policy: ValidationPolicy) -> dict[str, list[str]]:
    """Data Docs notes (markdown): the suite's lists every cleaned rule, each cleaned rule's lists its rows."""
    if cleaning is None:
        return {}
    head = (f"Before this suite ran, the `data.rules` policies turned {cleaning.rows_in} rows read into "
            f"{cleaning.rows_out} rows validated.")
    notes: dict[str, list[str]] = {"": [head] + [f"* `data.rules.{line.replace(': ', '`: ', 1)}"
                                                 for line in cleaning.lines()]}
    for r in cleaning.rules:
        verb = "dropped" if r.action == "drop" else "repaired"
        notes[r.rule] = [f"`data.rules.{r.rule}={r.action}`: {verb} {r.rows} row(s) before validation; this rule "
                         f"checked the cleaned data at severity {policy.severity(r.rule)}."] + [
            "* " + ", ".join(f"{k} `{v!r}`" for k, v in ex.items()) for ex in r.examples]
    return notes
