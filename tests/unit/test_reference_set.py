"""The frozen reference set (stored as plain JSON lines) and the gate deciding on it next to the new test split."""

from __future__ import annotations

import pickle

import pandas as pd
import pytest

from components.config import GateConfig
from components.errors import DataLoadError
from components.evaluation.behaviour import BehaviourReport, CaseResult
from components.evaluation.gate import decide
from components.evaluation.metrics import compute_report
from components.evaluation.reference import (ReferenceScores, ReferenceSet, leave_out_seen, read_reference_set,
                                             write_reference_set)
from components.evaluation.render import gate_markdown

LABELS = ["sport", "tech"]


def test_round_trip_keeps_values_exactly(tmp_path):
    test = pd.DataFrame({"body": ["2024-01-01", "123", "Ünïcode \"quoted\"\nnewline", "  padded  "],
                         "y": ["sport", "tech", "sport", 7]})
    path = write_reference_set(test, "body", "y", tmp_path / "reference_test.jsonl")
    assert path.read_text(encoding="utf-8").splitlines()[0] == '{"text":"2024-01-01","label":"sport"}'
    ref = read_reference_set(path, source="champion v1")
    assert ref.texts == test.body.tolist() and ref.labels == ["sport", "tech", "sport", "7"]
    assert ref.rows == 4 and ref.source == "champion v1"
    assert ref.digest == read_reference_set(path).digest
    assert ref.digest != ReferenceSet(texts=ref.texts, labels=["tech"] * 4).digest


@pytest.mark.parametrize("content, message", [
    ('{"text": "a"}\n', "must hold rows with 'text' and 'label'"),
    ('{"text": "a", "label": 3}\n', "row 1 has a text or label that is not a string"),
    ("not json\n", "is not JSON lines"),
])
def test_bad_reference_files_are_refused(tmp_path, content, message):
    path = tmp_path / "reference_test.jsonl"
    path.write_text(content)
    with pytest.raises(DataLoadError, match=message):
        read_reference_set(path, source="champion v2")


def test_a_pickle_is_never_unpickled(tmp_path):
    path = tmp_path / "reference_test.jsonl"
    path.write_bytes(pickle.dumps(pd.DataFrame({"text": ["a"], "label": ["sport"]})))
    with pytest.raises(DataLoadError):
        read_reference_set(path)


def test_rows_trained_on_with_the_same_label_are_left_out():
    ref = ReferenceSet(texts=["The striker  scored.", "Chips got faster.", "A new phone."],
                       labels=["sport", "tech", "tech"])
    kept, left_out = leave_out_seen(ref, ["the striker scored.", "Chips got faster."], ["sport", "sport"])
    # same text and label (after normalising case and spaces): left out; same text, other label: kept as evidence
    assert left_out == 1 and kept.texts == ["Chips got faster.", "A new phone."]
    assert kept.digest != ref.digest
    assert leave_out_seen(ref, ["unrelated"], ["tech"]) == (ref, 0)


def _reports(n, cand_wrong, champ_wrong, digest):
    y = [LABELS[i % 2] for i in range(n)]
    flip = {"sport": "tech", "tech": "sport"}
    cand = [flip[v] if i in cand_wrong else v for i, v in enumerate(y)]
    champ = [flip[v] if i in champ_wrong else v for i, v in enumerate(y)]
    return (compute_report(y, cand, LABELS, "candidate", split_digest=digest),
            compute_report(y, champ, LABELS, "champion", split_digest=digest))


POLICY = GateConfig(min_accuracy=0.0, min_macro_f1=0.0, metric="accuracy", margin=0.02, max_class_recall_drop=0.1,
                    n_bootstrap=500)


def test_poisoned_candidate_passes_its_own_split_but_fails_the_reference_set():
    cand, champ = _reports(200, cand_wrong=set(), champ_wrong=set(range(0, 200, 2)), digest="new")  # relabelled
    ref_cand, ref_champ = _reports(100, cand_wrong=set(range(0, 100, 2)), champ_wrong={1}, digest="reference-x")
    d = decide(cand, champ, POLICY, "1", reference=ReferenceScores(source="champion v1", candidate=ref_cand,
                                                                   champion=ref_champ))
    assert not d.passed
    assert [c.scope for c in d.comparisons] == ["new test split", "champion v1's reference set (100 rows)"]
    assert [c.passed for c in d.comparisons] == [True, False]
    assert d.difference == pytest.approx(0.5)  # the top-level numbers stay those of the new test split
    assert any(r.startswith("champion v1's reference set (100 rows): accuracy vs champion v1") and
               "may be worse than the champion" in r for r in d.reasons)
    assert any(r.startswith("champion v1's reference set (100 rows): recall of 'sport' drops") for r in d.reasons)
    md = gate_markdown(d)
    assert "# Gate REJECTED" in md and "| new test split | 200 |" in md and "**FAIL**" in md


