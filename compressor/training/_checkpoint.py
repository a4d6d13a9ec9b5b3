"""Training checkpoint files: writing, validating, loading, and the RNG states they carry.

Every file is a ``torch.save``d dict of tensors, lists, dicts and scalars only, so
``torch.load(weights_only=True)`` reads it, and is written atomically (temp file in the same
folder + ``os.replace``). Keys present in every file:

* ``format_version``: ``CHECKPOINT_FORMAT_VERSION``; any other value is rejected.
* ``model``: a ``state_dict()`` of the unwrapped module (no DDP ``module.`` prefix).
* ``architecture``: :func:`architecture_fingerprint`, ``[[parameter name, shape], ...]``,
  compared name by name before any weights are loaded.

``checkpoint.pt`` (``CHECKPOINT_FILE``) holds the raw weights under ``model`` and adds what an
exact resume needs: ``epoch`` (epochs completed), ``step`` (global optimizer steps),
``optimizer`` and ``scheduler`` state dicts, ``ema`` (the EMA ``state_dict()``, or None),
``rng`` (one dict per rank, see :func:`_rng_state`: torch CPU, CUDA when training there, numpy
and Python ``random`` states, as tensors and plain scalars), ``config``
(``TrainConfig.to_dict()``), ``history`` (the per-epoch records) and ``best``
(``{"epoch", "metrics", "value"}`` of the monitored metric).

``best.pt`` (``BEST_FILE``) holds the evaluated weights (the EMA ones when kept) under ``model``,
plus ``epoch`` (epochs completed when evaluated) and ``metrics``.
"""
from __future__ import annotations

import os
import pickle
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.common.files import atomic_write

from compressor.common.errors import CompressorError

__all__ = ["BEST_FILE", "CHECKPOINT_FILE", "CHECKPOINT_FORMAT_VERSION", "CheckpointError", "architecture_fingerprint",
           "load_checkpoint_weights_"]

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(CompressorError, ValueError):
    """A training checkpoint is unreadable or was written for a different architecture."""


def architecture_fingerprint(model: nn.Module) -> list[list[Any]]:
    """``[[parameter name, shape], ...]`` of ``model``, in registration order."""
    return [[name, list(p.shape)] for name, p in model.named_parameters()]


def load_checkpoint_weights_(model: nn.Module, path: str | os.PathLike, *, ema: bool = True) -> nn.Module:
    """Load the weights of a training checkpoint into ``model`` in place and return it.

    Args:
        path: ``checkpoint.pt``, ``best.pt``, or an output directory (its ``checkpoint.pt``).
        ema: from ``checkpoint.pt``, load the EMA weights when the run kept them (the ones
            evaluated); False loads the raw weights.

    Raises:
        CheckpointError: unreadable file, or an architecture that differs (names the first
            mismatching parameter).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    data = _read_checkpoint(path)
    _check_architecture(data["architecture"], model, path)
    state = data["ema"] if ema and data.get("ema") is not None else data["model"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the model: {exc}") from exc
    return model


def _save(path: Path, model: nn.Module, **extra: Any) -> None:
    """Write a checkpoint (tensors, lists, dicts and scalars only, so weights_only loading works)."""
    state = {"format_version": CHECKPOINT_FORMAT_VERSION, "model": model.state_dict(),
             "architecture": architecture_fingerprint(model), **extra}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _restore_(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ema: nn.Module | None,
              factor: Callable[[int], float], device: torch.device, seed: int, rank: int,
              world: int) -> tuple[int, int, list, dict]:
    """Load a checkpoint into the training state; return (epochs done, global step, history, best).

    ``rank``/``world`` are this process's; the RNG states are restored when the checkpoint holds
    one per rank of this world size, else every RNG is reseeded from ``seed``, rank and epoch.
    """
    ckpt = _read_checkpoint(path)
    _check_architecture(ckpt["architecture"], model, path)
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not fit this model/optimizer: {exc}") from exc
    # the schedule of the current config (epochs may have grown) decides the lr of the next step
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor(ckpt["step"])
    if len(ckpt["rng"]) == world:
        _set_rng_state(ckpt["rng"][rank], device)
    else:
        warnings.warn(f"{path} holds RNG states of {len(ckpt['rng'])} processes, this run has {world}; reseeding",
                      stacklevel=4)  # points at the caller of train(): _restore_ <- _run <- train <- caller
        _seed_everything(seed + rank + 1000 * ckpt["epoch"])
    return ckpt["epoch"], ckpt["step"], ckpt["history"], ckpt["best"]


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        version = data.get("format_version") if isinstance(data, dict) else None
        raise CheckpointError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT_VERSION} "
                              f"(format_version {version!r})")
    for key in ("model", "architecture"):
        if key not in data:
            raise CheckpointError(f"{path} lacks the key {key!r}")
    return data


def _check_architecture(saved: list[list[Any]], model: nn.Module, path: Path) -> None:
    ours = {name: shape for name, shape in architecture_fingerprint(model)}
    theirs = {name: list(shape) for name, shape in saved}
    for name in list(theirs) + [n for n in ours if n not in theirs]:
        if name not in ours:
            problem = f"the checkpoint has parameter {name!r} {theirs[name]}, which the model lacks"
        elif name not in theirs:
            problem = f"the model has parameter {name!r} {ours[name]}, which the checkpoint lacks"
        elif ours[name] != theirs[name]:
            problem = f"parameter {name!r} has shape {theirs[name]} in the checkpoint but {ours[name]} in the model"
        else:
            continue
        raise CheckpointError(f"{path} was written for a different architecture: {problem}")


# ---------------------------------------------------------------------------- RNG states

def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
             "numpy_cached_gaussian": float(np_state[4]), "python_version": version,
             "python_state": torch.tensor(py_state, dtype=torch.int64), "python_gauss": gauss}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python_state"].tolist()),
                     state["python_gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker with base_seed + worker_id; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
