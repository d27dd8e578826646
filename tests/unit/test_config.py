from pathlib import Path

import pytest

from components.config import PipelineConfig, load_config, parse_override
from components.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "flows" / "configs"


@pytest.mark.parametrize("preset", ["demo.yaml", "ci.yaml"])
def test_presets_load(preset):
    cfg = load_config(CONFIGS / preset)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.data.labels == ["business", "entertainment", "politics", "sport", "tech"]


def test_defaults_are_embedded_model_and_local_target():
    cfg = load_config(None)
    assert cfg.training.model == "default"
    assert cfg.deploy.target == "local"
    assert cfg.deploy.host == "127.0.0.1"


def test_overrides_are_typed_and_nested():
    cfg = load_config(CONFIGS / "demo.yaml", ["training.epochs=2", "split.seed=7", "data.labels=[a, b]",
                                               "training.learning_rate=0.001"])
    assert cfg.training.epochs == 2
    assert cfg.split.seed == 7
    assert cfg.data.labels == ["a", "b"]
    assert cfg.training.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "override, field",
    [
        ("training.epochs=0", "training.epochs"),
        ("training.learning_rate=-1", "training.learning_rate"),
        ("split.train=0.9", "split"),
        ("training.batch_size=many", "training.batch_size"),
        ("data.labels=[only]", "data.labels"),
        ("gate.min_accuracy=1.5", "gate.min_accuracy"),
        ("training.epocs=3", "training.epocs"),
        ("registry.model_name=bad name!", "registry.model_name"),
        ("deploy.target=mars", "deploy.target"),
    ],
)
def test_invalid_values_fail_at_load_naming_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "demo.yaml", [override])
    assert field in str(err.value)


def test_unknown_field_says_how_to_fix():
    with pytest.raises(ConfigError, match="unknown field"):
        load_config(None, ["training.epocs=3"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.field=value"):
        parse_override("training.epochs")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_settings_have_the_fineship_prefix(monkeypatch, tmp_path):
    from flows.settings import Settings

    monkeypatch.setenv("FINESHIP_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("FINESHIP_AWS_REGION", "eu-west-1")
    s = Settings()
    assert s.aws_region == "eu-west-1"
    assert s.mlflow_tracking_uri == f"sqlite:///{(tmp_path / 'h' / 'mlflow.db').resolve()}"
    assert s.mlflow_artifact_root == (tmp_path / "h" / "artifacts").resolve()
    monkeypatch.setenv("FINESHIP_TRACKING_URI", "http://127.0.0.1:5000")
    assert Settings().mlflow_tracking_uri == "http://127.0.0.1:5000"
