"""The fine-tuning loop: dynamic padding, length-grouped batches, AdamW with linear warm-up
and decay, gradient clipping, early stopping on validation macro-F1 with the best weights kept.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.config import TrainingConfig
from components.errors import TrainingError
from components.package import PackageMeta, resolve_device, save_package
from components.training.model_factory import build_model

log = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]


class TrainedModel(BaseModel):
    """What training produced: the package directory plus how it got there."""

    model_config = ConfigDict(frozen=True)

    package_dir: str
    labels: list[str]
    base_model: str
    device: str
    steps: int
    best_step: int
    best_val_macro_f1: float | None
    train_seconds: float
    samples_per_second: float
    history: list[dict[str, float]] = Field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random,
                           group_factor: int = 50) -> list[list[int]]:
    """Shuffle, then sort by length inside mega-batches so each batch pads little; shuffle batch order."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * group_factor
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(encodings: list[list[int]], ids: list[int], labels: list[int] | None, pad_id: int,
             padding_side: str, device: str) -> dict[str, Any]:
    import torch

    width = max(len(encodings[i]) for i in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, i in enumerate(ids):
        seq = encodings[i]
        if padding_side == "left":
            input_ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
        else:
            input_ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
    batch: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
    if labels is not None:
        batch["labels"] = torch.tensor([labels[i] for i in ids], dtype=torch.long, device=device)
    return batch


def _evaluate(model: Any, enc: list[list[int]], y: list[int], pad_id: int, padding_side: str, device: str,
              batch_size: int) -> dict[str, float]:
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    model.eval()
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    preds = np.zeros(len(enc), dtype=np.int64)
    total_loss = 0.0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size * 2):
            ids = order[start:start + batch_size * 2]
            out = model(**_collate(enc, ids, y, pad_id, padding_side, device))
            total_loss += float(out.loss) * len(ids)
            preds[ids] = out.logits.argmax(-1).cpu().numpy()
    model.train()
    return {"val_loss": total_loss / len(enc), "val_accuracy": float(accuracy_score(y, preds)),
            "val_macro_f1": float(f1_score(y, preds, average="macro", zero_division=0))}


def train(
    train_texts: Sequence[str],
    train_labels: Sequence[str],
    val_texts: Sequence[str],
    val_labels: Sequence[str],
    labels: list[str],
    cfg: TrainingConfig,
    out_dir: str | Path,
    on_metrics: MetricsCallback | None = None,
    progress: bool = True,
) -> TrainedModel:
    """Fine-tune `cfg.model` on the texts and write the best model as a package to `out_dir`."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if not train_texts:
        raise TrainingError("the training split is empty; check the data and the split shares")
    unknown = sorted(set(train_labels) - set(labels))
    if unknown:
        raise TrainingError(f"training labels {unknown} are not in the label set {labels}")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model, tokenizer = build_model(cfg.model, labels)
    model.to(device).train()
    padding_side = tokenizer.padding_side
    pad_id = tokenizer.pad_token_id
    label_ids = {name: i for i, name in enumerate(labels)}

    def encode(texts: Sequence[str]) -> list[list[int]]:
        return tokenizer([t.strip() for t in texts], truncation=True, max_length=cfg.max_length)["input_ids"]

    enc_train, y_train = encode(train_texts), [label_ids[y] for y in train_labels]
    enc_val, y_val = encode(val_texts), [label_ids[y] for y in val_labels if y in label_ids]
    if len(y_val) != len(enc_val):
        raise TrainingError("the validation split holds labels outside the label set")

    batches_per_epoch = math.ceil(len(enc_train) / cfg.batch_size)
    total_steps = cfg.epochs * batches_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm", "ln_")
    params = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    rng = random.Random(cfg.seed)
    lengths = [len(e) for e in enc_train]

    history: list[dict[str, float]] = []
    # Best = highest validation macro-F1, ties broken by lower validation loss.
    best_state, best_key, best_f1, best_step, bad_epochs = None, (-1.0, 0.0), -1.0, 0, 0
    step, seen, start = 0, 0, time.perf_counter()
    bar = tqdm(total=total_steps, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    for epoch in range(cfg.epochs):
        running, n_running = 0.0, 0
        for ids in length_grouped_batches(lengths, cfg.batch_size, rng):
            if step >= total_steps:
                break
            out = model(**_collate(enc_train, ids, y_train, pad_id, padding_side, device))
            loss = out.loss
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {float(loss)} at step {step}; lower training.learning_rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(ids)
            running += float(loss.detach()) * len(ids)
            n_running += len(ids)
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", samples_s=f"{rate:.1f}")
            bar.update(1)
            if on_metrics and (step % 10 == 0 or step == total_steps):
                on_metrics({"train_loss": float(loss.detach()), "learning_rate": scheduler.get_last_lr()[0]}, step)
        record: dict[str, float] = {"epoch": float(epoch + 1), "step": float(step),
                                    "train_loss": running / max(n_running, 1)}
        if enc_val:
            record.update(_evaluate(model, enc_val, y_val, pad_id, padding_side, device, cfg.batch_size))
        history.append(record)
        if on_metrics:
            on_metrics({k: v for k, v in record.items() if k not in ("epoch", "step")}, step)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()})
        f1 = record.get("val_macro_f1", -1.0)
        key = (f1, -record.get("val_loss", 0.0))
        if not enc_val or key > best_key:
            best_key, best_f1, best_step, bad_epochs = key, f1, step, 0
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.early_stopping_patience:
                log.info("early stopping after epoch %d: no validation gain for %d epochs", epoch + 1, bad_epochs)
                break
        if step >= total_steps:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    meta = PackageMeta(labels=labels, max_length=cfg.max_length, padding_side=padding_side, base_model=cfg.model)
    pkg = save_package(model, tokenizer, out_dir, meta)
    return TrainedModel(
        package_dir=str(pkg), labels=labels, base_model=cfg.model, device=device, steps=step, best_step=best_step,
        best_val_macro_f1=best_f1 if enc_val else None, train_seconds=elapsed,
        samples_per_second=seen / elapsed if elapsed > 0 else 0.0, history=history,
    )
