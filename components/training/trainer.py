"""The fine-tuning loop.

Fast: dynamic padding, length-grouped batches, bf16 autocast where it is faster, gradient
accumulation, AdamW with linear warm-up and decay, gradient clipping, thread settings.
Safe: early stopping on validation macro-F1 with the best weights kept, a seed that makes a
run repeatable, atomic checkpoints that a run killed at any moment resumes from with the same
result, health rules over the recorded history. Scales out: under `torchrun` every process
trains on its share of each step's batches (DistributedDataParallel, gloo on CPU, NCCL on
CUDA) and only rank 0 logs and saves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.config import TrainingConfig
from components.errors import TrainingError
from components.long_text import Windows, aggregate_logits, default_stride
from components.package import PackageMeta, encode_texts, resolve_device, save_package
from components.progress import bar_stream
from components.training.batching import (  # noqa: F401
    batches_per_epoch,
    collate,
    count_batches,
    epoch_batches,
    length_grouped_batches,
    optimizer_steps,
)
from components.training.checkpoint import (
    clean_temporary,
    data_digest,
    load_latest_checkpoint,
    optimizer_from_parts,
    save_checkpoint,
)
from components.training.distributed import DistContext, all_gather_objects, all_sum, barrier, current_context
from components.training.health import HealthWarning, check_health
from components.training.model_factory import build_model, is_decoder_only
from components.training.recipe import choose_recipe, recipe_tag

log = logging.getLogger(__name__)

MetricsCallback = Callable[[dict[str, float], int], None]
LOG_EVERY_STEPS = 10


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
    train_seconds: float = Field(description="Wall time of the training loop, evaluations included.")
    eval_seconds: float = Field(0.0, description="Of which spent evaluating on the validation split.")
    samples_per_second: float = Field(description="Training examples per second, evaluation time excluded.")
    cpu_seconds: float = Field(0.0, description="CPU time of this process (all threads) in the training loop, "
                               "evaluation excluded: robust to other load on a shared machine.")
    history: list[dict[str, float]] = Field(
        default_factory=list, description="One record per evaluation: epoch, step, train_loss, val_* metrics.")
    steps_log: list[dict[str, float]] = Field(
        default_factory=list, description="One record per optimizer step: step, loss, learning_rate, grad_norm.")
    health: list[HealthWarning] = Field(default_factory=list, description="Training health rules that fired.")
    precision: str = "fp32"
    world_size: int = 1
    effective_batch_size: int = 0
    resumed_from_step: int | None = None
    early_stopped: bool = False
    checkpoint_dir: str | None = Field(None, description="Where the run's checkpoints are (training.checkpoint_dir).")
    training: TrainingConfig | None = Field(None, description="The configuration as trained: the recipe's choices "
                                            "(components/training/recipe.py) filled in.")
    recipe: list[str] = Field(default_factory=list, description="What the recipe chose and why, one per setting.")


class TrainingInterrupted(TrainingError):
    """A stop signal (SIGTERM) ended training early; the state was checkpointed when a checkpoint dir is set."""

    def __init__(self, message: str, step: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    import torch

    try:
        caps = torch._C._cpu._get_cpu_capability()  # private, hence the fallback
    except (AttributeError, RuntimeError):
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_precision(preference: str, device: str) -> str:
    """'fp32' or 'bf16' for `device`; 'auto' picks bf16 only where it was measured faster (docs/benchmarks.md)."""
    import torch

    on_cuda = device.startswith("cuda")
    if preference == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise TrainingError("training.precision is bf16 but this GPU has no bf16 support; use fp32 or auto")
    if preference != "auto":
        return preference
    if on_cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _adamw(params: list[dict[str, Any]], lr: float, device: str) -> Any:
    """AdamW with its fused kernel where this torch has one for `device` (one kernel per step instead of a dozen
    per parameter tensor: measured faster on CPU, docs/benchmarks.md), else torch's default implementation."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError) as err:  # a device or dtype without the fused kernel
        log.info("fused AdamW unavailable on %s (%s); using the default implementation", device, err)
        return torch.optim.AdamW(params, lr=lr)


