"""The trainer in-process on a tiny random BERT: learning, reproducibility, speed knobs, checkpoints, health."""

from __future__ import annotations

import json
import logging
import math
import os
import signal

import pytest

from components.config import TrainingConfig
from components.errors import TrainingError
from components.training import checkpoint as ckpt
from components.training.trainer import TrainingInterrupted, resolve_precision, train
from tests.support.tiny import LABELS


def _cfg(tiny_bert, **kw) -> TrainingConfig:
    base = {"model": str(tiny_bert), "max_length": 48, "batch_size": 16, "learning_rate": 3e-3, "epochs": 2,
            "num_threads": 1, "precision": "fp32"}
    return TrainingConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data(sample_df):
    train_df, val_df = sample_df.iloc[:160], sample_df.iloc[160:200]
    return train_df.text.tolist(), train_df.label.tolist(), val_df.text.tolist(), val_df.label.tolist()


def _train(data, cfg, out, **kw):
    return train(*data, LABELS, cfg, out, progress=False, **kw)


def test_the_model_overfits_a_handful_of_examples(tiny_bert, sample_df, tmp_path):
    few = sample_df[sample_df.label.isin(["sport", "business"])].groupby("label").head(4)
    texts, labels = few.text.tolist(), few.label.tolist()
    cfg = _cfg(tiny_bert, batch_size=8, learning_rate=1e-2, warmup_ratio=0.0, epochs=30, early_stopping_patience=100)
    trained = train(texts, labels, texts, labels, ["business", "sport"], cfg, tmp_path / "pkg", progress=False)
    losses = [s["loss"] for s in trained.steps_log]
    assert len(losses) == 30
    assert losses[-1] < 0.1 * losses[0]  # ln 2 = 0.69 -> below 0.07
    assert trained.history[-1]["val_accuracy"] == 1.0


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not(tiny_bert, data, tmp_path):
    runs = [_train(data, _cfg(tiny_bert, max_steps=12, seed=s), tmp_path / f"pkg{i}") for i, s in enumerate((7, 7, 8))]
    assert runs[0].steps_log == runs[1].steps_log and runs[0].history == runs[1].history
    assert (tmp_path / "pkg0" / "model.safetensors").read_bytes() == (tmp_path / "pkg1" / "model.safetensors").read_bytes()
    assert runs[0].steps_log != runs[2].steps_log


def test_gradient_accumulation_makes_fewer_larger_steps(tiny_bert, data, tmp_path):
    trained = _train(data, _cfg(tiny_bert, batch_size=8, gradient_accumulation_steps=2, epochs=1), tmp_path / "pkg")
    assert trained.effective_batch_size == 16
    assert trained.steps == math.ceil(160 / 8 / 2)
    assert trained.history[-1]["epoch"] == 1.0


def test_a_token_budget_makes_batches_of_short_texts_larger_and_covers_every_example(tiny_bert, data, tmp_path):
    import random

    from components.training.batching import batches_per_epoch, epoch_batches

    lengths = [5] * 60 + [40] * 20 + [12] * 80
    rng = random.Random(3)
    counts = batches_per_epoch(lengths, 16, rng, epochs=2, batch_tokens=160)
    for count in counts:
        batches = epoch_batches(lengths, 16, rng, batch_tokens=160)
        assert len(batches) == count  # what the schedule was planned on is what training draws
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(len(b) * max(lengths[i] for i in b) <= 160 for b in batches)
        assert max(len(b) for b in batches) == 32 and min(len(b) for b in batches) <= 4  # 160 // 5, 160 // 40
    # One long row over the budget still makes a batch of one.
    assert epoch_batches([500, 3], 16, random.Random(0), batch_tokens=100)[0] in ([0], [1])

    fixed = _train(data, _cfg(tiny_bert, epochs=1), tmp_path / "fixed")
    budget = _train(data, _cfg(tiny_bert, epochs=1, batch_tokens=48 * 32), tmp_path / "budget")
    assert budget.steps < fixed.steps  # sample texts are shorter than max_length: more rows per batch
    assert budget.history[-1]["epoch"] == 1.0


