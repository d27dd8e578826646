"""Behavioural checks: small, hand-written cases a candidate must get right, beyond aggregate metrics.

A YAML file (`gate.behaviour_checks`) holds a list of cases of two kinds:

    - text: "The striker scored twice in the cup final."      # minimum functionality:
      expected: sport                                        #   the prediction must be `expected`
    - text: "Manchester won the derby on Sunday."            # invariance: replacing `from` by `to`
      replace: {from: Manchester, to: Liverpool}             #   must not change the prediction

Each case may carry a `name`. The candidate passes when, for each kind, the share of cases it passes is at
least `gate.behaviour_min_pass_rate` (1.0: every case).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import ConfigError

Kind = Literal["minimum functionality", "invariance"]
KINDS: tuple[Kind, ...] = ("minimum functionality", "invariance")
Predict = Callable[[list[str]], Sequence[str]]
"""Texts in, one predicted label per text out."""


class _Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1)
    name: str | None = None


class MinimumFunctionalityCase(_Case):
    """The model must predict `expected` for `text`."""

    expected: str = Field(min_length=1)


class Replacement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", min_length=1)
    to: str


class InvarianceCase(_Case):
    """Replacing `replace.from` by `replace.to` in `text` must not change the prediction."""

    replace: Replacement

    @model_validator(mode="after")
    def _occurs(self) -> InvarianceCase:
        if self.replace.from_ not in self.text:
            raise ValueError(f"replace.from {self.replace.from_!r} does not occur in the text, so the case tests "
                             "nothing")
        return self

    @property
    def variant(self) -> str:
        return self.text.replace(self.replace.from_, self.replace.to)


Case = MinimumFunctionalityCase | InvarianceCase


class BehaviourSuite(BaseModel):
    """The validated cases of one behavioural-checks file."""

    model_config = ConfigDict(frozen=True)

    source: str
    cases: list[Case]


class CaseResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Kind
    name: str
    text: str
    predicted: str
    expected: str | None = Field(None, description="Minimum functionality: the label required.")
    variant: str | None = Field(None, description="Invariance: the text after the replacement.")
    variant_predicted: str | None = None
    passed: bool


class BehaviourReport(BaseModel):
    """How the candidate did on each behavioural case, and the verdict per kind."""

    model_config = ConfigDict(frozen=True)

    source: str
    min_pass_rate: float
    results: list[CaseResult]

    def of(self, kind: Kind) -> list[CaseResult]:
        return [r for r in self.results if r.kind == kind]

    def pass_rate(self, kind: Kind) -> float | None:
        """Share of the cases of `kind` passed; None when the file has none of that kind."""
        cases = self.of(kind)
        return sum(r.passed for r in cases) / len(cases) if cases else None

    @property
    def passed(self) -> bool:
        """Each kind present passes at least `min_pass_rate` of its cases (equal passes)."""
        return all(rate >= self.min_pass_rate for kind in KINDS if (rate := self.pass_rate(kind)) is not None)

    def reasons(self) -> list[str]:
        """One line per kind for the gate's reasons."""
        out = []
        for kind in KINDS:
            cases, rate = self.of(kind), self.pass_rate(kind)
            if rate is None:
                continue
            ok = rate >= self.min_pass_rate
            failed = [r.name for r in cases if not r.passed]
            out.append(f"behaviour ({kind}): {len(cases) - len(failed)}/{len(cases)} cases passed "
                       f"({rate:.0%} {'>=' if ok else '<'} required {self.min_pass_rate:.0%})"
                       + (f"; failed: {', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}" if failed else ""))
        return out


def _case_name(i: int, item: Any) -> str:
    text = item.get("text") if isinstance(item, dict) else None
    label = item.get("name") if isinstance(item, dict) else None
    return f"case {i + 1}" + (f" ({label})" if label else f" (text {str(text)[:40]!r})" if text else "")


def parse_behaviour_suite(data: Any, source: str, labels: Sequence[str] | None = None) -> BehaviourSuite:
    """Validate parsed YAML into a suite; `ConfigError` names the file, the bad case and the field.

    With `labels`, an `expected` label outside them is an error too (the model could never predict it).
    """
    if not isinstance(data, list) or not data:
        raise ConfigError(f"behavioural checks {source}: expected a non-empty list of cases (each with 'text' and "
                          "either 'expected' or 'replace: {from, to}'), got " + type(data).__name__)
    cases: list[Case] = []
    for i, item in enumerate(data):
        where = f"behavioural checks {source}, {_case_name(i, item)}"
        if not isinstance(item, dict) or ("expected" in item) == ("replace" in item):
            raise ConfigError(f"{where}: a case needs 'text' and exactly one of 'expected' (minimum functionality) "
                              "or 'replace: {from: ..., to: ...}' (invariance)")
        model = MinimumFunctionalityCase if "expected" in item else InvarianceCase
        try:
            case = model.model_validate(item)
        except ValidationError as err:
            details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'case'}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"{where}: {details}") from None
        if labels is not None and isinstance(case, MinimumFunctionalityCase) and case.expected not in labels:
            raise ConfigError(f"{where}: expected label {case.expected!r} is not one of the model's labels "
                              f"({', '.join(labels)})")
        cases.append(case.model_copy(update={"name": case.name or f"case {i + 1}"}))
    return BehaviourSuite(source=source, cases=cases)


def load_behaviour_suite(path: str | Path, labels: Sequence[str] | None = None) -> BehaviourSuite:
    """Read and validate a behavioural-checks YAML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"behavioural checks file {p} does not exist (gate.behaviour_checks); give a path "
                          "relative to where the flow runs, or null for none")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"behavioural checks file {p} is not valid YAML: {err}") from None
    return parse_behaviour_suite(data, str(p), labels)


def run_behaviour_checks(predict: Predict, suite: BehaviourSuite, min_pass_rate: float = 1.0) -> BehaviourReport:
    """Predict every case (and every invariance variant) in one batch and judge each case."""
    texts = [c.text for c in suite.cases] + [c.variant for c in suite.cases if isinstance(c, InvarianceCase)]
    predicted = [str(p) for p in predict(texts)]
    if len(predicted) != len(texts):
        raise ValueError(f"predict returned {len(predicted)} labels for {len(texts)} texts")
    variants = iter(predicted[len(suite.cases):])
    results = []
    for case, got in zip(suite.cases, predicted):
        name = case.name or ""
        if isinstance(case, MinimumFunctionalityCase):
            results.append(CaseResult(kind="minimum functionality", name=name, text=case.text, predicted=got,
                                      expected=case.expected, passed=got == case.expected))
        else:
            after = next(variants)
            results.append(CaseResult(kind="invariance", name=name, text=case.text, predicted=got,
                                      variant=case.variant, variant_predicted=after, passed=got == after))
    return BehaviourReport(source=suite.source, min_pass_rate=min_pass_rate, results=results)