def configure_threads(cfg: TrainingConfig, ctx: DistContext) -> int:
    """Set torch's intra-op (and optionally inter-op) threads; returns the intra-op count."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = cfg.num_threads or max(1, usable // max(1, ctx.local_world_size))
    if cfg.num_threads or ctx.local_world_size > 1:
        torch.set_num_threads(threads)
    if cfg.interop_threads:
        try:
            torch.set_num_interop_threads(cfg.interop_threads)
        except RuntimeError as err:  # allowed once, before any inter-op work in this process
            log.warning("could not set inter-op threads to %d: %s", cfg.interop_threads, err)
    return torch.get_num_threads()


# Fields that shape the trajectory: a checkpoint made with other values cannot be resumed exactly.
_TRAJECTORY_FIELDS = ("model", "max_length", "batch_size", "gradient_accumulation_steps", "learning_rate",
                      "weight_decay", "warmup_ratio", "epochs", "max_steps", "max_grad_norm", "eval_every_steps",
                      "early_stopping_patience", "seed", "precision", "long_text", "long_text_stride", "max_windows",
                      "batch_tokens", "attention_dropout")


@contextlib.contextmanager
def _stop_on(signals: Sequence[int]) -> Iterator[threading.Event]:
    """An event set when one of `signals` arrives (handlers only in the main thread; restored after)."""
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class _Loop:
    """Everything the loop carries across steps; JSON-able, it is what a checkpoint's `loop` holds."""

    epoch: int = 0
    pos: int = 0  # global batches of `epoch` already consumed
    order_rng: list[Any] = field(default_factory=list)  # batch-order RNG state at the start of `epoch`
    step: int = 0
    seen: int = 0
    elapsed: float = 0.0
    eval_seconds: float = 0.0
    cpu_seconds: float = 0.0
    since_eval_loss: float = 0.0
    since_eval_n: int = 0
    since_log_loss: float = 0.0
    since_log_n: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    steps_log: list[dict[str, float]] = field(default_factory=list)
    best_key: list[float] = field(default_factory=lambda: [-1.0, 0.0])
    best_f1: float = -1.0
    best_step: int = 0
    bad_evals: int = 0
    last_eval_step: int = -1
    skipped_steps: int = 0
    early_stopped: bool = False
    done: bool = False


