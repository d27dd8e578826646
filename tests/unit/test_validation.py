import pandas as pd
import pytest

from components.data.validation import ValidationPolicy, normalise_text, validate_frame

LABELS = ["business", "entertainment", "politics", "sport", "tech"]


def _policy(**kw):
    return ValidationPolicy(labels=LABELS, min_examples_per_class=5, **kw)


def _failed(report):
    return {r.rule for r in report.results if not r.success}


def test_sample_dataset_passes(sample_df):
    report = validate_frame(sample_df, _policy(), "sample")
    assert report.passed, report.summary()
    assert _failed(report) == set()
    assert sum(report.class_counts.values()) == len(sample_df)


@pytest.mark.parametrize(
    "mutate, rule",
    [
        (lambda d: d.assign(text=[None] + d["text"].tolist()[1:]), "text_not_null"),
        (lambda d: d.assign(text=["   "] + d["text"].tolist()[1:]), "text_not_blank"),
        (lambda d: d.assign(label=["weather"] + d["label"].tolist()[1:]), "labels_in_set"),
        (lambda d: d.assign(label=[None] + d["label"].tolist()[1:]), "label_not_null"),
        (lambda d: d.assign(text=[12345] + d["text"].tolist()[1:]), "text_is_string"),
        (lambda d: d.assign(label="sport"), "at_least_two_classes"),
        (lambda d: d.head(0), "table_not_empty"),
        (lambda d: d.assign(text=[f"{i * 1.5:.2f}" for i in range(len(d))]), "text_not_numeric"),
        (lambda d: d.assign(label=d.label.map({k: f"{i}.0" for i, k in enumerate(LABELS)})), "label_format"),
        (lambda d: d.assign(text=d.text.str.replace("'", "\x92")), "control_characters"),  # cp1252 read as Latin-1
    ],
)
def test_each_error_rule_fires(sample_df, mutate, rule):
    report = validate_frame(mutate(sample_df.copy()), _policy(), "bad")
    assert not report.passed
    assert rule in _failed(report), report.summary()
    failing = next(r for r in report.results if r.rule == rule)
    assert failing.severity == "error"
    assert failing.message and failing.message != "ok"


def test_min_examples_per_class_names_the_rows(sample_df):
    df = pd.concat([sample_df, pd.DataFrame({"text": ["A lone weather report about rain."], "label": ["tech"]})])
    small = df[df.label != "tech"].head(100)
    small = pd.concat([small, pd.DataFrame({"text": ["only one tech item"], "label": ["tech"]})], ignore_index=True)
    report = validate_frame(small, _policy(), "small")
    assert "min_examples_per_class" in _failed(report)
    rule = next(r for r in report.results if r.rule == "min_examples_per_class")
    assert rule.examples and rule.examples[0]["label"] == "tech"


def test_missing_column_is_named(sample_df):
    report = validate_frame(sample_df.drop(columns=["label"]), _policy(), "nolabel")
    assert not report.passed
    assert report.results[0].rule == "required_columns"
    assert "'label'" in report.results[0].message and "--label-column" in report.results[0].message


def test_missing_column_diagnoses_case_and_a_missing_header(sample_df):
    cased = validate_frame(sample_df.rename(columns={"text": "Body Text", "label": "Label"}),
                           _policy(text_column="body_text"), "cased")
    assert "'Body Text' differs from 'body_text' only in case" in cased.results[0].message
    assert "data.label_column='Label'" in cased.results[1].message
    headless = sample_df.iloc[1:].copy()
    headless.columns = sample_df.iloc[0].tolist()  # the first data row read as the header
    report = validate_frame(headless, _policy(), "headless")
    assert all("no header row" in r.message for r in report.results)


def test_a_few_numbers_among_texts_are_not_the_wrong_column(sample_df):
    report = validate_frame(sample_df.assign(text=sample_df.text.where(sample_df.index % 3 != 0, "2024")), _policy(),
                            "some numbers")
    assert "text_not_numeric" not in _failed(report)


def test_duplicates_are_a_warning_not_an_error(sample_df):
    dup = pd.concat([sample_df, sample_df.head(60).assign(text=lambda d: d.text.str.upper())], ignore_index=True)
    report = validate_frame(dup, _policy(), "dups")
    assert report.passed
    assert [r.rule for r in report.warnings] == ["duplicates"]
    assert report.warnings[0].unexpected_count == 120


def test_normalise_text():
    assert normalise_text(pd.Series(["  Hello\tWORLD \n"])).tolist() == ["hello world"]