def test_unset_settings_are_chosen_from_the_data_and_written_into_the_package(tiny_bert, data, tmp_path):
    from components.package import load_package

    cfg = TrainingConfig(model=str(tiny_bert), num_threads=1, precision="fp32", max_steps=4)
    trained = _train(data, cfg, tmp_path / "pkg")
    used = trained.training
    assert used is not None and None not in (used.max_length, used.batch_size, used.batch_tokens, used.epochs,
                                             used.learning_rate, used.warmup_ratio)
    assert used.learning_rate == 1e-4 and used.batch_tokens == 16 * used.max_length  # tiny BERT: 32 wide
    assert [line.split("=")[0] for line in trained.recipe] == ["max_length", "batch_tokens", "batch_size",
                                                               "learning_rate", "epochs", "warmup_ratio"]
    # Every consumer of the package reads the chosen length from it.
    assert load_package(trained.package_dir, device="cpu").meta.max_length == used.max_length
    given = _train(data, _cfg(tiny_bert, max_steps=4, warmup_ratio=0.1), tmp_path / "given")
    assert given.recipe == [] and given.training == _cfg(tiny_bert, max_steps=4, warmup_ratio=0.1)


def test_attention_dropout_is_set_on_the_model_and_the_optimizer_is_fused(tiny_bert, data, tmp_path, monkeypatch):
    import torch

    from components.training.model_factory import build_model

    assert build_model(str(tiny_bert), LABELS, 0.0)[0].config.attention_probs_dropout_prob == 0.0
    assert build_model(str(tiny_bert), LABELS, None)[0].config.attention_probs_dropout_prob == 0.1  # the model's own
    made = []
    real = torch.optim.AdamW

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    _train(data, _cfg(tiny_bert, max_steps=2), tmp_path / "pkg")
    assert made[0].defaults["fused"] is True


def test_bf16_autocast_trains(tiny_bert, data, tmp_path):
    trained = _train(data, _cfg(tiny_bert, precision="bf16", max_steps=6), tmp_path / "pkg")
    assert trained.precision == "bf16"
    assert all(math.isfinite(s["loss"]) for s in trained.steps_log)


def test_precision_auto_is_bf16_only_where_it_pays(monkeypatch):
    from components.training import trainer

    assert resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"