def _evaluate(model: Any, enc: list[list[int]], y: list[int], pad_id: int, padding_side: str, device: str,
              batch_size: int, positions: bool, bf16: bool, ctx: DistContext,
              doc_index: Sequence[int] | None = None) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1 of documents; under torchrun each process scores a share and they pool.

    `enc` holds the model inputs and `doc_index` the document (in `y`) of each (None: one input per document).
    A document's logits are the mean of its inputs' (`aggregate_logits`), as when the package predicts; the
    loss is the cross-entropy of those logits.
    """
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    model.eval()
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))[ctx.rank::ctx.world_size]
    scored: list[tuple[int, list[float]]] = []
    with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(order), batch_size * 2):
            ids = order[start:start + batch_size * 2]
            out = model(**collate(enc, ids, None, pad_id, padding_side, device, positions))
            scored.extend(zip(ids, out.logits.float().cpu().tolist()))
    model.train()
    rows: dict[int, list[float]] = {}
    for part in all_gather_objects(ctx, scored):
        rows.update(part)
    window_logits = np.array([rows[i] for i in range(len(enc))], dtype=np.float32)
    logits = aggregate_logits(window_logits, range(len(enc)) if doc_index is None else doc_index, len(y))
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = float(-log_probs[np.arange(len(y)), y].mean())
    preds = logits.argmax(axis=1)
    return {"val_loss": loss, "val_accuracy": float(accuracy_score(y, preds)),
            "val_macro_f1": float(f1_score(y, preds, average="macro", zero_division=0))}


def _rng_json(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_tuple(state: list[Any]) -> tuple[Any, ...]:
    return (state[0], tuple(state[1]), state[2])


def _rng_snapshot(ctx: DistContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every process's torch generator states (tensors) and rank 0's Python/NumPy states (JSON)."""
    import torch

    mine = {"torch": torch.get_rng_state().numpy().tobytes()}
    if torch.cuda.is_available():
        mine.update({f"cuda.{i}": s.numpy().tobytes() for i, s in enumerate(torch.cuda.get_rng_state_all())})
    tensors = {}
    for rank, states in enumerate(all_gather_objects(ctx, mine)):
        for key, raw in states.items():
            tensors[f"{rank}.{key}"] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    np_state = np.random.get_state()
    return tensors, {"python": _rng_json(random),  # the module-level generator has getstate() too
                     "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                               float(np_state[4])]}


def _rng_restore(tensors: dict[str, Any], js: dict[str, Any], ctx: DistContext) -> None:
    import torch

    if f"{ctx.rank}.torch" in tensors:
        torch.set_rng_state(tensors[f"{ctx.rank}.torch"])
    else:
        log.warning("the checkpoint has no RNG state for rank %d (the process count changed); dropout differs", ctx.rank)
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"{ctx.rank}.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"{ctx.rank}.cuda.{i}"], i)
    random.setstate(_rng_tuple(js["python"]))
    n = js["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


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
    stop_signals: Sequence[int] = (signal.SIGTERM,),
) -> TrainedModel:
    """Fine-tune `cfg.model` on the texts and write the best model as a package to `out_dir`.

    Under `torchrun` (an initialised process group) every process calls this with the same
    data; rank 0 alone calls `on_metrics` and writes the package and checkpoints. With
    `cfg.checkpoint_dir` set, a run resumes from the newest checkpoint there, and a signal in
    `stop_signals` (SIGTERM: spot interruption, `kill`) checkpoints and raises `TrainingInterrupted`.
    """
    import torch

    threads_before = torch.get_num_threads()
    try:
        return _train(train_texts, train_labels, val_texts, val_labels, labels, cfg, out_dir, on_metrics, progress,
                      stop_signals)
    finally:  # thread settings are process-wide: leave the caller's as they were
        torch.set_num_threads(threads_before)


def _train(train_texts: Sequence[str], train_labels: Sequence[str], val_texts: Sequence[str],
           val_labels: Sequence[str], labels: list[str], cfg: TrainingConfig, out_dir: str | Path,
           on_metrics: MetricsCallback | None, progress: bool, stop_signals: Sequence[int]) -> TrainedModel:
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if not train_texts:
        raise TrainingError("the training split is empty; check the data and the split shares")
    unknown = sorted(set(train_labels) - set(labels))
    if unknown:
        raise TrainingError(f"training labels {unknown} are not in the label set {labels}")
    ctx = current_context()
    threads = configure_threads(cfg, ctx)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    if device == "cuda" and ctx.distributed:
        device = f"cuda:{ctx.local_rank}"
    precision = resolve_precision(cfg.precision, device)
    bf16 = precision == "bf16"
    model, tokenizer = build_model(cfg.model, labels, cfg.attention_dropout)
    cfg, choices = choose_recipe(cfg, train_texts, train_labels, tokenizer, model.config, ctx.world_size)
    if choices and ctx.is_main:
        log.info("recipe from the data: %s", recipe_tag(choices))
    model.to(device).train()
    if ctx.distributed:  # same head initialisation on every process (above), different dropout masks (here)
        torch.manual_seed(cfg.seed + ctx.rank)
    padding_side = tokenizer.padding_side
    # The package this run writes: its text_preprocessing is applied here as the server will apply it.
    meta = PackageMeta(labels=labels, max_length=cfg.max_length, padding_side=padding_side,
                       base_model=cfg.model, long_text=cfg.long_text, max_windows=cfg.max_windows,
                       long_text_stride=default_stride(cfg.max_length) if cfg.long_text_stride is None
                       else cfg.long_text_stride)
    pad_id = tokenizer.pad_token_id
    positions = is_decoder_only(model.config)
    label_ids = {name: i for i, name in enumerate(labels)}

    def encode(texts: Sequence[str]) -> Windows:
        """Model inputs as the package will read them: one per text, or its windows under long_text chunks."""
        return encode_texts(tokenizer, texts, meta)

    # Under chunks every window is a training example with its text's label; validation scores texts.
    win_train, win_val = encode(train_texts), encode(val_texts)
    enc_train, y_train = win_train.input_ids, [label_ids[train_labels[d]] for d in win_train.doc_index]
    enc_val, y_val = win_val.input_ids, [label_ids[y] for y in val_labels if y in label_ids]
    if len(y_val) != len(val_texts):
        raise TrainingError("the validation split holds labels outside the label set")
    lengths = [len(e) for e in enc_train]

    world = ctx.world_size
    per_step = world * cfg.gradient_accumulation_steps  # global batches per optimizer step
    epoch_counts = batches_per_epoch(lengths, cfg.batch_size, random.Random(cfg.seed), cfg.epochs, world,
                                     cfg.batch_tokens)  # global batches of each epoch, as drawn below
    total_steps = optimizer_steps(epoch_counts, per_step)
    steps_per_epoch = total_steps / cfg.epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm", "ln_")
    params = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)],
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = _adamw(params, cfg.learning_rate, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    fingerprint = {**{k: getattr(cfg, k) for k in _TRAJECTORY_FIELDS}, "precision": precision,  # as resolved
                   "labels": labels, "data": data_digest(train_texts, train_labels, val_texts, val_labels)[:16]}
    order_rng = random.Random(cfg.seed)
    loop, best_state, resumed_from, resumed_done = _Loop(order_rng=_rng_json(order_rng)), None, None, False
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    if ckpt_dir is not None and cfg.resume:
        if ctx.is_main:
            clean_temporary(ckpt_dir)
        barrier(ctx)
        ckpt = load_latest_checkpoint(ckpt_dir)
        steps_seen = all_gather_objects(ctx, ckpt.step if ckpt else None)
        if len(set(steps_seen)) > 1:
            raise TrainingError(f"processes see different newest checkpoints {steps_seen} in {ckpt_dir}; every host "
                                f"needs the same checkpoint directory contents (shared storage or SageMaker's sync)")
        if ckpt is not None:
            saved = ckpt.state["loop"]["fingerprint"]
            changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            if changed:
                raise TrainingError(
                    f"the checkpoint {ckpt.path} was made with different {', '.join(changed)}; to start afresh use "
                    f"another training.checkpoint_dir or set training.resume=false")
            if ckpt.state["loop"].get("world_size") != world:
                log.warning("resuming a %s-process checkpoint with %d processes: the run continues but is not "
                            "bit-identical to an uninterrupted one", ckpt.state["loop"].get("world_size"), world)
            model.load_state_dict(ckpt.model)
            optimizer.load_state_dict(optimizer_from_parts(ckpt.optimizer, ckpt.state["optimizer"]))
            scheduler.load_state_dict(ckpt.state["scheduler"])
            loop = _Loop(**{k: v for k, v in ckpt.state["loop"].items() if k in _Loop.__dataclass_fields__})
            best_state = ckpt.best if ckpt.best is not None else (
                {k: v.clone() for k, v in ckpt.model.items()} if loop.history else None)
            _rng_restore(ckpt.rng, ckpt.state["rng"], ctx)
            resumed_from, resumed_done = loop.step, loop.done
            log.info("resumed from %s: epoch %d, batch %d of %d, step %d", ckpt.path, loop.epoch + 1, loop.pos,
                     epoch_counts[min(loop.epoch, cfg.epochs - 1)], loop.step)

    net = model
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.startswith("cuda") else None)

    def checkpoint() -> str | None:
        """Every process contributes its RNG state; rank 0 writes."""
        if ckpt_dir is None:
            return None
        rng_tensors, rng_json = _rng_snapshot(ctx)
        path = None
        if ctx.is_main:
            state = {**loop.__dict__, "fingerprint": fingerprint, "world_size": world}
            keep_best = best_state is not None and loop.best_step != loop.step
            path = str(save_checkpoint(
                ckpt_dir, loop.step, model_state=model.state_dict(), best_state=best_state if keep_best else None,
                optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(),
                loop_state=json.loads(json.dumps(state)), rng_tensors=rng_tensors, rng_json=rng_json,
                keep=cfg.keep_checkpoints))
        barrier(ctx)
        return path

    def evaluate_now() -> None:
        nonlocal best_state
        t0, cpu0 = time.perf_counter(), time.process_time()
        record: dict[str, float] = {"epoch": loop.step / steps_per_epoch, "step": float(loop.step),
                                    "train_loss": loop.since_eval_loss / max(loop.since_eval_n, 1)}
        if enc_val:
            record.update(_evaluate(model, enc_val, y_val, pad_id, padding_side, device, cfg.batch_size, positions,
                                    bf16, ctx, doc_index=win_val.doc_index))
        loop.history.append(record)
        loop.since_eval_loss, loop.since_eval_n, loop.last_eval_step = 0.0, 0, loop.step
        loop.eval_seconds += time.perf_counter() - t0
        eval_cpu[0] += time.process_time() - cpu0
        if ctx.is_main:
            if on_metrics:
                on_metrics({k: v for k, v in record.items() if k not in ("epoch", "step")}, loop.step)
            log.info("evaluation at step %d: %s", loop.step, {k: round(v, 4) for k, v in record.items()})
        key = [record.get("val_macro_f1", -1.0), -record.get("val_loss", 0.0)]
        # Best = highest validation macro-F1, ties broken by lower validation loss.
        if not enc_val or key > loop.best_key:
            loop.best_key, loop.best_f1, loop.best_step, loop.bad_evals = key, key[0], loop.step, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            loop.bad_evals += 1
            if loop.bad_evals >= cfg.early_stopping_patience:
                log.info("early stopping at step %d: no validation gain for %d evaluations", loop.step, loop.bad_evals)
                loop.early_stopped = loop.done = True

    device_type = device.split(":")[0]
    bar_file = bar_stream() if progress and ctx.is_main else None  # a bar only on a terminal a person watches
    bar = tqdm(total=total_steps, initial=loop.step, desc="training", unit="step", dynamic_ncols=True, file=bar_file,
               disable=bar_file is None, leave=False)
    interrupted: TrainingInterrupted | None = None
    started = time.perf_counter() - loop.elapsed
    cpu_started, eval_cpu = time.process_time() - loop.cpu_seconds, [0.0]
    consecutive_skips = 0
    with _stop_on(stop_signals) as stop:
        while not loop.done and loop.epoch < cfg.epochs and loop.step < total_steps:
            order_rng.setstate(_rng_tuple(loop.order_rng))
            batches = epoch_batches(lengths, cfg.batch_size, order_rng, world, cfg.batch_tokens)
            while loop.pos < len(batches) and loop.step < total_steps:
                mine = batches[loop.pos:loop.pos + per_step][ctx.rank::world]
                loss_sum, n_examples = 0.0, 0
                for i, ids in enumerate(mine):
                    sync = contextlib.nullcontext() if not ctx.distributed or i == len(mine) - 1 else net.no_sync()
                    with sync:
                        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                            out = net(**collate(enc_train, ids, y_train, pad_id, padding_side, device, positions))
                        loss = out.loss.float()
                        if not torch.isfinite(loss):
                            raise TrainingError(f"the loss became {float(loss)} at step {loop.step + 1}; "
                                                f"lower training.learning_rate")
                        (loss / len(mine)).backward()
                    loss_sum += float(loss.detach()) * len(ids)
                    n_examples += len(ids)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                if math.isfinite(grad_norm):
                    optimizer.step()
                    consecutive_skips = 0
                else:  # skip the update; the exploding-gradient rule reports it
                    loop.skipped_steps += 1
                    consecutive_skips += 1
                    if consecutive_skips >= 5:
                        raise TrainingError(f"the gradient norm was not finite for 5 steps up to step {loop.step + 1}; "
                                            f"lower training.learning_rate or use precision fp32")
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum, n_examples, stop_votes = all_sum(ctx, [loss_sum, n_examples, float(stop.is_set())],
                                                           device if device_type == "cuda" else "cpu")
                loop.pos += per_step
                loop.step += 1
                loop.seen += int(n_examples)
                loop.since_eval_loss += loss_sum
                loop.since_eval_n += int(n_examples)
                loop.since_log_loss += loss_sum
                loop.since_log_n += int(n_examples)
                step_loss = loss_sum / max(n_examples, 1)
                loop.steps_log.append({"step": float(loop.step), "loss": step_loss, "learning_rate": lr,
                                       "grad_norm": grad_norm})
                loop.elapsed = time.perf_counter() - started
                loop.cpu_seconds = time.process_time() - cpu_started - eval_cpu[0]
                rate = loop.seen / max(loop.elapsed - loop.eval_seconds, 1e-9)
                bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if on_metrics and ctx.is_main and (loop.step % LOG_EVERY_STEPS == 0 or loop.step == total_steps):
                    on_metrics({"train_loss": loop.since_log_loss / max(loop.since_log_n, 1), "learning_rate": lr,
                                "grad_norm": grad_norm}, loop.step)
                    loop.since_log_loss, loop.since_log_n = 0.0, 0
                if cfg.eval_every_steps and loop.step % cfg.eval_every_steps == 0:
                    evaluate_now()
                    if loop.done:
                        break
                if stop_votes > 0:
                    path = checkpoint()
                    interrupted = TrainingInterrupted(
                        f"stopped by a signal at step {loop.step}"
                        + (f"; checkpoint {path}: run the same command again to resume" if path
                           else "; no training.checkpoint_dir was set, so nothing was saved"), loop.step, path)
                    break
                if loop.step % cfg.checkpoint_every_steps == 0 and loop.pos < len(batches) and loop.step < total_steps:
                    checkpoint()
            if interrupted or loop.done:
                break
            # End of the epoch (or of max_steps): evaluate unless that just happened, then move on.
            if loop.last_eval_step != loop.step:
                evaluate_now()
            if loop.pos >= len(batches):
                loop.epoch, loop.pos, loop.order_rng = loop.epoch + 1, 0, _rng_json(order_rng)
            if not loop.done and loop.epoch < cfg.epochs and loop.step < total_steps:
                checkpoint()
        bar.close()
        if interrupted is not None:
            raise interrupted
        if loop.last_eval_step != loop.step and not loop.history:
            evaluate_now()
        loop.done = True
        if not resumed_done:  # a finished checkpoint lets a rerun of a completed job just rewrite the package
            checkpoint()
    elapsed = time.perf_counter() - started
    health = check_health(loop.steps_log, loop.history)
    for warning in health if ctx.is_main else ():
        log.warning("training health: %s", warning.message)
    if best_state is not None:
        model.load_state_dict(best_state)
    pkg = Path(out_dir)
    if ctx.is_main:
        model.to("cpu").eval()
        pkg = save_package(model, tokenizer, out_dir, meta.model_copy(update={"created_at": time.time()}))
    barrier(ctx)
    if ctx.is_main:
        log.info("trained %d steps (%s, %d process(es), %d threads each) in %.1fs", loop.step, precision, world,
                 threads, elapsed)
    train_only = max(elapsed - loop.eval_seconds, 1e-9)
    return TrainedModel(
        package_dir=str(pkg), labels=labels, base_model=cfg.model, device=device, steps=loop.step,
        best_step=loop.best_step, best_val_macro_f1=loop.best_f1 if enc_val else None, train_seconds=elapsed,
        eval_seconds=loop.eval_seconds, samples_per_second=loop.seen / train_only, cpu_seconds=loop.cpu_seconds,
        history=loop.history,
        steps_log=loop.steps_log, health=health, precision=precision, world_size=world,
        effective_batch_size=cfg.batch_size * per_step, resumed_from_step=resumed_from,
        early_stopped=loop.early_stopped, checkpoint_dir=str(ckpt_dir) if ckpt_dir else None,
        training=cfg, recipe=[c.line() for c in choices],
    )
