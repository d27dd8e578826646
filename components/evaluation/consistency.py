"""Label consistency: does the champion agree with the new labels as well as with its own test labels?

Before any training, the champion predicts (a sample of) the new training data. For each class its
agreement with the new labels (its recall on the new data) is compared with its recorded recall of that
class on its own test split, taken at the lower end of its 95% interval: a test split holds few rows per
class, and a recall of 9 in 12 says little more than "at least 0.47". Data whose labels were swapped or
corrupted shows as a collapse of agreement for the affected classes, while a label-distribution drift check
sees nothing (a swap keeps the class counts). The confusion between the new labels and the champion's
predictions names the likely swap.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from components.evaluation.stats import wilson_lower_bound

_EPS = 1e-9  # a drop equal to the limit up to float rounding (0.9 - 0.6 > 0.3 in floats) passes


class ClassAgreement(BaseModel):
    """How the champion's predictions agree with the new labels of one class."""

    model_config = ConfigDict(frozen=True)

    label: str
    support: int = Field(description="Rows with this new label in the checked sample.")
    agreement: float | None = Field(None, description="Share of those rows the champion predicts as this label.")
    recorded_recall: float | None = Field(None, description="The champion's recall of this label on its own test "
                                                            "split.")
    recorded_support: int = Field(0, description="Rows of this label in that test split.")
    baseline: float | None = Field(None, description="Lower end of the 95% Wilson interval of recorded_recall.")
    drop: float | None = Field(None, description="baseline - agreement.")
    top_prediction: str | None = Field(None, description="The champion's most frequent other prediction for them.")
    top_share: float = Field(0.0, description="Share of the rows predicted as `top_prediction`.")
    status: Literal["consistent", "inconsistent", "not checked"]
    note: str = ""


