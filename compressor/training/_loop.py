"""The training loop every pruning strategy reuses: fine-tuning, regularised training, soft pruning.

Batch format: the dataset is map-style and yields ``(x, y)`` or ``(x, y, *extra)``. ``x`` is
the model input (a tensor), ``y`` is passed unchanged to the loss (a label tensor, or for a
dataset yielding ``(x, (pid, camid))`` the collated tuple); ``extra`` items are ignored.

Outputs of ``output=DIR`` (only rank 0 writes, each file atomically: temp file + ``os.replace``):

* ``checkpoint.pt`` every ``checkpoint_every`` epochs and after the last one: raw weights,
  optimizer, scheduler, EMA weights, epoch, global step, RNG states of every rank (as tensors,
  so ``torch.load(weights_only=True)`` reads it), config, history and an architecture
  fingerprint (parameter names and shapes). ``resume=True`` continues from it.
* ``best.pt`` whenever the monitored eval metric improves: the evaluated weights.
  (Both file formats are described in :mod:`compressor.training._checkpoint`.)
* ``history.json`` after every epoch (``HISTORY_SCHEMA_VERSION``).

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) :func:`train` creates the process group
(gloo on CPU, nccl on CUDA), wraps the model in DistributedDataParallel and shards the data with
DistributedSampler. ``TrainConfig.batch_size`` is per process: the global batch is
``batch_size * world_size``. The single-process loader uses the same sampler with one replica,
so one process with batch 2B visits the same samples per step as two ranks with batch B.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from compressor.common.files import atomic_write

from compressor.training._checkpoint import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    _restore_,
    _rng_state,
    _save,
    _seed_everything,
    _seed_worker,
    architecture_fingerprint,
    load_checkpoint_weights_,
)
from compressor.common.config import JsonConfig, is_int, is_number
from compressor.graph import module_modes, restore_modes_
import rich.progress as rp  # imported on first use: `import compressor` stays light

# the checkpoint names are re-exported: `from compressor.training._loop import CheckpointError` keeps working
__all__ = ["BEST_FILE", "CHECKPOINT_FILE", "CHECKPOINT_FORMAT_VERSION", "HISTORY_FILE", "HISTORY_SCHEMA_VERSION",
           "OPTIMIZERS", "SCHEDULES", "CheckpointError", "StepInfo", "TrainCallbacks", "TrainConfig", "TrainResult",
           "architecture_fingerprint", "init_distributed", "is_main_process", "load_checkpoint_weights_", "lr_at",
           "train"]

HISTORY_FILE = "history.json"
HISTORY_SCHEMA_VERSION = 1
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """How to train. Epoch counts are in epochs, ``lr`` is the peak learning rate.

    * ``schedule``: ``"cosine"`` decays to 0 over the steps after warm-up; ``"step"``
      multiplies by ``gamma`` every ``step_size`` epochs; ``"constant"``. Applied per step.
    * ``warmup_epochs``: linear warm-up, per step, from ``lr/W`` to ``lr`` over the first
      ``W = round(warmup_epochs * steps_per_epoch)`` steps (may be fractional).
    * ``ema_decay``: keep an exponential moving average of the weights (all floating point
      entries of the state_dict), updated after every step; eval, ``best.pt`` and the final
      model use the EMA weights.
    * ``frozen``: parameters whose name equals an entry, starts with ``entry + "."`` or fully
      matches it as a regex get ``requires_grad=False`` during training (restored afterwards).
    * ``threads``: torch intra-op threads during training (restored afterwards).
    * ``monitor``: eval metric that picks the best epoch (default: the first one ``eval_fn``
      returns), maximised or minimised per ``monitor_mode``.
    * ``shuffle``: reshuffle every epoch with a seed of ``seed + epoch`` (as DistributedSampler).
    """

    _TUPLE_FIELDS = ("frozen",)

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    step_size: int = 30
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float | None = None
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None
    grad_clip: float | None = None
    checkpoint_every: int = 1
    eval_every: int = 1
    frozen: tuple[str, ...] = ()
    drop_last: bool = False
    shuffle: bool = True
    monitor: str | None = None
    monitor_mode: str = "max"

    def __post_init__(self) -> None:
        for key, (valid, what) in _RULES.items():
            value = getattr(self, key)
            if not valid(value, self):
                raise ValueError(f"{key} must be {what}, got {value!r}")
        frozen = (self.frozen,) if isinstance(self.frozen, str) else tuple(self.frozen)
        object.__setattr__(self, "frozen", frozen)
        for pattern in frozen:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"frozen entries must be non-empty strings, got {pattern!r}")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"frozen entry {pattern!r} is not a valid regular expression: {exc}") from exc



_RULES: dict[str, tuple[Callable[[Any, TrainConfig], bool], str]] = {  # field: (valid(value, config), what it must be)
    **{key: (lambda v, c: is_int(v) and v >= 1, "an integer >= 1")
       for key in ("epochs", "batch_size", "step_size", "checkpoint_every", "eval_every")},
    "seed": (lambda v, c: is_int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "num_workers": (lambda v, c: is_int(v) and v >= 0, "an integer >= 0"),
    "threads": (lambda v, c: v is None or (is_int(v) and v >= 1), "None or an integer >= 1"),
    "lr": (lambda v, c: is_number(v) and v > 0, "> 0"),
    "optimizer": (lambda v, c: v in OPTIMIZERS, f"one of {OPTIMIZERS}"),
    "schedule": (lambda v, c: v in SCHEDULES, f"one of {SCHEDULES}"),
    "momentum": (lambda v, c: is_number(v) and 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v, c: is_number(v) and v >= 0, ">= 0"),
    "nesterov": (lambda v, c: isinstance(v, bool) and (not v or (c.optimizer == "sgd" and c.momentum > 0)),
                 "a bool, True only with optimizer 'sgd' and momentum > 0"),
    "gamma": (lambda v, c: is_number(v) and 0 < v <= 1, "in (0, 1]"),
    "warmup_epochs": (lambda v, c: is_number(v) and 0 <= v <= c.epochs, "in [0, epochs]"),
    "label_smoothing": (lambda v, c: is_number(v) and 0 <= v < 1, "in [0, 1)"),
    "ema_decay": (lambda v, c: v is None or (is_number(v) and 0 < v < 1), "None or in (0, 1)"),
    "grad_clip": (lambda v, c: v is None or (is_number(v) and v > 0), "None or > 0"),
    "drop_last": (lambda v, c: isinstance(v, bool), "a bool"),
    "shuffle": (lambda v, c: isinstance(v, bool), "a bool"),
    "monitor": (lambda v, c: v is None or isinstance(v, str), "None or a metric name"),
    "monitor_mode": (lambda v, c: v in ("max", "min"), "'max' or 'min'"),
}


@dataclass
class StepInfo:
    """What ``on_step_end`` sees after an optimizer step.

    ``step`` is the 0-based global index of the step just taken, ``lr`` the learning rate it
    used, ``loss`` its total loss (task + extra) on this process's batch.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int
    step: int
    loss: float
    lr: float
    batch_size: int


