import json

import pandas as pd
import pytest

from components.data.io import detect_format, read_dataset
from components.errors import DataLoadError


def test_reads_every_format_the_same(tmp_path, sample_df):
    df = sample_df.head(20)
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_csv(tmp_path / "d.tsv", sep="\t", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in df.to_dict("records")))
    for name in ("d.csv", "d.tsv", "d.parquet", "d.jsonl"):
        got, ref = read_dataset(str(tmp_path / name))
        assert got["text"].tolist() == df["text"].tolist(), name
        assert ref.rows == 20 and ref.columns == ["text", "label"]
        assert len(ref.fingerprint) == 64


def test_fingerprint_tracks_content(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\nhello,x\n")
    (tmp_path / "b.csv").write_text("text,label\nhello,y\n")
    assert read_dataset(str(tmp_path / "a.csv"))[1].fingerprint != read_dataset(str(tmp_path / "b.csv"))[1].fingerprint


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("missing.csv", None, "does not exist"),
        ("empty.csv", b"", "empty"),
        ("latin1.csv", "text,label\nok,a\ncaf\xe9 au lait,b\n".encode("latin-1"), "row 3"),
        ("binary.csv", b"\x00\x01\x02PK\x03\x04" * 50, "binary"),
        ("ragged.csv", b"text,label\na,b\nc,d,e,f\n", "malformed rows"),
        ("data.xlsx", b"whatever", "unknown file extension"),
        ("bad.jsonl", b'{"text": "a", "label": "b"}\n{not json}\n', "line 2"),
        ("bad.parquet", b"not parquet at all", "Parquet"),
    ],
)
def test_unreadable_inputs_name_file_and_problem(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataLoadError) as err:
        read_dataset(str(path))
    assert expected in str(err.value)
    assert name in str(err.value)


def test_detect_format():
    assert detect_format("s3://b/k/data.TSV") == "tsv"
    assert detect_format("x.unknown", "csv") == "csv"


def test_directory_is_refused(tmp_path):
    with pytest.raises(DataLoadError, match="directory"):
        read_dataset(str(tmp_path), "csv")


def test_parquet_columns_survive(tmp_path):
    pd.DataFrame({"text": ["a b", "c d"], "label": [1, 2]}).to_parquet(tmp_path / "n.parquet")
    df, _ = read_dataset(str(tmp_path / "n.parquet"))
    assert df["label"].tolist() == [1, 2]