def test_thread_settings_apply_during_training_and_are_restored(tiny_bert, data, tmp_path):
    import torch

    before = torch.get_num_threads()
    seen = []
    _train(data, _cfg(tiny_bert, max_steps=1, num_threads=1), tmp_path / "pkg",
           on_metrics=lambda m, step: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


def test_evaluation_every_n_steps_and_metrics_callback(tiny_bert, data, tmp_path):
    logged = []
    trained = _train(data, _cfg(tiny_bert, max_steps=9, eval_every_steps=3), tmp_path / "pkg",
                     on_metrics=lambda m, step: logged.append((step, sorted(m))))
    assert [h["step"] for h in trained.history] == [3.0, 6.0, 9.0]
    assert (3, ["train_loss", "val_accuracy", "val_loss", "val_macro_f1"]) in logged
    assert any("grad_norm" in keys and "learning_rate" in keys for _, keys in logged)
    assert trained.samples_per_second > 0 and 0 < trained.eval_seconds < trained.train_seconds


def test_a_stalled_run_reports_a_health_warning(tiny_bert, data, tmp_path):
    trained = _train(data, _cfg(tiny_bert, learning_rate=1e-9, max_steps=40, epochs=5), tmp_path / "pkg")
    rules = {w.rule: w for w in trained.health}
    assert "loss_not_decreasing" in rules and rules["loss_not_decreasing"].step >= 1


# --- checkpoints ---------------------------------------------------------------------------------

def test_sigterm_checkpoints_and_the_rerun_matches_an_uninterrupted_run(tiny_bert, data, tmp_path):
    cfg = _cfg(tiny_bert, epochs=2, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every_steps=100)
    reference = _train(data, cfg.model_copy(update={"checkpoint_dir": None}), tmp_path / "ref")

    def terminate_at_step_10(metrics, step):
        if step == 10 and "train_loss" in metrics and "val_loss" not in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    # 10 steps per epoch: the signal arrives at the end of epoch 1, the run stops after the next step, mid-epoch 2.
    with pytest.raises(TrainingInterrupted) as stop:
        _train(data, cfg, tmp_path / "pkg", on_metrics=terminate_at_step_10)
    assert stop.value.step == 11 and stop.value.checkpoint.endswith("step-00000011")
    resumed = _train(data, cfg, tmp_path / "pkg")
    assert resumed.resumed_from_step == 11
    assert resumed.history == reference.history and resumed.steps_log == reference.steps_log
    assert (tmp_path / "pkg" / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    # A rerun of a finished run only rewrites the package.
    again = _train(data, cfg, tmp_path / "pkg2")
    assert again.resumed_from_step == again.steps == reference.steps and again.history == reference.history


def test_a_checkpoint_from_another_configuration_is_refused(tiny_bert, data, tmp_path):
    cfg = _cfg(tiny_bert, max_steps=4, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every_steps=2)
    _train(data, cfg, tmp_path / "a")
    with pytest.raises(TrainingError, match="learning_rate"):
        _train(data, cfg.model_copy(update={"learning_rate": 1e-3}), tmp_path / "b")
    fresh = _train(data, cfg.model_copy(update={"learning_rate": 1e-3, "resume": False}), tmp_path / "c")
    assert fresh.resumed_from_step is None


def test_checkpoints_are_pruned_and_hold_what_resuming_needs(tiny_bert, data, tmp_path):
    cfg = _cfg(tiny_bert, max_steps=9, epochs=1, checkpoint_dir=str(tmp_path / "ck"), checkpoint_every_steps=2,
               keep_checkpoints=2)
    _train(data, cfg, tmp_path / "pkg")
    kept = [step for step, _ in ckpt.list_checkpoints(tmp_path / "ck")]
    assert kept == [8, 9]
    latest = ckpt.load_latest_checkpoint(tmp_path / "ck")
    state = latest.state
    assert state["loop"]["done"] and state["loop"]["step"] == 9
    assert {"model.safetensors", "optimizer.safetensors", "rng.safetensors"} <= set(state["files"])
    assert "0.torch" in latest.rng and state["loop"]["order_rng"] and state["scheduler"]["last_epoch"] == 9
    assert not list((tmp_path / "ck").glob(".tmp-*"))
    assert not list((tmp_path / "ck").rglob("*.bin")) and not list((tmp_path / "ck").rglob("*.pt"))


def _tiny_state(value: float):
    import torch

    w = torch.full((2, 2), value)
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": w.clone(), "exp_avg_sq": w.clone()}},
           "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]}
    return {"model_state": {"w": w}, "best_state": None, "optimizer_state": opt, "scheduler_state": {"last_epoch": 3},
            "loop_state": {"step": 3}, "rng_tensors": {"0.torch": torch.zeros(4, dtype=torch.uint8)},
            "rng_json": {"python": [], "numpy": []}}


def test_a_save_killed_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, **_tiny_state(1.0))
    calls = {"n": 0}
    real = ckpt._save_tensors

    def die_on_second_file(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-save")
        real(tensors, path)

    monkeypatch.setattr(ckpt, "_save_tensors", die_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, **_tiny_state(2.0))
    # A SIGKILL gets no cleanup: leave a half-written temporary directory behind as it would.
    (tmp_path / ".tmp-step-00000002-999-1").mkdir()
    (tmp_path / ".tmp-step-00000002-999-1" / "model.safetensors").write_bytes(b"\x00" * 10)
    latest = ckpt.load_latest_checkpoint(tmp_path)
    assert latest.step == 1 and float(latest.model["w"][0, 0]) == 1.0
    ckpt.clean_temporary(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
    ckpt.save_checkpoint(tmp_path, 1, **_tiny_state(1.0))
    newest = ckpt.save_checkpoint(tmp_path, 2, **_tiny_state(2.0))
    data = (newest / "optimizer.safetensors").read_bytes()
    (newest / "optimizer.safetensors").write_bytes(data[: len(data) // 2])  # e.g. half-synced from S3
    with caplog.at_level(logging.WARNING):
        latest = ckpt.load_latest_checkpoint(tmp_path)
    assert latest.step == 1 and "skipping damaged checkpoint" in caplog.text


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    import torch

    state = _tiny_state(5.0)
    path = ckpt.save_checkpoint(tmp_path, 3, **state)
    loaded = ckpt.load_latest_checkpoint(tmp_path)
    rebuilt = ckpt.optimizer_from_parts(loaded.optimizer, loaded.state["optimizer"])
    assert rebuilt["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(rebuilt["state"][0]["exp_avg"], state["optimizer_state"]["state"][0]["exp_avg"])
    assert json.loads((path / "state.json").read_text())["files"]["model.safetensors"]["sha256"]