class ConsistencyReport(BaseModel):
    """The label-consistency verdict on new data, with what the champion predicted for each new label."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    checked: bool = Field(True, description="False when the check did not run (no champion, disabled, ...).")
    champion_version: str | None = None
    rows: int = 0
    max_drop: float | None = None
    min_support: int = 0
    classes: list[ClassAgreement] = Field(default_factory=list)
    swaps: list[tuple[str, str]] = Field(default_factory=list, description="Pairs of labels that look swapped.")
    findings: list[str] = Field(default_factory=list, description="One sentence per problem (or why not checked).")

    @property
    def inconsistent(self) -> list[str]:
        return [c.label for c in self.classes if c.status == "inconsistent"]

    def summary(self) -> str:
        if not self.checked:
            return "label consistency not checked: " + "; ".join(self.findings)
        if self.passed:
            return (f"label consistency passed: the champion agrees with the new labels of every checked class "
                    f"within {self.max_drop:.2f} of its recall on its own test split ({self.rows} rows checked)")
        return "label consistency FAILED: " + "; ".join(self.findings)


    def failure_message(self) -> str:
        """The message of the `LabelConsistencyError` this report raises: what looks wrong and what to do."""
        champion = f"champion v{self.champion_version}" if self.champion_version else "the champion"
        return (f"label consistency against {champion} failed: {'; '.join(self.findings)}. Nothing was trained. "
                "Fix the labels in the data; if the classes' meaning changed on purpose, rerun with "
                "gate.max_label_agreement_drop=null (the champion's frozen reference set still gates the candidate).")


def skipped(reason: str, champion_version: str | None = None) -> ConsistencyReport:
    """A report saying the check did not run, and why."""
    return ConsistencyReport(passed=True, checked=False, champion_version=champion_version, findings=[reason])


def assess_label_consistency(texts: Sequence[str], labels: Sequence[str],
                             predict: Callable[[list[str]], Sequence[str]] | None,
                             recorded: Mapping[str, tuple[float, int]] | None, max_drop: float | None,
                             min_support: int, champion_version: str | None) -> ConsistencyReport:
    """The whole rule: why it does not run (disabled, no champion, no recorded report), or the champion's
    `predict`ions of `texts` checked against the new `labels` by `check_label_consistency`."""
    if max_drop is None:
        return skipped("disabled (gate.max_label_agreement_drop is null)")
    if predict is None or champion_version is None:
        return skipped("no champion to compare the new labels with")
    if not recorded:
        return skipped(f"champion v{champion_version} has no recorded evaluation report of its own test split",
                       champion_version)
    predictions = list(predict(list(texts)))
    return check_label_consistency(labels, predictions, recorded, max_drop, min_support, champion_version)


def check_label_consistency(labels: Sequence[str], predictions: Sequence[str],
                            recorded: Mapping[str, tuple[float, int]], max_drop: float, min_support: int,
                            champion_version: str | None = None) -> ConsistencyReport:
    """Compare the champion's agreement with new `labels` (its `predictions` of the same rows) per class.

    `recorded` maps each label to the champion's (recall, support) on its own test split. A class is
    inconsistent when it has at least `min_support` rows and its agreement falls more than `max_drop` below
    the lower end of the 95% Wilson interval of that recall (a drop equal to `max_drop` passes). Classes
    with fewer rows, or that the champion has no recorded recall for (a label it never learnt), are not
    checked. Two
    inconsistent classes whose rows the champion mostly predicts as each other are reported as swapped.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    by_label: dict[str, Counter[str]] = {}
    for y, p in zip(map(str, labels), map(str, predictions)):
        by_label.setdefault(y, Counter())[p] += 1
    classes = [_agreement(label, by_label[label], recorded.get(label), max_drop, min_support)
               for label in sorted(by_label)]
    flagged = {c.label: c for c in classes if c.status == "inconsistent"}
    swaps = sorted({tuple(sorted((a, c.top_prediction))) for a, c in flagged.items()
                    if c.top_prediction in flagged and flagged[c.top_prediction].top_prediction == a})
    findings = [_finding(c, swaps) for c in flagged.values()]
    findings += [f"labels '{a}' and '{b}' look swapped" for a, b in swaps]
    return ConsistencyReport(passed=not flagged, champion_version=champion_version, rows=len(labels),
                             max_drop=max_drop, min_support=min_support, classes=classes,
                             swaps=[(a, b) for a, b in swaps], findings=findings)


def _agreement(label: str, predicted: Counter[str], recorded: tuple[float, int] | None, max_drop: float,
               min_support: int) -> ClassAgreement:
    support = sum(predicted.values())
    agreement = predicted[label] / support
    others = [(n, p) for p, n in predicted.items() if p != label]
    top_n, top = max(others, key=lambda x: (x[0], x[1])) if others else (0, None)
    common = dict(label=label, support=support, agreement=agreement, top_prediction=top, top_share=top_n / support)
    if recorded is None:
        return ClassAgreement(**common, status="not checked", note="the champion has no recorded recall of it "
                                                                  "(a label new since the champion)")
    recall, n = recorded
    baseline = wilson_lower_bound(round(recall * n), n)
    common |= dict(recorded_recall=recall, recorded_support=n, baseline=baseline)
    drop = baseline - agreement
    if support < min_support:
        return ClassAgreement(**common, drop=drop, status="not checked",
                              note=f"{support} rows, fewer than the {min_support} needed to judge")
    return ClassAgreement(**common, drop=drop, status="inconsistent" if drop > max_drop + _EPS else "consistent")


def _finding(c: ClassAgreement, swaps: list[tuple[str, str]]) -> str:
    text = (f"rows labelled '{c.label}' are predicted '{c.top_prediction}' by the champion in {c.top_share:.0%} of "
            f"cases (agreement {c.agreement:.2f}; its recall on {c.recorded_support} rows of its own test split was "
            f"{c.recorded_recall:.2f}, at least {c.baseline:.2f} at 95% confidence)")
    if not any(c.label in pair for pair in swaps) and c.top_prediction is not None:
        text += f"; check whether '{c.top_prediction}' rows were relabelled '{c.label}'"
    return text
