"""A battery of corrupted datasets: each is refused with an error naming the rule (or the reading problem)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from components.data.io import read_dataset
from components.data.validation import ValidationPolicy, validate_frame
from components.errors import DataLoadError

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
REPO = Path(__file__).resolve().parents[2]


def _good(sample_df: pd.DataFrame) -> pd.DataFrame:
    return sample_df.copy()


def _csv(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


# name -> (builder(tmp_path, df) -> path, expected fragment in the error, the rule / problem)
def _cases():
    def w(name, text):
        def build(tmp, df):
            p = tmp / name
            p.write_bytes(text if isinstance(text, bytes) else text.encode())
            return p
        return build

    def frame(fn, name="data.csv"):
        return lambda tmp, df: _csv(tmp / name, fn(df.copy()))

    return {
        "missing text column": (frame(lambda d: d.drop(columns=["text"])), "required_columns", "'text' is missing"),
        "renamed label column": (frame(lambda d: d.rename(columns={"label": "topic"})), "required_columns",
                                 "'label' is missing"),
        "all-null labels": (frame(lambda d: d.assign(label=None)), "label_not_null", "no label"),
        "empty file": (w("empty.csv", b""), None, "empty"),
        "header-only file": (w("header.csv", "text,label\n"), "table_not_empty", "no rows"),
        "non-UTF-8 bytes": (w("latin1.csv", "text,label\ncaf\xe9 news item,business\n".encode("latin-1")), None,
                            "not valid UTF-8"),
        "binary file named .csv": (w("binary.csv", bytes(range(256)) * 40), None, "binary"),
        "labels outside the set": (frame(lambda d: d.assign(label=d.label.where(d.index % 9 != 0, "weather"))),
                                   "labels_in_set", "outside the allowed set"),
        "a single class": (frame(lambda d: d.assign(label="sport")), "at_least_two_classes", "at least 2"),
        "a class with one example": (frame(lambda d: pd.concat([d[d.label != "tech"], d[d.label == "tech"].head(1)])),
                                     "min_examples_per_class", "fewer than"),
        "95% duplicates": (frame(lambda d: pd.concat([d.head(30)] + [d.head(30).sample(frac=1, random_state=i)
                                                                     for i in range(19)])
                                 .assign(label=lambda x: x.label)), "duplicate_rate_excessive", "duplicates"),
        "conflicting labels": (frame(lambda d: pd.concat([d, d.head(10).assign(
            label=lambda x: x.label.map({"business": "tech", "tech": "sport", "sport": "politics",
                                         "politics": "entertainment", "entertainment": "business"}))])),
                               "conflicting_labels", "another label"),
        "a 1 MB text": (frame(lambda d: d.assign(text=["word " * 200_000] + d.text.tolist()[1:])), "text_length",
                        "characters"),
        "whitespace-only texts": (frame(lambda d: d.assign(text=d.text.where(d.index % 11 != 0, "   \t "))),
                                  "text_not_blank", "whitespace"),
        "mixed numeric and string labels": (frame(lambda d: d.assign(label=d.label.where(d.index % 13 != 0, "3"))),
                                            "label_types", "numbers"),
        "ragged CSV rows": (w("ragged.csv", "text,label\nfine,sport\nbad,row,with,extra,fields\n"), None,
                            "malformed rows"),
        "Parquet with wrong column types": (
            lambda tmp, df: (pd.DataFrame({"text": range(len(df)), "label": df.label}).to_parquet(tmp / "t.parquet"),
                             tmp / "t.parquet")[1], "text_is_string", "not strings"),
        "unknown extension": (w("data.xlsx", "text,label\n"), None, "unknown file extension"),
        "path that does not exist": (lambda tmp, df: tmp / "nope" / "data.csv", None, "does not exist"),
        "control characters": (frame(lambda d: d.assign(text=d.text.where(d.index % 17 != 0, "bad\x07bell text"))),
                               "control_characters", "control characters"),
        "label missing from the set": (frame(lambda d: d[d.label != "tech"]), "labels_all_present", "no example"),
        "null texts": (frame(lambda d: d.assign(text=d.text.where(d.index % 5 != 0, None))), "text_not_null",
                       "no value"),
    }


CASES = _cases()


def _policy():
    return ValidationPolicy(labels=LABELS, min_examples_per_class=5)


@pytest.mark.parametrize("case", list(CASES))
def test_corrupted_dataset_is_rejected_with_a_named_problem(case, tmp_path, sample_df):
    build, rule, fragment = CASES[case]
    path = build(tmp_path, _good(sample_df))
    try:
        df, _ = read_dataset(str(path))
    except DataLoadError as err:
        assert rule is None, f"{case}: expected rule {rule}, got a read error: {err}"
        assert fragment in str(err) and path.name in str(err)
        return
    assert rule is not None, f"{case}: expected a read error"
    report = validate_frame(df, _policy(), case)
    assert not report.passed, report.summary()
    failed = {r.rule: r for r in report.errors}
    assert rule in failed, report.summary()
    assert fragment in failed[rule].message
    assert failed[rule].column in ("text", "label", None)


def test_battery_has_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_missing_s3_key_is_a_read_error(moto_endpoint):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="fineship-battery")
    s3.put_object(Bucket="fineship-battery", Key="ok.csv", Body=b"text,label\nhello,sport\n")
    assert read_dataset("s3://fineship-battery/ok.csv", s3_client=s3)[0]["label"].tolist() == ["sport"]
    with pytest.raises(DataLoadError, match="NoSuchKey"):
        read_dataset("s3://fineship-battery/missing.csv", s3_client=s3)


@pytest.mark.parametrize("case", ["renamed label column", "a single class", "non-UTF-8 bytes"])
def test_cli_exits_non_zero_on_bad_data(case, tmp_path, sample_df):
    path = CASES[case][0](tmp_path, _good(sample_df))
    r = subprocess.run([sys.executable, "-m", "flows.cli", "validate", "--data", str(path), "--labels",
                        ",".join(LABELS)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), "FINESHIP_HOME": str(tmp_path / "h")})
    assert r.returncode != 0
    assert (CASES[case][2] in r.stdout + r.stderr)


def test_good_dataset_passes(sample_df):
    assert validate_frame(sample_df, _policy(), "good").passed


def test_report_is_json_serialisable(sample_df):
    report = validate_frame(sample_df.head(50), _policy(), "x")
    assert json.loads(report.model_dump_json())["suite_version"] == report.suite_version
