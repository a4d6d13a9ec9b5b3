"""Channel-importance criteria, by name. A **low score means prune** (METHODS.md).

A criterion scores the atoms of a dependency graph: ``criterion(model, graph, seed=...)``
returns one float per atom. Weight-based criteria score each producer's output channels (the
rows of a conv or Linear weight) and normalise the scores within that layer by their mean.
An atom's score is the **mean over the layers it couples** of their normalised scores
(averaging within a layer when one atom holds several of its channels, as for a conv group).
Normalising first is what makes a global ranking across layers meaningful (seed 000 §3.3);
taking the mean rather than the sum keeps a residual-stream channel, which couples many
convs, on the same scale as a channel of a single layer.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from ._graph import PRODUCER_KINDS, DependencyGraph


class Criterion(Protocol):
    def __call__(self, model: nn.Module, graph: DependencyGraph, *, seed: int = 0, **kwargs) -> np.ndarray: ...


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    """Register a criterion under ``name``; registering a name twice is an error."""

    def deco(fn: Criterion) -> Criterion:
        if name in _CRITERIA:
            raise ValueError(f"criterion {name!r} is already registered")
        _CRITERIA[name] = fn
        return fn

    return deco


def list_criteria() -> list[str]:
    return sorted(_CRITERIA)


def get_criterion(name: str) -> Criterion:
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; known criteria: {', '.join(list_criteria())}") from None


def aggregate_member_scores(graph: DependencyGraph, member_scores: dict[int, np.ndarray]) -> np.ndarray:
    """Per-atom score from per-index scores of some members (see module docstring).

    Atoms touched by none of the scored members get 0.
    """
    total = np.zeros(graph.num_atoms, dtype=np.float64)
    layers = np.zeros(graph.num_atoms, dtype=np.int64)
    for m, scores in member_scores.items():
        atoms = graph.member_atoms(m)
        ok = atoms >= 0
        if not ok.any():
            continue
        s = np.asarray(scores, dtype=np.float64)
        mean = s[ok].mean()
        s = s / mean if mean > 0 else s
        sums = np.bincount(atoms[ok], weights=s[ok], minlength=graph.num_atoms)
        counts = np.bincount(atoms[ok], minlength=graph.num_atoms)
        has = counts > 0
        total[has] += sums[has] / counts[has]
        layers += has
    return np.divide(total, layers, out=np.zeros_like(total), where=layers > 0)


def producer_weights(model: nn.Module, graph: DependencyGraph) -> dict[int, torch.Tensor]:
    """Output-channel-major weight matrix (n_out, fan_in) of every conv/Linear producer member."""
    modules = dict(model.named_modules())
    out = {}
    for m, member in enumerate(graph.members):
        if member.kind in PRODUCER_KINDS:
            weight = modules[member.module].weight.detach()
            out[m] = weight.reshape(weight.shape[0], -1).float().cpu()
    return out


def weight_criterion(fn: Callable[[torch.Tensor], torch.Tensor]) -> Criterion:
    """Build a criterion from a per-row score of the producer weight matrices."""

    def criterion(model: nn.Module, graph: DependencyGraph, *, seed: int = 0, **kwargs) -> np.ndarray:
        scores = {m: fn(w).numpy() for m, w in producer_weights(model, graph).items()}
        return aggregate_member_scores(graph, scores)

    criterion.__doc__ = fn.__doc__
    return criterion


# seed 000 Alg. 1 (Li et al. 2016): sum of absolute filter weights
register_criterion("l1")(weight_criterion(lambda w: torch.linalg.vector_norm(w, ord=1, dim=1)))
# SFP/PSFP; seed 000 Table 9: L2 is slightly better than L1
register_criterion("l2")(weight_criterion(lambda w: torch.linalg.vector_norm(w, ord=2, dim=1)))


@register_criterion("random")
def random_criterion(model: nn.Module, graph: DependencyGraph, *, seed: int = 0, **kwargs) -> np.ndarray:
    """Uniform random scores from ``seed``: the control baseline (seed 003 argues baselines matter)."""
    return np.random.default_rng(seed).random(graph.num_atoms)
