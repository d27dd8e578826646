"""Test-wide settings: offline, CPU-only, quiet, and everything written under tmp paths."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# A checkout where `make demo` ran has .fineship/operator.env (auto-promotion on): operator policy is off in the
# tests unless a test turns it on (the environment wins over the operator file).
os.environ.setdefault("FINESHIP_AUTO_PROMOTE", "false")
os.environ.setdefault("FINESHIP_ALLOW_SELF_APPROVAL", "false")
# Tiny random models cannot reach fineship's default gate floors: where a test turns auto-promotion on, the
# operator's floor under it is the weakest gate; tests of the floor set their own (test_approval_bypass.py).
os.environ.setdefault("FINESHIP_AUTO_PROMOTE_GATE", '{"min_accuracy": 0, "min_macro_f1": 0, "margin": 0.999, '
                      '"confidence": 0.501, "max_class_recall_drop": 1, "max_label_agreement_drop": null, '
                      '"label_agreement_min_support": 1000000000, "label_agreement_max_rows": 1, '
                      '"behaviour_min_pass_rate": 0}')
# Prefect task results (the validation/split cache) go to a throwaway directory, never ~/.prefect.
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = tempfile.mkdtemp(prefix="fineship-prefect-results-")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sample_df():
    from tests.support.tiny import sample_frame

    return sample_frame()


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, sample_df) -> Path:
    """A tiny BERT fine-tuned for a few steps on the sample data, written as a model package."""
    from components.config import TrainingConfig
    from components.data.split import split_frame
    from components.training.trainer import train
    from tests.support.tiny import LABELS

    s = split_frame(sample_df, "text", "label", 0.8, 0.1, 0.1, 42)
    out = tmp_path_factory.mktemp("tiny-package") / "package"
    train(s.train.text.tolist(), s.train.label.tolist(), s.validation.text.tolist(), s.validation.label.tolist(),
          LABELS, TrainingConfig(model=str(tiny_bert), max_length=48, batch_size=16, learning_rate=3e-3, epochs=20,
                         early_stopping_patience=5),
          out, progress=False)
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent: real-data tests skipped")
    return SHARED_DATA


@pytest.fixture
def reviewers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Real reviewer keys and an operator trust store, exported as FINESHIP_TRUSTED_REVIEWERS / _REVIEWER_KEYS."""
    from tests.support.reviewers import Reviewers

    r = Reviewers(tmp_path / "reviewers")
    for k, v in r.env().items():
        monkeypatch.setenv(k, v)
    return r
