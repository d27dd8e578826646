import pandas as pd
import pytest

from components.data.profile import DriftPolicy, build_profile, compare_profiles, oov_rate, psi


def _by_rule(results):
    return {r.rule: r for r in results}


def test_same_data_does_not_drift(sample_df):
    p = build_profile(sample_df, "text", "label")
    results = _by_rule(compare_profiles(p, p, sample_df.text, DriftPolicy()))
    assert all(r.success for r in results.values())
    assert set(results) == {"drift_label_set", "drift_label_distribution", "drift_text_length", "drift_vocabulary"}


def test_label_distribution_psi_both_sides(sample_df):
    ref = build_profile(sample_df, "text", "label")
    skewed = pd.concat([sample_df[sample_df.label == "sport"]] * 4 + [sample_df[sample_df.label != "sport"]])
    cur = build_profile(skewed, "text", "label")
    value = psi(ref.label_counts, cur.label_counts)
    assert value > 0.05
    assert _by_rule(compare_profiles(ref, cur, skewed.text, DriftPolicy(max_label_psi=value)))[
        "drift_label_distribution"].success
    assert not _by_rule(compare_profiles(ref, cur, skewed.text, DriftPolicy(max_label_psi=value - 1e-6)))[
        "drift_label_distribution"].success


def test_label_set_change_is_an_error(sample_df):
    ref = build_profile(sample_df, "text", "label")
    cur_df = sample_df.assign(label=sample_df.label.replace({"tech": "science"}))
    r = _by_rule(compare_profiles(ref, build_profile(cur_df, "text", "label"), cur_df.text, DriftPolicy()))
    assert not r["drift_label_set"].success and r["drift_label_set"].severity == "error"
    assert "science" in r["drift_label_set"].message and "tech" in r["drift_label_set"].message


def test_length_and_vocabulary_drift(sample_df):
    ref = build_profile(sample_df, "text", "label")
    long = sample_df.assign(text=sample_df.text + " " + "zorblax quuxified " * 40)
    r = _by_rule(compare_profiles(ref, build_profile(long, "text", "label"), long.text, DriftPolicy()))
    assert not r["drift_text_length"].success and r["drift_text_length"].severity == "warning"
    assert not r["drift_vocabulary"].success
    assert oov_rate(ref.vocabulary, sample_df.text) == pytest.approx(0.0)


def test_profile_round_trips_as_json(sample_df):
    p = build_profile(sample_df, "text", "label")
    assert type(p).model_validate_json(p.model_dump_json()) == p
    assert len(p.length_sample) == len(sample_df)
