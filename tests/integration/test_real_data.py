"""Real public data from ../shared/data (skipped cleanly when it is absent)."""

from __future__ import annotations

from components.data.io import read_dataset
from components.data.split import split_frame
from components.data.validation import ValidationPolicy, normalise_text, validate_frame
from tests.support.cli import run_cli


def test_bbc_news_validates_and_duplicates_stay_together(shared_data):
    df, ref = read_dataset(str(shared_data / "bbc-news" / "bbc-text.csv"))
    assert ref.rows == 2225
    report = validate_frame(df, ValidationPolicy(text_column="text", label_column="category"), "bbc")
    assert report.passed, report.summary()
    assert [r.rule for r in report.warnings] == ["duplicates"]
    dup = report.warnings[0]
    assert "101 duplicated texts" in dup.message and dup.unexpected_count == 202
    assert report.class_counts == {"sport": 511, "business": 510, "politics": 417, "tech": 401, "entertainment": 386}

    splits = split_frame(df, "text", "category", 0.8, 0.1, 0.1, 42, near_duplicate_threshold=0.8)
    assert splits.manifest.leakage == 0
    where: dict[str, set[str]] = {}
    for name in ("train", "validation", "test"):
        for t in normalise_text(splits.frame(name).text):
            where.setdefault(t, set()).add(name)
    norm = normalise_text(df.text)
    duplicated = set(norm[norm.duplicated(keep=False)])
    assert len(duplicated) == 101
    assert all(len(where[t]) == 1 for t in duplicated)


def test_fineship_validate_cli_on_bbc(shared_data, tmp_path):
    r = run_cli(["validate", "--data", str(shared_data / "bbc-news" / "bbc-text.csv"), "--text-column", "text",
                 "--label-column", "category"], tmp_path, FINESHIP_HOME=str(tmp_path / "h"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[WARNING] duplicates" in r.stdout and "PASSED" in r.stdout
