"""Channel-importance criteria, by name. A **low score means prune** (a criterion whose paper ranks
the other way round, such as the fatuous auxiliary loss, returns the negated score).

A criterion scores the atoms of a dependency graph: ``criterion(model, graph, ctx)`` returns one
float per atom, where ``ctx`` is a :class:`CriterionContext` (example inputs, calibration data,
loss, seed and the criterion's options). Weight-based criteria score each producer's output
channels (the rows of a conv or Linear weight) and normalise the scores within that layer by
their mean. An atom's score is the **mean over the layers it couples** of their normalised
scores (averaging within a layer when one atom holds several of its channels, as for a conv
group). Normalising first is what makes a global ranking across layers meaningful ("Exploiting
prunability for person re-identification", Masson et al. 2021, §3.3); taking the mean rather
than the sum keeps a residual-stream channel, which couples many convs, on the same scale as a
channel of a single layer.

Each criterion is registered with :func:`register_criterion` and described by a
:class:`CriterionSpec`: whether it needs data, its options with their defaults and checks, and
an optional ``after_removal`` step (ThiNet and LASSO refit the next layer by least squares).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from compressor.common.registry import Registry
from compressor.graph import PRODUCER_KINDS, DependencyGraph
from compressor.common.config import check_keys

ScoreFn = Callable[[nn.Module, DependencyGraph, "CriterionContext"], np.ndarray]
AfterRemoval = Callable[[nn.Module, nn.Module, DependencyGraph, np.ndarray, "CriterionContext"], dict]


@dataclass
class CriterionContext:
    """What a criterion may use besides the model and its graph.

    * ``example_inputs``: the tuple of inputs the graph was traced with;
    * ``data``: a map-style dataset of ``(x, y)`` items (calibration data for the data-based
      criteria; aux_loss also trains on it); ``None`` for weight-based runs;
    * ``loss_fn``: ``loss_fn(output, y) -> scalar``; default cross entropy;
    * ``batch_size`` / ``num_batches``: size and count of the calibration batches;
    * ``options``: the criterion's options, already merged with its defaults and checked;
    * ``seed``: for anything random (batch order, random scores, sampled points).
    """

    example_inputs: tuple[Any, ...] = ()
    data: Any = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None
    batch_size: int = 64
    num_batches: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def batches(self, device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Up to ``num_batches`` seeded, shuffled ``(x, y)`` batches of ``data`` on ``device``."""
        if self.data is None:
            raise ValueError("this criterion needs calibration data, and none was given")
        loader = torch.utils.data.DataLoader(self.data, batch_size=self.batch_size, shuffle=True,
                                             generator=torch.Generator().manual_seed(self.seed))
        for i, batch in enumerate(loader):
            if i >= self.num_batches:
                break
            yield batch[0].to(device), batch[1].to(device)

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(output, target)
        logits = output[0] if isinstance(output, (tuple, list)) else output
        return nn.functional.cross_entropy(logits, target)


@dataclass(frozen=True)
class CriterionSpec:
    """A registered criterion. Calling it scores the atoms: ``spec(model, graph, ctx)``."""

    name: str
    fn: ScoreFn
    needs_data: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, tuple[Callable[[Any], bool], str]] = field(default_factory=dict)
    after_removal: AfterRemoval | None = None
    summary: str = ""

    def resolve_options(self, options: dict[str, Any] | None) -> dict[str, Any]:
        """``options`` merged over the defaults; an unknown key or a bad value is a ValueError."""
        options = dict(options or {})
        check_keys(options, self.defaults, "option", f"criterion {self.name!r}")
        merged = {**self.defaults, **options}
        for key, (ok, what) in self.checks.items():
            if not ok(merged[key]):
                raise ValueError(f"criterion {self.name!r} option {key} must be {what}, got {merged[key]!r}")
        return merged

    def __call__(self, model: nn.Module, graph: DependencyGraph, ctx: CriterionContext | None = None, *,
                 seed: int | None = None, **options: Any) -> np.ndarray:
        if ctx is None:
            ctx = CriterionContext(seed=0 if seed is None else seed)
        elif seed is not None:
            ctx = dataclasses.replace(ctx, seed=seed)
        if options or not ctx.options:
            ctx = dataclasses.replace(ctx, options=self.resolve_options({**ctx.options, **options}))
        if self.needs_data and ctx.data is None:
            raise ValueError(f"criterion {self.name!r} is data-based and needs calibration data "
                             "(prune_model(..., data=dataset); CLI: --data digits)")
        scores = np.asarray(self.fn(model, graph, ctx), dtype=np.float64)
        if scores.shape != (graph.num_atoms,):
            raise ValueError(f"criterion {self.name!r} returned shape {scores.shape}, expected ({graph.num_atoms},)")
        return scores


_CRITERIA: Registry[CriterionSpec] = Registry("criterion", "criteria")


