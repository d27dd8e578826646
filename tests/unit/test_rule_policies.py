"""data.rules: a policy per validation rule (error, warning, drop, repair), applied before the suite runs."""

from __future__ import annotations

import pandas as pd
import pytest

from components.config import RULE_ACTIONS, load_config
from components.data.cleaning import clean_frame, clean_frames, repair_control_characters, with_removals
from components.data.policy import validation_policy
from components.data.split import row_hashes, split_frame
from components.data.validation import DEFAULT_SEVERITY, ValidationPolicy, normalise_text, validate_frame
from components.errors import ConfigError

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
SWAP = {"business": "tech", "tech": "sport", "sport": "politics", "politics": "entertainment",
        "entertainment": "business"}


def _policy(**rules) -> ValidationPolicy:
    return ValidationPolicy(labels=LABELS, min_examples_per_class=5, rules=rules)


def dirty(sample_df: pd.DataFrame) -> pd.DataFrame:
    """The sample data with both fixable faults: control characters in some texts, texts under two labels."""
    d = sample_df.copy()
    bell = d.index % 13 == 0
    d.loc[bell, "text"] = d.loc[bell, "text"].str.replace(" ", " \x07", n=1) + "\x0bend"
    return pd.concat([d, d.iloc[1:11].assign(label=lambda x: x.label.map(SWAP))], ignore_index=True)


