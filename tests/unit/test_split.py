import pandas as pd

from components.data.split import explicit_splits, split_frame
from components.data.validation import normalise_text


def _split(df, seed=42):
    return split_frame(df, "text", "label", 0.8, 0.1, 0.1, seed)


def test_sizes_and_stratification(sample_df):
    s = _split(sample_df)
    assert sum(s.manifest.sizes.values()) == len(sample_df)
    for label, n in sample_df.label.value_counts().items():
        test_n = s.manifest.class_sizes["test"][label]
        assert abs(test_n - 0.1 * n) <= 1.5, (label, test_n, n)
        assert s.manifest.class_sizes["validation"][label] >= 1


def test_same_data_any_row_order_same_manifest(sample_df):
    a = _split(sample_df)
    b = _split(sample_df.sample(frac=1, random_state=3).reset_index(drop=True))
    assert a.manifest == b.manifest
    assert a.manifest.digest == b.manifest.digest
    assert a.test.text.tolist() == b.test.text.tolist()


def test_seed_changes_the_split(sample_df):
    assert _split(sample_df, 1).manifest.digest != _split(sample_df, 2).manifest.digest


def test_duplicates_never_span_splits(sample_df):
    dups = sample_df.head(80).assign(text=lambda d: "  " + d.text.str.upper() + " ")
    s = _split(pd.concat([sample_df, dups], ignore_index=True))
    assert s.manifest.leakage == 0
    seen = {}
    for name in ("train", "validation", "test"):
        for t in normalise_text(s.frame(name).text):
            assert seen.setdefault(t, name) == name


def test_explicit_files_drop_overlap_from_train(sample_df):
    test = sample_df.head(50)
    s = explicit_splits(sample_df, None, test, "text", "label", 42, 0.1)
    assert s.manifest.dropped_from_train == 50
    assert s.manifest.leakage == 0
    assert len(s.test) == 50
    assert len(s.train) + len(s.validation) == len(sample_df) - 50


def _with_near_duplicates(sample_df):
    edited = sample_df.head(60).assign(text=lambda d: d.text.str.replace(r"\.$", ", officials said.", regex=True))
    return pd.concat([sample_df, edited], ignore_index=True), edited


def _jaccard(a: str, b: str, k: int = 3) -> float:
    def sh(t):
        w = t.lower().split()
        return {" ".join(w[i:i + k]) for i in range(len(w) - k + 1)}
    x, y = sh(a), sh(b)
    return len(x & y) / len(x | y)


def _placement(s):
    return {t: n for n in ("train", "validation", "test") for t in s.frame(n).text}


def test_near_duplicates_stay_in_one_split(sample_df):
    df, edited = _with_near_duplicates(sample_df)
    pairs = [(a, b) for a, b in zip(sample_df.head(60).text, edited.text) if _jaccard(a, b) >= 0.75]
    assert len(pairs) >= 20
    grouped = _placement(split_frame(df, "text", "label", 0.8, 0.1, 0.1, 42, near_duplicate_threshold=0.6))
    assert all(grouped[a] == grouped[b] for a, b in pairs)
    plain = _placement(split_frame(df, "text", "label", 0.8, 0.1, 0.1, 42))
    assert any(plain[a] != plain[b] for a, b in pairs)  # without grouping, near-duplicates leak


def test_near_duplicate_split_ignores_row_order(sample_df):
    df, _ = _with_near_duplicates(sample_df)
    a = split_frame(df, "text", "label", 0.8, 0.1, 0.1, 42, near_duplicate_threshold=0.7)
    b = split_frame(df.sample(frac=1, random_state=9), "text", "label", 0.8, 0.1, 0.1, 42, near_duplicate_threshold=0.7)
    assert a.manifest == b.manifest


def test_minhash_estimates_jaccard():
    from components.data.near_dup import minhash_signatures, near_duplicate_groups

    a = "the quick brown fox jumps over the lazy dog near the river bank today"
    b = a + " again"
    c = "completely different words about a football match in the rain tonight"
    sig = minhash_signatures([a, b, c], num_perm=128)
    assert (sig[0] == sig[1]).mean() > 0.8
    assert (sig[0] == sig[2]).mean() < 0.2
    g = near_duplicate_groups([a, b, c], threshold=0.8)
    assert g[0] == g[1] != g[2]