def register_criterion(name: str, *, needs_data: bool = False, defaults: dict[str, Any] | None = None,
                       checks: dict[str, tuple[Callable[[Any], bool], str]] | None = None,
                       after_removal: AfterRemoval | None = None) -> Callable[[ScoreFn], ScoreFn]:
    """Register ``fn(model, graph, ctx) -> scores per atom`` under ``name``.

    ``defaults`` lists every option the criterion accepts; ``checks`` maps an option to
    ``(predicate, "what it must be")``. Registering a name twice is an error.
    """

    def deco(fn: ScoreFn) -> ScoreFn:
        summary = (fn.__doc__ or "").strip().split("\n")[0]
        _CRITERIA.register(name, CriterionSpec(name, fn, needs_data, dict(defaults or {}), dict(checks or {}),
                                               after_removal, summary))
        return fn

    return deco


def list_criteria() -> list[str]:
    """The registered criterion names, sorted."""
    return _CRITERIA.names()


def get_criterion(name: str) -> CriterionSpec:
    """The criterion registered as ``name``; an unknown name is a ValueError listing the known ones."""
    return _CRITERIA.get(name)


def aggregate_member_scores(graph: DependencyGraph, member_scores: dict[int, np.ndarray],
                            normalize: str = "mean", fill: float = 0.0) -> np.ndarray:
    """Per-atom score from per-index scores of some members (see module docstring).

    ``normalize`` is how a layer's scores are scaled before layers are combined: ``"mean"``
    (divide by the layer mean), ``"l2"`` (divide by the layer's L2 norm, Molchanov's Taylor
    normalisation, "Exploiting prunability" eq. 29) or ``"none"``. Atoms touched by none of the
    scored members get ``fill``.
    """
    if normalize not in ("mean", "l2", "none"):
        raise ValueError(f"normalize must be 'mean', 'l2' or 'none', got {normalize!r}")
    total = np.zeros(graph.num_atoms, dtype=np.float64)
    layers = np.zeros(graph.num_atoms, dtype=np.int64)
    for m, scores in member_scores.items():
        atoms = graph.member_atoms(m)
        ok = atoms >= 0
        if not ok.any():
            continue
        s = np.asarray(scores, dtype=np.float64)
        scale = {"mean": lambda v: v.mean(), "l2": lambda v: np.linalg.norm(v), "none": lambda v: 1.0}[normalize](s[ok])
        s = s / scale if scale > 0 else s
        sums = np.bincount(atoms[ok], weights=s[ok], minlength=graph.num_atoms)
        counts = np.bincount(atoms[ok], minlength=graph.num_atoms)
        has = counts > 0
        total[has] += sums[has] / counts[has]
        layers += has
    out = np.full(graph.num_atoms, float(fill))
    np.divide(total, layers, out=out, where=layers > 0)
    return out


def producer_weights(model: nn.Module, graph: DependencyGraph) -> dict[int, torch.Tensor]:
    """Output-channel-major weight matrix (n_out, fan_in) of every conv/Linear producer member."""
    modules = dict(model.named_modules())
    out = {}
    for m, member in enumerate(graph.members):
        if member.kind in PRODUCER_KINDS:
            weight = modules[member.module].weight.detach()
            out[m] = weight.reshape(weight.shape[0], -1).float().cpu()
    return out


def output_members(graph: DependencyGraph) -> dict[int, int]:
    """Members whose module *output* carries an atom's channels, with the channel dim to read.

    BatchNorm members are preferred: their output is what the next layer sees. A producer
    (conv/Linear) is used for the atoms that no BatchNorm touches. Returns ``{member: dim}``,
    dim 1 for convs and BatchNorms, -1 for Linear layers.
    """
    covered = np.zeros(graph.num_atoms, dtype=bool)
    out: dict[int, int] = {}
    for m, member in enumerate(graph.members):
        if member.kind == "bn":
            atoms = graph.member_atoms(m)
            covered[atoms[atoms >= 0]] = True
            out[m] = 1
    for m, member in enumerate(graph.members):
        if member.kind in PRODUCER_KINDS:
            atoms = graph.member_atoms(m)
            atoms = atoms[atoms >= 0]
            if atoms.size and not covered[atoms].all():
                out[m] = 1 if member.kind == "conv_out" else -1
    return out


def weight_criterion(fn: Callable[[torch.Tensor], torch.Tensor]) -> ScoreFn:
    """Build a criterion from a per-row score of the producer weight matrices."""

    def criterion(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
        scores = {m: fn(w).numpy() for m, w in producer_weights(model, graph).items()}
        return aggregate_member_scores(graph, scores)

    criterion.__doc__ = fn.__doc__
    return criterion


def _l1(w: torch.Tensor) -> torch.Tensor:
    """Sum of absolute filter weights (Li et al. 2016; "Exploiting prunability" Alg. 1)."""
    return torch.linalg.vector_norm(w, ord=1, dim=1)


def _l2(w: torch.Tensor) -> torch.Tensor:
    """L2 norm of each filter (SFP/PSFP; "Exploiting prunability" Table 9: slightly better than L1)."""
    return torch.linalg.vector_norm(w, ord=2, dim=1)


register_criterion("l1")(weight_criterion(_l1))
register_criterion("l2")(weight_criterion(_l2))


@register_criterion("random")
def random_criterion(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """Uniform random scores from the seed: the control baseline ("ThinResNet: A New Baseline for
    Structured Convolutional Networks Pruning" argues that baselines matter)."""
    return np.random.default_rng(ctx.seed).random(graph.num_atoms)