@pytest.mark.parametrize("override, fragment", [
    ("data.rules.conflicting_labels=repair", "data.rules.conflicting_labels: Value error, conflicting_labels takes "
                                             "error | warning | drop"),
    ("data.rules.text_not_null=warning", "text_not_null takes error | drop"),
    ("data.rules.table_not_empty=warning", "'table_not_empty' is always an error"),
    ("data.rules.conflicting_label=drop", "'conflicting_label' is not a validation rule"),
])
def test_a_value_that_makes_no_sense_fails_at_config_load(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_the_policy_maps_every_rule_and_unset_rules_keep_their_severity():
    policy = validation_policy(load_config(None, ["data.rules.conflicting_labels=drop",
                                                  "data.rules.class_imbalance=error"]))
    assert set(policy.rules) == set(RULE_ACTIONS)
    assert policy.rules["conflicting_labels"] == "drop" and policy.rules["class_imbalance"] == "error"
    assert {k: v for k, v in policy.rules.items() if k not in ("conflicting_labels", "class_imbalance")} == {
        k: v for k, v in DEFAULT_SEVERITY.items() if k not in ("conflicting_labels", "class_imbalance")}
    assert policy.cleans and not validation_policy(load_config(None)).cleans
    # warn_on_duplicates=false still switches the duplicates rule off unless data.rules.duplicates is set
    assert validation_policy(load_config(None, ["data.warn_on_duplicates=false"])).action("duplicates") is None
    assert validation_policy(load_config(None, ["data.warn_on_duplicates=false", "data.rules.duplicates=drop"])
                             ).action("duplicates") == "drop"
    with pytest.raises(ValueError, match="conflicting_labels takes error | warning | drop"):
        ValidationPolicy(rules={"conflicting_labels": "repair"})


def test_dataset_with_only_fixable_faults_fails_by_default_and_passes_when_cleaned(sample_df, tmp_path):
    df = dirty(sample_df)
    failed = validate_frame(df, _policy(), "dirty")
    assert {r.rule for r in failed.errors} == {"control_characters", "conflicting_labels"}, failed.summary()

    policy = _policy(conflicting_labels="drop", control_characters="repair")
    cleaned = clean_frame(df, policy)
    report = validate_frame(cleaned.frame, policy, "dirty", docs_dir=tmp_path / "docs", cleaning=cleaned.report)
    assert report.passed and not report.errors, report.summary()
    assert report.cleaning.removed == {"conflicting_labels": 20}
    assert report.cleaning.repaired == {"control_characters": 45}
    assert (report.cleaning.rows_in, report.cleaning.rows_out, report.rows) == (len(df), len(df) - 20, len(df) - 20)
    repair = report.cleaning.rules[0]
    assert repair.examples[0]["row"] == 0 and "\x07" in repair.examples[0]["before"]
    assert "\x07" not in repair.examples[0]["after"] and len(repair.examples) == 5
    assert "control_characters: repaired 45 row(s)" in report.summary()
    # Data Docs: the suite page carries the notes, and a page beside the index lists the rows
    page = (tmp_path / "docs" / "cleaning.html").read_text()
    assert "data.rules.conflicting_labels = drop: 20 row(s)" in page
    suite_pages = list((tmp_path / "docs" / "expectations").rglob("*.html"))
    assert any("data.rules.control_characters" in p.read_text() for p in suite_pages)


def test_each_cleaning_action(sample_df):
    d = sample_df.head(60).copy()
    d.loc[0, "text"] = None
    d.loc[1, "text"] = "   "
    d.loc[2, "text"] = "x" * 500
    d.loc[3, "label"] = None
    d.loc[4, "label"] = "weather"
    d = pd.concat([d, d.iloc[[10, 11]], d.iloc[[12]].assign(text=lambda x: x.text.str.upper() + "  ")],
                  ignore_index=True)
    policy = ValidationPolicy(labels=LABELS, max_chars=400, min_examples_per_class=12, rules={
        "text_not_null": "drop", "text_not_blank": "drop", "text_length": "drop", "label_not_null": "drop",
        "labels_in_set": "drop", "duplicates": "drop", "min_examples_per_class": "drop"})
    cleaned = clean_frame(d, policy)
    removed = cleaned.report.removed
    assert {k: removed[k] for k in ("text_not_null", "text_not_blank", "text_length", "label_not_null",
                                    "labels_in_set")} == dict.fromkeys(
        ("text_not_null", "text_not_blank", "text_length", "label_not_null", "labels_in_set"), 1)
    assert removed["duplicates"] == 3
    assert not normalise_text(cleaned.frame.text).duplicated().any()
    assert cleaned.frame.label.value_counts().min() >= 12
    assert sum(removed.values()) == len(d) - len(cleaned.frame)
    assert cleaned.frame.index.isin(d.index).all()  # rows keep their index: reports name the rows as read
    assert {k: len(v) for k, v in cleaned.removed_rows.items()} == removed


def test_duplicates_drop_keeps_the_same_row_whatever_the_order(sample_df):
    d = pd.concat([sample_df.head(30), sample_df.head(30).assign(text=lambda x: x.text.str.upper())],
                  ignore_index=True)
    policy = _policy(duplicates="drop")
    kept = clean_frame(d, policy).frame
    shuffled = clean_frame(d.sample(frac=1, random_state=3), policy).frame
    assert sorted(kept.text) == sorted(shuffled.text) and len(kept) == 30
    assert kept.text.str.isupper().all()  # the smallest text as written is kept ("A" < "a")


def test_repairs_and_label_kind(sample_df):
    assert repair_control_characters("bell\x07 here\x0bthere\ufffd") == "bell here there"
    assert repair_control_characters("that\x92s \x93it\x94\x81") == "that\u2019s \u201cit\u201d"  # cp1252 mojibake
    d = sample_df.head(20).assign(label=[f"{i % 2 + 1}.0" for i in range(20)])
    cleaned = clean_frame(d, ValidationPolicy(rules={"label_format": "repair"}))
    assert set(cleaned.frame.label) == {"1", "2"} and cleaned.report.repaired == {"label_format": 20}
    mixed = sample_df.head(20).assign(label=["1"] * 3 + ["sport"] * 17)
    assert clean_frame(mixed, ValidationPolicy(rules={"label_types": "drop"})).report.removed == {"label_types": 3}


def test_no_cleaning_policy_returns_the_frame_untouched(sample_df):
    cleaned = clean_frame(sample_df, _policy(conflicting_labels="warning"))
    assert cleaned.frame is sample_df and cleaned.report is None


def test_warning_demotes_an_error_rule(sample_df):
    report = validate_frame(dirty(sample_df), _policy(conflicting_labels="warning", control_characters="warning"),
                            "dirty")
    assert report.passed and {r.rule for r in report.warnings} >= {"conflicting_labels", "control_characters"}


def test_split_manifest_records_the_removed_rows(sample_df):
    df = dirty(sample_df)
    policy = _policy(conflicting_labels="drop", control_characters="repair")
    frames, cleaned = clean_frames({"train": df, "validation": None, "test": None}, policy)
    splits = with_removals(split_frame(frames["train"], "text", "label", 0.8, 0.1, 0.1, 42), cleaned)
    m = splits.manifest
    assert m.removed == {"conflicting_labels": 20} and m.repaired == {"control_characters": 45}
    conflicts = df[normalise_text(df.text).isin(set(normalise_text(df.iloc[1:11].text)))]
    assert m.removed_rows["conflicting_labels"] == sorted(row_hashes(normalise_text(conflicts.text),
                                                                     conflicts.label.astype(str)))
    kept = {h for rows in m.row_hashes.values() for h in rows}
    assert not kept & set(m.removed_rows["conflicting_labels"]) and sum(m.sizes.values()) == len(df) - 20
    assert not any("\x07" in t for name in ("train", "validation", "test") for t in splits.frame(name).text)


def test_validation_artifact_lists_what_was_cleaned(sample_df):
    from tasks.data import validation_markdown

    policy = _policy(conflicting_labels="drop", control_characters="repair")
    cleaned = clean_frame(dirty(sample_df), policy)
    md = validation_markdown(validate_frame(cleaned.frame, policy, "dirty", cleaning=cleaned.report))
    assert "## Cleaned before validation" in md and "(20 dropped)" in md
    assert "| data.rules.conflicting_labels | drop | 20 |" in md and "| data.rules.control_characters | repair | 45 |" in md
    assert "'row': 1" in md  # examples of the dropped rows


@pytest.fixture
def cli(monkeypatch):
    from typer.testing import CliRunner

    import flows.cli

    monkeypatch.setattr(flows.cli, "_prepare_env", lambda: None)  # no process-wide environment in a unit test
    return lambda *args: CliRunner().invoke(flows.cli.app, ["validate", *args])


def test_validate_writes_the_cleaned_dataset(cli, sample_df, tmp_path):
    src = tmp_path / "dirty.csv"
    dirty(sample_df).to_csv(src, index=False)
    policy = ["--labels", ",".join(LABELS), "--set", "data.rules.conflicting_labels=drop", "--set",
              "data.rules.control_characters=repair"]
    r = cli("--data", str(src), *policy, "--write-clean", str(tmp_path / "clean.jsonl"))
    assert r.exit_code == 0, r.output
    out = pd.read_json(tmp_path / "clean.jsonl", lines=True)
    assert len(out) == len(sample_df) + 10 - 20 and not out.text.str.contains("\x07").any()
    assert "wrote 565 rows (jsonl)" in r.output
    again = cli("--data", str(tmp_path / "clean.jsonl"), "--labels", ",".join(LABELS))
    assert again.exit_code == 0, again.output  # the cleaned file passes with the default policy

    same = cli("--data", str(src), *policy, "--write-clean", str(src))
    assert same.exit_code == 2 and "is the input file" in same.output
    refused = cli("--data", str(src), "--labels", ",".join(LABELS), "--write-clean", str(tmp_path / "never.csv"))
    assert refused.exit_code == 1 and "not written" in refused.output and not (tmp_path / "never.csv").exists()


def test_policies_are_part_of_the_data_cache_key():
    from prefect.cache_policies import INPUTS

    import tasks.data

    assert "policy" in tasks.data.check_data.fn.__code__.co_varnames  # check-data is keyed on its policy ...
    assert "cleaning" in tasks.data.compute_split.fn.__code__.co_varnames  # ... split-data on the cleaning policy
    inputs = INPUTS - "df" - "validation_df" - "test_df"  # the INPUTS part of tasks.data.DATA_CACHE

    def key(policy):
        return inputs.compute_key(task_ctx=None, inputs={"df": None, "fingerprint": "f", "policy": policy},
                                  flow_parameters={})

    assert key(_policy()) == key(_policy()) != key(_policy(conflicting_labels="drop"))
