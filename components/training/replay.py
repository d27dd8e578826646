"""The metrics a run reports for the steps it did not train itself.

A run resumed from a checkpoint calls `on_metrics` only for the steps after the checkpoint; its
MLflow run would miss the start of the curve. `replayed_metrics` rebuilds, from the history the
checkpoint carried, the calls the trainer made up to that step (the same keys, the same steps),
so the resumed run records the whole curve.
"""

from __future__ import annotations

from components.training.trainer import LOG_EVERY_STEPS, TrainedModel


def replayed_metrics(trained: TrainedModel, up_to_step: int) -> list[tuple[dict[str, float], int]]:
    """(metrics, step) as the trainer's `on_metrics` reported them for steps 1..`up_to_step` of `trained`.

    Training loss is the mean per-step loss of each logging window (the live callback weighs by
    examples; the two differ only when a window holds an epoch's short last batch).
    """
    calls: list[tuple[dict[str, float], int]] = []
    window: list[float] = []
    for record in trained.steps_log:
        step = int(record["step"])
        if step > up_to_step:
            break
        window.append(float(record["loss"]))
        if step % LOG_EVERY_STEPS == 0 or (step == trained.steps and not trained.early_stopped):
            calls.append(({"train_loss": sum(window) / len(window), "learning_rate": float(record["learning_rate"]),
                           "grad_norm": float(record["grad_norm"])}, step))
            window = []
    for record in trained.history:
        if int(record["step"]) <= up_to_step:
            calls.append(({k: float(v) for k, v in record.items() if k not in ("epoch", "step")}, int(record["step"])))
    return sorted(calls, key=lambda c: c[1])
