"""Data-based criteria: Taylor, activation entropy and the fatuous auxiliary loss.

Taylor and entropy follow the formulas surveyed in "Exploiting prunability for person
re-identification" (Masson et al. 2021); ``aux_loss`` is the method of "FALF ConvNets: Fatuous
auxiliary loss based filter-pruning for efficient deep CNNs" (Singh et al. 2020).

``taylor`` and ``entropy`` read the outputs of the modules that carry each atom's channels
(:func:`output_members`: a BatchNorm when there is one, else the conv/Linear producer) on the
calibration batches, with the model in eval mode so that BatchNorm statistics stay fixed. A
module that is called several times per forward contributes one score per call, summed.
``aux_loss`` trains a copy of the model for a few epochs and ranks filters by how much they
moved; the model itself is never modified.
"""
from __future__ import annotations

import contextlib
import copy
import random
from collections import defaultdict
from typing import Iterator

import numpy as np
import torch
from torch import nn

from compressor.common.config import int_at_least, number_where
from compressor.criteria._base import (CriterionContext, aggregate_member_scores, output_members, producer_weights,
                        register_criterion)
from compressor.graph import DependencyGraph, evaluating, PRODUCER_KINDS
from compressor.training import train, TrainCallbacks, TrainConfig


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _by_channel(h: torch.Tensor, dim: int, size: int, module: str) -> torch.Tensor:
    """``h`` as (batch, channels, rest): the channel dim moved to 1, every other dim flattened."""
    h = h.movedim(dim, 1)
    if h.shape[1] != size:
        raise RuntimeError(f"output of {module!r} has {h.shape[1]} channels along dim {dim}, the graph expects {size}")
    return h.reshape(h.shape[0], size, -1)