@dataclass
class TrainCallbacks:
    """Optional hooks of :func:`train`; ``model`` is always the unwrapped module (not DDP).

    * ``on_epoch_start(epoch, model)``: after ``model.train()``, before the first step (0-based epoch).
    * ``extra_loss(model, output, inputs) -> Tensor | None``: added to the task loss before
      backward (sparsity regularisers, auxiliary losses).
    * ``on_step_end(info: StepInfo)``: after every optimizer step (e.g. re-apply pruning masks).
    * ``on_epoch_end(epoch, model)``: after the last step of the epoch, before eval and the
      checkpoint (e.g. soft filter pruning re-masks here), so both see its changes.
    """

    on_epoch_start: Callable[[int, nn.Module], None] | None = None
    extra_loss: Callable[[nn.Module, Any, torch.Tensor], torch.Tensor | None] | None = None
    on_step_end: Callable[[StepInfo], None] | None = None
    on_epoch_end: Callable[[int, nn.Module], None] | None = None


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``history`` has one dict per epoch, including those done before a resume: ``epoch``
    (0-based), ``steps`` (global steps so far), ``train_loss`` (sample mean of the total loss),
    ``train_accuracy`` (None unless outputs/targets look like logits/labels), ``lr`` (of the
    epoch's last step), ``throughput_sps``, ``epoch_s``, ``extra_loss`` (with that callback) and
    ``eval`` (when evaluated). ``best_epoch`` is 0-based; ``train_s`` covers this call only.
    """

    history: list[dict[str, Any]]
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    best_epoch: int | None
    epochs_completed: int
    steps: int
    train_s: float
    resumed_from_epoch: int
    world_size: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- distributed

def init_distributed() -> bool:
    """Create the default process group when launched by torchrun and none exists yet.

    Uses ``WORLD_SIZE``/``RANK``/``MASTER_ADDR``/``MASTER_PORT`` from the environment, backend
    nccl when CUDA is available (and selects ``cuda:LOCAL_RANK``), else gloo.

    Returns:
        True when this call created the group (the caller should destroy it), False otherwise.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _can_set_signals() -> bool:
    return hasattr(signal, "SIGCHLD") and threading.current_thread() is threading.main_thread()


def is_main_process() -> bool:
    """True on rank 0, or when not running distributed. Before the process group exists and after
    ``train`` has destroyed it, the launcher's ``RANK`` variable (torchrun sets it) decides."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------- learning rate

def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate that optimizer step ``step`` (0-based, global) uses."""
    return config.lr * _lr_factor(config, steps_per_epoch)(step)


def _lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = config.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if config.schedule == "step":
            return config.gamma ** (step // (config.step_size * steps_per_epoch))
        return 1.0

    return factor


# ---------------------------------------------------------------------------- the loop

def _freeze_(model: nn.Module, patterns: tuple[str, ...]) -> None:
    """Set requires_grad False on the parameters matching any pattern (all checked first)."""
    names = [name for name, _ in model.named_parameters()]
    hits = set()
    for pattern in patterns:
        regex = re.compile(pattern)
        found = [n for n in names if n == pattern or n.startswith(pattern + ".") or regex.fullmatch(n)]
        if not found:
            raise ValueError(f"frozen pattern {pattern!r} matches no parameter of {type(model).__name__} "
                             f"(parameters: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
        hits.update(found)
    for name in hits:
        model.get_parameter(name).requires_grad_(False)


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


def _first(obj: Any) -> Any:
    return obj[0] if isinstance(obj, (list, tuple)) and obj else obj


def _default_loss(label_smoothing: float) -> Callable[[Any, Any], torch.Tensor]:
    def loss(output: Any, target: Any) -> torch.Tensor:
        return F.cross_entropy(_first(output), _first(target), label_smoothing=label_smoothing)
    return loss


def _correct(output: Any, target: Any) -> int | None:
    """Correct top-1 predictions when output/target look like class logits and labels, else None."""
    logits, labels = _first(output), _first(target)
    if (isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor) and logits.ndim == 2
            and labels.ndim == 1 and not labels.is_floating_point() and len(logits) == len(labels)):
        return int((logits.detach().argmax(1) == labels).sum())
    return None


@torch.no_grad()
def _update_ema_(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
        if e.is_floating_point():
            e.lerp_(m, 1.0 - decay)  # e = decay * e + (1 - decay) * m
        else:
            e.copy_(m)


def _progress(show: bool):
    return rp.Progress(rp.TextColumn("[bold]epoch {task.fields[epoch]}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TextColumn("{task.fields[stats]}"), rp.TimeRemainingColumn(), disable=not show)


def _evaluate(eval_fn: Callable[[nn.Module], dict[str, float]], model: nn.Module) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = eval_fn(model)
    if not isinstance(metrics, dict):
        raise TypeError(f"eval_fn must return a dict of metrics, got {type(metrics).__name__}")
    return {str(k): float(v) for k, v in metrics.items()}


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def train(model: nn.Module, train_data: Dataset, config: TrainConfig, *,
          loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
          eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
          output: str | os.PathLike | None = None, resume: bool = False,
          callbacks: TrainCallbacks | None = None, sampler: Any = None, batch_sampler: Any = None,
          progress: bool = True) -> TrainResult:
    """Train ``model`` in place on ``train_data`` as ``config`` says; see the module docstring.

    Args:
        model: the module, already on its device (batches follow its first parameter). It
            ends in its original train/eval mode, holding the EMA weights when ``ema_decay``.
        train_data: map-style dataset of ``(x, y)`` or ``(x, y, *extra)`` items.
        loss_fn: ``loss_fn(output, y) -> scalar``; default cross entropy with
            ``config.label_smoothing`` on the first element of tuple outputs/targets.
        eval_fn: ``eval_fn(model) -> {metric: value}``, run every ``eval_every`` epochs and
            after the last, in eval mode under ``no_grad``, on rank 0 only.
        output: directory for checkpoints and ``history.json`` (nothing is written if None).
        resume: continue from ``output/checkpoint.pt`` if it exists (else start fresh).
        callbacks: hooks, see :class:`TrainCallbacks`.
        sampler / batch_sampler: replace the default (Distributed)Sampler; their
            ``set_epoch(epoch)`` is called when present. Under DDP they must shard the data.
        progress: show a rich progress bar (rank 0).

    Raises:
        ValueError: a ``frozen`` pattern matches nothing, the data yields no batch, ``resume``
            without ``output``, or ``config.monitor`` is not an eval metric.
        CheckpointError: on resume, an unreadable checkpoint or a different architecture.
    """
    if sampler is not None and batch_sampler is not None:
        raise ValueError("pass sampler or batch_sampler, not both")
    if resume and output is None:
        raise ValueError("resume=True needs the output directory that holds the checkpoint")
    created_group = init_distributed()
    rank, world = _rank_world()
    callbacks = callbacks or TrainCallbacks()
    out_dir = Path(output) if output is not None else None
    if out_dir is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    old_threads = torch.get_num_threads()
    modes = module_modes(model)
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    # DataLoader worker processes make torch install a SIGCHLD handler that stays after the workers are
    # gone and then fires for any later child process; the full test suite crashed (SIGSEGV) in it
    sigchld = signal.getsignal(signal.SIGCHLD) if _can_set_signals() else None
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        _freeze_(model, config.frozen)
        return _run(model, train_data, config, loss_fn or _default_loss(config.label_smoothing), eval_fn,
                    out_dir, resume, callbacks, sampler, batch_sampler, progress, rank, world)
    finally:
        for name, flag in requires_grad.items():
            model.get_parameter(name).requires_grad_(flag)
        restore_modes_(model, modes)
        torch.set_num_threads(old_threads)
        if sigchld is not None:
            signal.signal(signal.SIGCHLD, sigchld)
        if created_group:
            dist.destroy_process_group()


def _run(model, data, config, loss_fn, eval_fn, out_dir, resume, callbacks, sampler, batch_sampler, progress,
         rank, world) -> TrainResult:
    device = next(model.parameters()).device
    _seed_everything(config.seed + rank)
    if sampler is None and batch_sampler is None:
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=config.shuffle,
                                     seed=config.seed, drop_last=config.drop_last)
    generator = torch.Generator()
    loader_kw = {"batch_sampler": batch_sampler} if batch_sampler is not None else {
        "sampler": sampler, "batch_size": config.batch_size, "drop_last": config.drop_last}
    loader = DataLoader(data, num_workers=config.num_workers, worker_init_fn=_seed_worker, generator=generator,
                        pin_memory=device.type == "cuda", **loader_kw)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(f"the training data ({len(data)} samples, batch_size {config.batch_size}, "
                         f"drop_last {config.drop_last}, world size {world}) yields no batch")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = _make_optimizer(params, config)
    factor = _lr_factor(config, steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    ema = None
    if config.ema_decay is not None:
        ema = copy.deepcopy(model).eval().requires_grad_(False)

    start_epoch, step, history, best = 0, 0, [], {"epoch": None, "metrics": {}, "value": None}
    ckpt_path = out_dir / CHECKPOINT_FILE if out_dir is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        start_epoch, step, history, best = _restore_(ckpt_path, model, optimizer, scheduler, ema, factor, device,
                                                     config.seed, rank, world)
    resumed_from = start_epoch
    net: nn.Module = model  # wrapped after the restore: DDP broadcasts rank 0's weights when built
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    t_start = time.perf_counter()
    eval_model = ema if ema is not None else model
    with _progress(progress and rank == 0) as bar:
        for epoch in range(start_epoch, config.epochs):
            for s in (sampler, batch_sampler):
                if hasattr(s, "set_epoch"):
                    s.set_epoch(epoch)
            generator.manual_seed((config.seed * 1_000_003 + epoch) * 1009 + rank)  # worker seeds
            model.train()
            if callbacks.on_epoch_start:
                callbacks.on_epoch_start(epoch, model)
            task = bar.add_task("train", total=steps_per_epoch, epoch=f"{epoch + 1}/{config.epochs}", stats="")
            # sums over this process: loss * n, n, correct, n with accuracy, extra loss * n
            totals = torch.zeros(5, dtype=torch.float64)
            t_epoch = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            for batch in loader:
                if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                    raise ValueError("training items must be (input, target[, extra...]) tuples")
                x, y = _to(batch[0], device), _to(batch[1], device)
                out = net(x)
                loss = loss_fn(out, y)
                extra = callbacks.extra_loss(model, out, x) if callbacks.extra_loss else None
                total = loss + extra if extra is not None else loss
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    _update_ema_(ema, model, config.ema_decay)
                n = len(x)
                loss_value = float(total.detach())
                correct = _correct(out, y)
                totals += torch.tensor([loss_value * n, n, correct or 0, n if correct is not None else 0,
                                        float(extra.detach()) * n if extra is not None else 0.0], dtype=torch.float64)
                if callbacks.on_step_end:
                    callbacks.on_step_end(StepInfo(model, optimizer, epoch, step, loss_value, lr, n))
                step += 1
                seen = totals[1].item() * world
                acc = f" acc {totals[2] / totals[3]:.1%}" if totals[3] else ""
                bar.update(task, advance=1, stats=f"loss {totals[0] / totals[1]:.4f}{acc} "
                                                  f"{seen / (time.perf_counter() - t_epoch):.0f} samples/s")
            if world > 1:  # on the model's device: nccl reduces CUDA tensors only
                totals = totals.to(device)
                dist.all_reduce(totals)
                totals = totals.cpu()
            epoch_s = time.perf_counter() - t_epoch
            bar.remove_task(task)
            if callbacks.on_epoch_end:
                callbacks.on_epoch_end(epoch, model)
            record: dict[str, Any] = {
                "epoch": epoch, "steps": step, "train_loss": float(totals[0] / totals[1]),
                "train_accuracy": float(totals[2] / totals[3]) if totals[3] else None,
                "lr": lr, "throughput_sps": float(totals[1]) / epoch_s, "epoch_s": epoch_s}
            if callbacks.extra_loss:
                record["extra_loss"] = float(totals[4] / totals[1])
            last = epoch + 1 == config.epochs
            if eval_fn is not None and ((epoch + 1) % config.eval_every == 0 or last):
                metrics = _broadcast(_evaluate(eval_fn, eval_model) if rank == 0 else None, world)
                record["eval"] = metrics
                improved = _track_best(best, metrics, epoch, config)
                if improved and out_dir is not None and rank == 0:
                    _save(out_dir / BEST_FILE, eval_model, epoch=epoch + 1, metrics=metrics)
            history.append(record)
            if ckpt_path is not None and ((epoch + 1) % config.checkpoint_every == 0 or last):
                rng = _rng_state(device)
                rngs = [rng] if world == 1 else _gather(rng, world)
                if rank == 0:
                    _save(ckpt_path, model, epoch=epoch + 1, step=step, optimizer=optimizer.state_dict(),
                          scheduler=scheduler.state_dict(), ema=ema.state_dict() if ema is not None else None,
                          rng=rngs, config=config.to_dict(), history=history, best=best)
            if out_dir is not None and rank == 0:
                _write_history(out_dir / HISTORY_FILE, _result(history, best, epoch + 1, step, time.perf_counter()
                                                               - t_start, resumed_from, world), config, device)
    result = _result(history, best, max(start_epoch, config.epochs), step, time.perf_counter() - t_start,
                     resumed_from, world)
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    return result


def _gather(obj: Any, world: int) -> list[Any]:
    boxes: list[Any] = [None] * world
    dist.all_gather_object(boxes, obj)
    return boxes


def _track_best(best: dict[str, Any], metrics: dict[str, float], epoch: int, config: TrainConfig) -> bool:
    key = config.monitor or next(iter(metrics), None)
    if key is None:
        return False
    if key not in metrics:
        raise ValueError(f"monitor metric {key!r} is not among the eval metrics {sorted(metrics)}")
    value = metrics[key]
    better = best["value"] is None or (value > best["value"] if config.monitor_mode == "max" else value < best["value"])
    if better:
        best.update(epoch=epoch, metrics=metrics, value=value)
    return better


def _result(history, best, epochs, steps, train_s, resumed_from, world) -> TrainResult:
    final = next((r["eval"] for r in reversed(history) if "eval" in r), {})
    return TrainResult(history=list(history), final_metrics=dict(final), best_metrics=dict(best["metrics"]),
                       best_epoch=best["epoch"], epochs_completed=epochs, steps=steps, train_s=train_s,
                       resumed_from_epoch=resumed_from, world_size=world)


def _write_history(path: Path, result: TrainResult, config: TrainConfig, device: torch.device) -> None:
    doc = {"schema_version": HISTORY_SCHEMA_VERSION, "config": config.to_dict(),
           "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
                           "world_size": result.world_size},
           **result.to_dict()}
    text = json.dumps(doc, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