def test_both_sets_passing_passes():
    cand, champ = _reports(200, set(), set(), "new")
    ref_cand, ref_champ = _reports(100, set(), set(), "reference-x")
    d = decide(cand, champ, POLICY, "1", reference=ReferenceScores(source="champion v1", candidate=ref_cand,
                                                                   champion=ref_champ, left_out=3))
    assert d.passed and len(d.comparisons) == 2 and all(c.passed for c in d.comparisons)
    assert any("(100 rows, 3 rows this run trained on left out)" in r for r in d.reasons)


def test_missing_reference_set_is_said_and_the_new_split_decides_alone():
    cand, champ = _reports(200, set(), set(), "new")
    missing = "champion v1 has no frozen reference set (registered before reference sets were stored)"
    d = decide(cand, champ, POLICY, "1", reference=ReferenceScores(source="champion v1", missing=missing))
    assert d.passed and len(d.comparisons) == 1
    assert f"champion v1's reference set: {missing}; decided on the new test split only" in d.reasons


def test_reference_reports_on_different_rows_are_refused():
    cand, champ = _reports(200, set(), set(), "new")
    ref_cand, ref_champ = _reports(100, set(), set(), "reference-x")
    d = decide(cand, champ, POLICY, "1", reference=ReferenceScores(
        source="champion v1", candidate=ref_cand, champion=ref_champ.model_copy(update={"split_digest": "other"})))
    assert not d.passed and any("scored on different rows" in r for r in d.reasons)


def _behaviour(passed: bool) -> BehaviourReport:
    return BehaviourReport(source="checks.yaml", min_pass_rate=1.0, results=[CaseResult(
        kind="minimum functionality", name="case 1", text="The striker scored.", predicted="sport" if passed else
        "tech", expected="sport", passed=passed)])


@pytest.mark.parametrize("passed", [True, False])
def test_behavioural_checks_decide_with_or_without_champion(passed):
    cand, champ = _reports(200, set(), set(), "new")
    for champion in (None, champ):
        d = decide(cand, champion, POLICY, "1" if champion else None, behaviour=_behaviour(passed))
        assert d.passed is passed and d.behaviour is not None
        assert any(r.startswith("behaviour (minimum functionality): ") for r in d.reasons)
    assert "no champion: floors and behavioural checks alone apply" in decide(
        cand, None, POLICY, behaviour=_behaviour(passed)).reasons
    md = gate_markdown(decide(cand, None, POLICY, behaviour=_behaviour(passed)))
    assert "## Behavioural checks" in md and ("Failed cases" in md) is not passed


class _FakeRegistry:
    """The two MLflow calls the champion-record task makes, over a dict of artifact path -> text."""

    def __init__(self, files: dict[str, str]):
        self.files, self.client = files, self

    def list_artifacts(self, run_id, path):
        from types import SimpleNamespace

        return [SimpleNamespace(path=p) for p in self.files if p.startswith(path + "/")]

    def download_artifacts(self, run_id, path, dst):
        from pathlib import Path

        out = Path(dst) / path
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(self.files[path])
        return str(out)

    def load_run_json(self, run_id, path):
        import json

        return json.loads(self.files[path]) if path in self.files else None


def _version(run_id="r1"):
    from components.registry.mlflow_registry import RegisteredVersion

    return RegisteredVersion(name="news", version="4", run_id=run_id)


def test_an_older_champion_without_a_reference_set_is_named():
    from prefect.logging import disable_run_logger

    from tasks.evaluation import RECORDED_REPORT, load_champion_record

    recorded = compute_report(["sport", "tech"], ["sport", "tech"], LABELS, "m")
    registry = _FakeRegistry({RECORDED_REPORT: recorded.model_dump_json(), "data/profile.json": "{}"})
    with disable_run_logger():
        record = load_champion_record.fn(registry, _version())
        assert record.recorded == recorded and record.reference is None
        assert record.reference_missing == (
            "champion v4 has no frozen reference set (registered before reference sets were stored)")
        assert load_champion_record.fn(registry, _version(run_id=None)).reference_missing == (
            "champion v4 has no training run, so no frozen reference set")
        registry.files["data/reference_test.jsonl"] = '{"text": "Goal!", "label": "sport"}\n'
        record = load_champion_record.fn(registry, _version())
    reference = record.reference
    assert record.reference_missing is None and reference.texts == ["Goal!"]
    assert reference.source == "champion v4, MLflow run r1: data/reference_test.jsonl"