@contextlib.contextmanager
def _hooked(model: nn.Module, graph: DependencyGraph, hook_fn) -> Iterator[None]:
    """Forward hooks ``hook_fn(name, dim, size)`` on every module of :func:`output_members`; always removed."""
    modules = dict(model.named_modules())
    wanted: dict[str, tuple[int, int]] = {}
    for m, dim in output_members(graph).items():
        wanted.setdefault(graph.members[m].module, (dim, graph.members[m].size))
    handles = [modules[name].register_forward_hook(hook_fn(name, dim, size)) for name, (dim, size) in wanted.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _per_member(graph: DependencyGraph, per_module: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    return {m: per_module[graph.members[m].module] for m in output_members(graph)
            if graph.members[m].module in per_module}


@register_criterion("taylor", needs_data=True)
def taylor(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """First-order Taylor expansion of the loss, |mean(H·dL/dH)| (Molchanov 2017; "Exploiting
    prunability" eq. 28–29, Alg. 8).

    For each calibration sample and channel, ``H·dL/dH`` is averaged over the spatial positions,
    *then* the absolute value is taken (as Molchanov's reference code does: positive and
    negative contributions inside one map cancel), and that is averaged over all samples.
    Gradients come from ``torch.autograd.grad`` with respect to the captured activations, so no
    parameter's ``.grad`` is touched, and the input requires grad so that frozen parameters still
    give activations a gradient. Scores are L2-normalised within each layer (eq. 29).
    """
    device = _device(model)
    calls: list[tuple[str, torch.Tensor, int, int]] = []

    def hook_fn(name, dim, size):
        def hook(module, args, output):
            calls.append((name, output, dim, size))
            return output.clone()  # a later in-place op (e.g. Hardtanh(inplace=True)) must not overwrite H

        return hook

    totals: dict[str, torch.Tensor] = {}
    samples = 0
    with evaluating(model), _hooked(model, graph, hook_fn), torch.enable_grad():
        for x, y in ctx.batches(device):
            calls.clear()
            if x.is_floating_point():
                x.requires_grad_(True)
            loss = ctx.loss(model(x), y)
            live = [i for i, (_, h, _, _) in enumerate(calls) if h.requires_grad]
            if not live:
                raise RuntimeError("taylor: no hooked activation requires grad (integer inputs and frozen parameters?)")
            grads = torch.autograd.grad(loss, [calls[i][1] for i in live], allow_unused=True)
            for i, g in zip(live, grads):
                name, h, dim, size = calls[i]
                if g is None:  # this output does not reach the loss
                    continue
                contrib = _by_channel(h.detach() * g, dim, size, name).mean(dim=2).abs().sum(dim=0)
                totals[name] = totals.get(name, 0) + contrib.double().cpu()
            samples += len(x)
            calls.clear()
    if samples == 0:
        raise ValueError("taylor: the calibration data yielded no batch")
    scores = {name: (t / samples).numpy() for name, t in totals.items()}
    return aggregate_member_scores(graph, _per_member(graph, scores), normalize="l2")


def channel_entropy(values: np.ndarray, bins: int) -> np.ndarray:
    """Entropy of each column of ``values`` (samples, channels) in ``bins`` equal-width bins over
    the column's own [min, max]; a constant column has entropy 0 ("Exploiting prunability" eq. 27)."""
    lo, hi = values.min(axis=0), values.max(axis=0)
    width = np.where(hi > lo, hi - lo, 1.0)
    idx = np.clip(np.floor((values - lo) / width * bins).astype(np.int64), 0, bins - 1)
    out = np.zeros(values.shape[1])
    for c in range(values.shape[1]):
        p = np.bincount(idx[:, c], minlength=bins) / values.shape[0]
        p = p[p > 0]
        out[c] = -(p * np.log(p)).sum()
    return out


@register_criterion("entropy", needs_data=True, defaults={"bins": 10},
                    checks={"bins": int_at_least(2)})
def entropy(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """Entropy of each channel's global-average-pooled response (Luo & Wu; "Exploiting prunability" eq. 27, Alg. 7).

    Over the calibration set each channel gives one pooled value per image; those values are
    histogrammed into ``bins`` equal-width bins over the channel's [min, max] and
    ``E_j = -sum p log p``. A channel whose response hardly varies carries little information:
    low entropy means prune. Scores are mean-normalised within each layer.
    """
    device = _device(model)
    pooled: dict[str, list[list[torch.Tensor]]] = defaultdict(list)  # module -> call index -> batches
    count: dict[str, int] = defaultdict(int)

    def hook_fn(name, dim, size):
        def hook(module, args, output):
            # pooled here, before any in-place op downstream can change ``output``
            value = _by_channel(output.detach(), dim, size, name).mean(dim=2).double().cpu()
            if count[name] == len(pooled[name]):
                pooled[name].append([])
            pooled[name][count[name]].append(value)
            count[name] += 1

        return hook

    with evaluating(model), _hooked(model, graph, hook_fn), torch.no_grad():
        for x, _ in ctx.batches(device):
            count.clear()
            model(x)
    bins = ctx.options["bins"]
    scores = {name: sum(channel_entropy(torch.cat(batches).numpy(), bins) for batches in per_call)
              for name, per_call in pooled.items()}
    if not scores:
        raise ValueError("entropy: the calibration data yielded no batch")
    return aggregate_member_scores(graph, _per_member(graph, scores), normalize="mean")


def fatuous_loss(weights: list[torch.Tensor]) -> torch.Tensor:
    """FALF ConvNets eq. 1: ``sum |-1 - w|`` over negative weights plus ``sum |1 - w|`` over the others."""
    return sum((w - torch.where(w >= 0, 1.0, -1.0).to(w)).abs().sum() for w in weights)


@contextlib.contextmanager
def _rng_kept(device: torch.device) -> Iterator[None]:
    """train() seeds torch, numpy and random globally: give the caller its RNG states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


_POSITIVE = number_where(lambda v: v > 0, "a number > 0")


@register_criterion("aux_loss", needs_data=True, defaults={"epochs": 1, "lam": 1e-5, "lr": 0.01, "batch_size": 64},
                    checks={"epochs": int_at_least(1), "lam": _POSITIVE, "lr": _POSITIVE,
                            "batch_size": int_at_least(1)})
def aux_loss(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """Sensitivity to a fatuous auxiliary loss (FALF ConvNets, eq. 1–3).

    A copy ``m`` of the model ``f`` is trained for ``epochs`` epochs on ``ctx.data`` with the
    task loss plus ``lam * sum_layers S_L``, where ``S_L`` pulls every conv/Linear weight towards
    ±1 (eq. 1–2). Each filter's importance ratio is ``FI_j = ||m_j - f_j||_1 / ||f_j||_1`` (eq. 3;
    the paper's "magnitude of difference of filter weights", normalised by the filter's own
    magnitude). A filter that the auxiliary loss moves a lot is unimportant to the task. Only the
    copy is trained; ``model`` is left bit-identical and is what gets pruned.
    """
    opts = ctx.options
    trained = copy.deepcopy(model)
    modules = dict(trained.named_modules())
    names = sorted({mb.module for mb in graph.members if mb.kind in PRODUCER_KINDS})
    weights = [modules[name].weight for name in names]

    def extra_loss(net, output, inputs):
        return opts["lam"] * fatuous_loss(weights) if weights else None  # FALF ConvNets eq. 2

    config = TrainConfig(epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"], schedule="constant",
                         weight_decay=0.0, seed=ctx.seed)  # no eval_fn and no output: no eval, no files
    with _rng_kept(_device(trained)):
        train(trained, ctx.data, config, loss_fn=ctx.loss_fn, callbacks=TrainCallbacks(extra_loss=extra_loss),
              progress=False)
    before, after = producer_weights(model, graph), producer_weights(trained, graph)
    ratios = {}
    for m, f in before.items():
        f, moved = f.double(), after[m].double()
        norm = torch.linalg.vector_norm(f, ord=1, dim=1).clamp_min(1e-12)
        ratios[m] = (torch.linalg.vector_norm(moved - f, ord=1, dim=1) / norm).numpy()
    return -aggregate_member_scores(graph, ratios, normalize="mean")  # FALF ConvNets eq. 3: high ratio = unimportant
