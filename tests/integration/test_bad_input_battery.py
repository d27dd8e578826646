"""A battery of corrupted datasets: each is refused with an error naming the rule (or the reading problem)."""

from __future__ import annotations

import gzip
import io
import json
import logging
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from components.data.io import read_dataset
from components.data.validation import ValidationPolicy, validate_frame
from components.errors import DataLoadError
from tests.support.cli import run_cli

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
        **_export_cases(w),
    }


def _export_cases(w):
    """What real exports get wrong: headers, the wrong kind of values, files that are not what their name says."""
    def csv_text(df, **kw):
        return df.to_csv(index=False, **kw)

    def build(name, fn):
        return lambda tmp, df: w(name, fn(df))(tmp, df)

    def xlsx(df):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:  # the layout of an Office Open XML workbook, enough to be recognised
            z.writestr("[Content_Types].xml", "<Types/>")
            z.writestr("xl/workbook.xml", "<workbook/>")
            z.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
        return buf.getvalue()

    def damaged_gzip(df):
        blob = gzip.compress(csv_text(df).encode())
        return blob[: len(blob) // 2]

    def nul_inside(df):
        lines = csv_text(df).split("\n")
        lines[40] = lines[40].replace(" ", "\x00", 1)
        return "\n".join(lines).encode()

    return {
        "duplicate column names": (build("dup.csv", lambda d: csv_text(d.assign(extra=d.text).rename(
            columns={"extra": "text"}))), None, "more than once"),
        "header row missing": (build("noheader.csv", lambda d: csv_text(d, header=False)), "required_columns",
                               "no header row"),
        "column names differ in case": (build("case.csv", lambda d: csv_text(d.rename(
            columns={"text": "Text", "label": "LABEL"}))), "required_columns", "only in case"),
        "labels as spreadsheet floats": (build("floats.csv", lambda d: csv_text(d.assign(
            label=d.label.map({k: f"{i}.0" for i, k in enumerate(LABELS, start=1)})))), "label_format",
            "label_format=repair"),
        "text column holding numbers": (build("numbers.csv", lambda d: csv_text(d.assign(
            text=[str(1000 + i) for i in range(len(d))]))), "text_not_numeric", "data.text_column"),
        "text column holding dates": (build("dates.csv", lambda d: csv_text(d.assign(
            text=[f"2024-{1 + i % 12:02d}-{1 + i % 28:02d}" for i in range(len(d))]))), "text_not_numeric",
            "numbers or dates"),
        "Excel workbook named .csv": (build("book.csv", xlsx), None, "Excel workbook"),
        "HTML error page named .csv": (w("page.csv", "<!DOCTYPE html>\n<html><body>403 Forbidden</body></html>"),
                                       None, "HTML page"),
        "ZIP archive named .csv": (w("archive.csv", b"PK\x05\x06" + bytes(18)), None, "unzip it"),
        "NUL bytes inside a CSV": (build("nul.csv", nul_inside), None, "NUL byte(s), the first on line 41"),
        "damaged gzip": (build("cut.csv.gz", damaged_gzip), None, "damaged gzip"),
        "JSON array of arrays in .jsonl": (w("arrays.jsonl", '[["a", "sport"], ["b", "tech"]]'), None,
                                           "not of objects"),
        "Windows-1252 quotes read as C1 controls": (build("cp1252.csv", lambda d: csv_text(d.assign(
            text=d.text.str.replace("'", "\x92")))), "control_characters", "control_characters=repair"),
    }


def _read_as_is_cases():
    """Exports that are safe to read as what they are: each must give the good data (with a warning saying how)."""
    def text(df, **kw):
        return df.to_csv(index=False, **kw)

    def parquet(df):
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()

    return {
        "UTF-8 BOM in the header": ("bom.csv", lambda d: b"\xef\xbb\xbf" + text(d).encode(), None),
        "BOM decoded twice": ("bom2.csv", lambda d: ("\u00ef\u00bb\u00bf" + text(d)).encode(), "decoded twice"),
        "whitespace around column names": ("spaces.csv", lambda d: text(d.rename(
            columns={"text": " text ", "label": "label\t"})).encode(), None),
        "gzip named .csv": ("zipped.csv", lambda d: gzip.compress(text(d).encode()), "gzip-compressed"),
        "Parquet named .csv": ("table.csv", parquet, "is a Parquet file"),
        "JSON array in .jsonl": ("array.jsonl", lambda d: json.dumps(d.to_dict("records")).encode(), "JSON array"),
        "mixed line endings": ("crlf.csv", lambda d: "".join(
            line + ("\r\n" if i % 2 else "\n") for i, line in enumerate(text(d).splitlines())).encode(), None),
        "UTF-16 with BOM, tab-separated (Excel Unicode Text)": (
            "unicode.csv", lambda d: text(d, sep="\t").encode("utf-16"), "UTF-16"),
        "UTF-16 without BOM": ("utf16.csv", lambda d: text(d).encode("utf-16-le"), "UTF-16-LE"),
        "semicolon-separated CSV": ("semi.csv", lambda d: text(d, sep=";").encode(), "semicolon"),
        "trailing NUL padding": ("padded.csv", lambda d: text(d).encode() + bytes(512), "NUL bytes"),
    }


READ_AS_IS = _read_as_is_cases()


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
    assert len(_export_cases(lambda *a: None)) + len(READ_AS_IS) >= 20  # issue 16: what real exports get wrong


def test_stray_quotes_in_a_tab_separated_file_are_read_as_characters(tmp_path, sample_df, caplog):
    texts = sample_df.text.tolist()
    texts[3], texts[7] = '"Breaking: ' + texts[3], texts[7] + ' he said "no'
    path = tmp_path / "quotes.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(texts, sample_df.label)))
    with caplog.at_level(logging.WARNING, logger="components.data.io"):
        df, _ = read_dataset(str(path))
    assert df.text.tolist() == texts and df.label.tolist() == sample_df.label.tolist()
    assert "swallowed 4 line(s)" in caplog.text and "quote whole fields" in caplog.text


@pytest.mark.parametrize("case", list(READ_AS_IS))
def test_mislabelled_export_is_read_as_what_it_is(case, tmp_path, sample_df, caplog):
    name, content, warning = READ_AS_IS[case]
    path = tmp_path / name
    path.write_bytes(content(_good(sample_df)))
    with caplog.at_level(logging.WARNING, logger="components.data.io"):
        df, ref = read_dataset(str(path))
    assert list(df.columns) == ["text", "label"], case
    assert df["text"].tolist() == sample_df["text"].tolist() and df["label"].tolist() == sample_df["label"].tolist()
    if warning is not None:
        assert warning in caplog.text and path.name in caplog.text, caplog.text


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
    r = run_cli(["validate", "--data", str(path), "--labels", ",".join(LABELS)], tmp_path,
                FINESHIP_HOME=str(tmp_path / "h"))
    assert r.returncode != 0
    assert (CASES[case][2] in r.stdout + r.stderr)


def test_good_dataset_passes(sample_df):
    assert validate_frame(sample_df, _policy(), "good").passed


def test_report_is_json_serialisable(sample_df):
    report = validate_frame(sample_df.head(50), _policy(), "x")
    assert json.loads(report.model_dump_json())["suite_version"] == report.suite_version
