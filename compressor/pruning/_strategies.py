"""Pruning strategies: how scores and training turn into a smaller model.

The strategies and the equation numbers cited below are those of the survey "Exploiting
prunability for person re-identification" (Masson et al. 2021).

Every strategy ends with a **physically** smaller model (``apply_removal``/``prune_model``)
and uses :func:`compressor.train` for its training phases:

* ``oneshot``: rank, prune to the target, fine-tune ("Exploiting prunability" Alg. 1).
* ``iterative``: rank -> remove ``step`` of the target -> retrain, until the target is met
  (the protocol of "Exploiting prunability": 5% per iteration, 1 ranking epoch, 4 retraining epochs).
* ``psfp``: every epoch zero the lowest-scoring filters on the exponential schedule, let them
  keep learning, and remove the zeroed ones at the end ("Exploiting prunability" eq. 11–12).
* ``autobalance``: L1 split into P (prune) and R (keep), train on ``L0 + a S(P) + t S(R)``,
  then remove P ("Exploiting prunability" eq. 3–10).
* ``play_and_prune``: an L1 penalty on the lowest filters (AFP) with a threshold and penalty
  driven by an accuracy tolerance (PRC) ("Exploiting prunability" eq. 18–23).

Each strategy has its own frozen config (:class:`OneShotConfig`, :class:`IterativeConfig`,
:class:`PSFPConfig`, :class:`AutoBalanceConfig`, :class:`PlayAndPruneConfig`), and the config's
class selects the strategy in :func:`run_strategy`; the configs and the strategy registry are in
``_strategy_configs``.

Layer-wise against global ranking is the target's choice (``ratio`` is layer-wise;
``global_ratio``, ``target_flops`` and ``target_params`` rank globally), and the ResNet residual
policy is ``PruneConfig.residual``. The full recipe goes into the model's metadata, which the
bundle manifest shows.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import brentq
from torch import nn

from compressor.pruning._api import apply_removal, graph_for, prune_model
from compressor.graph import (as_tuple, ChannelGroup, count_cost, DependencyGraph, module_modes, PRODUCER_KINDS,
                              restore_modes_)
from compressor.pruning._config import PruneConfig
from compressor.pruning._strategy_configs import (AutoBalanceConfig, IterativeConfig, OneShotConfig,
                                                  PlayAndPruneConfig, PSFPConfig, StrategyConfig, _SOFT, _record,
                                                  _spec_of, register_strategy)
from compressor.criteria import CriterionContext, get_criterion, producer_weights
from compressor.pruning._select import select_removal
from compressor.pruning._surgery import zero_channels_
from compressor.training import module_top1, train, TrainCallbacks, TrainConfig
from compressor.pruning._align import resolve_alignment


@dataclass
class StrategyResult:
    """The pruned model, its cost against the original (MACs per sample), and what happened."""

    model: nn.Module
    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    history: list[dict[str, Any]]
    recipe: dict[str, Any]
    seconds: float

    @property
    def flops_ratio(self) -> float:
        return self.macs_after / self.macs_before

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "model"}
        return {**out, "flops_ratio": self.flops_ratio, "params_ratio": self.params_ratio}


def psfp_schedule(t: float, total: float, final: float, d: float = 0.125) -> float:
    """Pruning rate of epoch ``t`` of ``total``: ``P'_t = a e^{-k t} + b`` ("Exploiting prunability" eq. 11–12).

    The constants solve ``P'_0 = 0``, ``P'_T = P`` and ``P'_{D T} = 3P/4`` (``final`` = P,
    ``d`` = D in (0, 0.75)). With ``u = e^{-k D T}`` the conditions give
    ``(1 - u) / (1 - u^{1/D}) = 3/4``, solved numerically.
    """
    if not 0 < d < 0.75:
        raise ValueError(f"d must be in (0, 0.75), got {d}")
    if total <= 0:
        raise ValueError(f"total must be > 0, got {total}")
    u = brentq(lambda v: (1 - v) - 0.75 * (1 - v ** (1 / d)), 1e-12, 1 - 1e-12)
    k = -math.log(u) / (d * total)
    b = final / (1 - math.exp(-k * total))  # a = -b from P'_0 = 0
    return b * (1 - math.exp(-k * t))


# ---- the run shared by every strategy ----------------------------------------------------------


@dataclass
class _Run:
    model: nn.Module  # a private copy, trained and pruned freely
    inputs: tuple[Any, ...]
    prune: PruneConfig
    strategy: StrategyConfig
    train_config: TrainConfig
    train_data: Any
    eval_data: Any
    loss_fn: Any
    progress: bool
    base_macs: float
    base_params: int
    graph: DependencyGraph  # of the unpruned model; soft strategies keep its structure until the end
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def base_removable(self) -> int:
        return int(self.graph.removable.size)

    @property
    def original_widths(self) -> dict[str, int]:
        """Output channels of every producer layer of the unpruned model."""
        return {m.module: m.size for m in self.graph.members if m.kind in PRODUCER_KINDS}

    def fit(self, model: nn.Module, epochs: int, phase: str, callbacks: TrainCallbacks | None = None) -> None:
        """Train ``model`` in place for ``epochs`` (nothing when 0) and log the phase."""
        if epochs <= 0:
            return
        config = dataclasses.replace(self.train_config, epochs=epochs, warmup_epochs=min(
            self.train_config.warmup_epochs, epochs))
        result = train(model, self.train_data, config, loss_fn=self.loss_fn, callbacks=callbacks,
                       progress=self.progress)
        last = result.history[-1]
        self.history.append({"phase": phase, "epochs": epochs, "train_loss": last["train_loss"],
                             "train_accuracy": last.get("train_accuracy"), "seconds": result.train_s})

    def cost(self, model: nn.Module) -> tuple[float, int]:
        report = count_cost(model, self.inputs)
        return report.macs, report.params

    def context(self, graph: DependencyGraph) -> CriterionContext:
        spec = get_criterion(self.prune.criterion)
        return CriterionContext(example_inputs=self.inputs, data=self.train_data, loss_fn=self.loss_fn,
                                batch_size=self.prune.calib_batch_size, num_batches=self.prune.calib_batches,
                                options=spec.resolve_options(self.prune.criterion_options), seed=self.prune.seed)

    def weight_scores(self, model: nn.Module, graph: DependencyGraph) -> np.ndarray:
        """Scores of the configured criterion, which must not need data (soft strategies re-rank often)."""
        return get_criterion(self.prune.criterion)(model, graph, self.context(graph))

    def share(self, fraction: float, *, removed_atoms: int = 0, macs_now: float | None = None,
              params_now: int | None = None, done: float = 0.0,
              graph_now: DependencyGraph | None = None) -> PruneConfig | None:
        """The config removing ``fraction`` of the target in total, given ``done`` already removed.

        For a model already pruned by ``done`` of the target, the target is re-expressed
        relative to the current model. Returns None when nothing is left to remove.
        """
        key, value = self.prune.target
        changes: dict[str, Any] = {}
        if key == "ratio" and graph_now is not None and done > 0:
            changes = {"ratio": 0.0, "layer_ratios": self._group_ratios(graph_now, fraction)}
            nothing = not any(v > 0 for v in changes["layer_ratios"].values())
        elif key == "ratio":  # the unpruned model: the share of each layer's ratio
            changes = {"ratio": value * fraction, "layer_ratios": {p: r * fraction for p, r in self.prune.layer_ratios.items()}}
            nothing = all(v <= 1e-9 for v in [changes["ratio"], *changes["layer_ratios"].values()])
        elif key == "global_ratio":  # of the original model's removable channels
            left = value * fraction * self.base_removable - removed_atoms
            now = self.base_removable - removed_atoms
            changes = {"global_ratio": min(max(left / max(now, 1), 0.0), 0.999999)}
            nothing = left < 0.5
        else:
            base = self.base_macs if key == "target_flops" else self.base_params
            now = (macs_now if key == "target_flops" else params_now) or base
            keep = (1 - (1 - value) * fraction) * base / now
            changes = {key: min(keep, 1.0)}
            nothing = keep >= 1.0 - 1e-9
        if nothing:
            return None
        return dataclasses.replace(self.prune, **changes)

    def _group_ratios(self, graph: DependencyGraph, fraction: float) -> dict[str, float]:
        """Exact per-layer ratios of an already pruned model for a layer-wise target.

        Each group keeps ``round((1 - r * fraction) * original width)`` channels, so that
        repeated small steps do not drift through rounding. Keys are escaped layer names.
        """
        patterns = [(re.compile(p), r) for p, r in self.prune.layer_ratios.items()]
        widths = self.original_widths
        out = {}
        for group, names in _prunable_groups(graph):
            ratio = self.prune.ratio
            for pattern, r in patterns:
                if any(pattern.fullmatch(n) for n in names):
                    ratio = r
            keep = round((1 - ratio * fraction) * widths.get(names[0], len(group.atoms)))
            out[re.escape(names[0])] = min(max(1 - keep / len(group.atoms), 0.0), 0.999999)
        return out


def _prunable_groups(graph: DependencyGraph) -> list[tuple[ChannelGroup, list[str]]]:
    """(group, names of the layers producing its channels) of every group with removable channels.

    A layer-wise config keyed by ``re.escape(names[0])`` addresses exactly that group, since
    ``layer_ratios`` apply to the channels a matching layer produces.
    """
    out = []
    for group in graph.groups:
        names = [graph.members[m].module for m in group.members if graph.members[m].kind in PRODUCER_KINDS]
        if group.removable.size and names:
            out.append((group, names))
    return out


def _check_inputs(prune: PruneConfig, strategy: StrategyConfig, train_config: TrainConfig, train_data: Any) -> None:
    soft = isinstance(strategy, _SOFT)
    retrains = isinstance(strategy, IterativeConfig) and strategy.retrain_epochs > 0
    trains = strategy.finetune_epochs > 0 or soft or retrains
    spec = get_criterion(prune.criterion)
    if (trains or spec.needs_data) and train_data is None:
        why = f"criterion {prune.criterion!r} is data-based" if spec.needs_data else f"strategy {strategy.name!r} trains"
        raise ValueError(f"{why} and needs training data (train_data=...; CLI: --data digits)")
    if spec.needs_data and soft:
        raise ValueError(f"strategy {strategy.name!r} re-ranks filters by their weights during training; "
                         f"use a weight-based criterion (l1, l2, fpgm ...), not {prune.criterion!r}")
    if soft and spec.after_removal is not None:
        raise ValueError(f"strategy {strategy.name!r} cannot use {prune.criterion!r}, whose refit needs the "
                         "unpruned model at removal time")
    if train_config.ema_decay is not None and isinstance(strategy, (PSFPConfig, PlayAndPruneConfig)):
        raise ValueError("ema_decay would average the zeroed filters back in; train without EMA for "
                         f"strategy {strategy.name!r}")


def run_strategy(model: nn.Module, example_inputs: Any, prune: PruneConfig, strategy: StrategyConfig | None = None,
                 *, train_data: Any = None, eval_data: Any = None, train_config: TrainConfig | None = None,
                 loss_fn: Callable[[Any, Any], torch.Tensor] | None = None, progress: bool = False) -> StrategyResult:
    """Prune ``model`` to ``prune``'s target with ``strategy``; the input model is not modified.

    Args:
        model: the trained network.
        example_inputs: tensor or tuple used to trace the model (MACs are per sample at its size).
        prune: criterion, target, residual policy, rounding ... (:class:`PruneConfig`).
        strategy: the strategy's config, whose class selects it: :class:`OneShotConfig` (the default,
            without fine-tuning), :class:`IterativeConfig`, :class:`PSFPConfig` ... or a user one.
        train_data: map-style ``(x, y)`` dataset for training phases and data-based criteria.
        eval_data: dataset whose top-1 accuracy drives Play-and-Prune (default ``train_data``).
        train_config: optimiser, lr, batch size ... of every training phase; its ``epochs`` is
            replaced by the phase's own count.
        loss_fn: training loss (default cross entropy).
        progress: show training progress bars.

    Raises:
        ValueError: a config of no registered strategy; a strategy that trains, or a data-based
            criterion, without ``train_data``;
            incompatible choices (named in the message); and :func:`prune_model`'s errors.
    """
    strategy = strategy if strategy is not None else OneShotConfig()
    spec = _spec_of(strategy)
    train_config = train_config or TrainConfig(epochs=1, lr=0.01, batch_size=64)
    _check_inputs(prune, strategy, train_config, train_data)

    prune = resolve_alignment(prune)  # once, so every phase uses and records the same alignment
    start = time.perf_counter()
    inputs = as_tuple(example_inputs)
    work = copy.deepcopy(model)
    base = count_cost(work, inputs)
    run = _Run(work, inputs, prune, strategy, train_config, train_data, eval_data, loss_fn, progress,
               base.macs, base.params, graph_for(work, inputs, prune))
    pruned = spec.fn(run)
    run.fit(pruned, strategy.finetune_epochs, "finetune")
    macs, params = run.cost(pruned)
    recipe = {"strategy": _record(strategy), "prune": prune.to_dict(), "train": train_config.to_dict(),
              "phases": run.history}
    metadata = dict(getattr(pruned, "compressor_metadata", {}) or {})
    metadata["history"] = [*metadata.get("history", []),
                           {"step": "strategy", "recipe": recipe, "flops_ratio": macs / base.macs,
                            "params_ratio": params / base.params}]
    pruned.compressor_metadata = metadata
    return StrategyResult(pruned, base.macs, macs, base.params, params, run.history, recipe,
                          time.perf_counter() - start)


# ---- the strategies ----------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_batchnorm_(model: nn.Module, data: Any, batches: int, batch_size: int = 64, seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` batches of ``data``.

    The statistics are reset and averaged over the batches (cumulative average); weights are not
    touched and the model's train/eval modes are restored. Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches <= 0 or data is None:
        return 0

    modes, momenta = module_modes(model), [m.momentum for m in norms]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    used = 0
    try:
        model.train()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
        for x, *_ in loader:
            if used >= batches:
                break
            model(x.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        restore_modes_(model, modes)
    return used


def _log_removal(run: _Run, phase: str, model: nn.Module, **extra: Any) -> tuple[float, int]:
    """Recalibrate BatchNorm after a physical removal, log the cost reached and return it (MACs, params)."""
    if run.strategy.bn_recalibration and run.train_data is not None:
        extra["bn_recalibration_batches"] = recalibrate_batchnorm_(
            model, run.train_data, run.strategy.bn_recalibration, run.train_config.batch_size, run.prune.seed)
    macs, params = run.cost(model)
    run.history.append({"phase": phase, "flops_ratio": macs / run.base_macs, "params_ratio": params / run.base_params,
                        **extra})
    return macs, params


@register_strategy("oneshot", OneShotConfig)
def oneshot(run: _Run) -> nn.Module:
    """Rank once, prune to the target (fine-tuning follows in run_strategy)."""
    result = prune_model(run.model, run.inputs, run.prune, data=run.train_data, loss_fn=run.loss_fn)
    _log_removal(run, "prune", result.model, channels_removed=result.report.channels_removed)
    return result.model


def _target_amount(prune: PruneConfig) -> float:
    """How much the target removes, in its own units (channels, or the FLOPs/params share)."""
    key, value = prune.target
    if key == "ratio":
        return max([value, *prune.layer_ratios.values()])
    return value if key == "global_ratio" else 1 - value


@register_strategy("iterative", IterativeConfig)
def iterative(run: _Run) -> nn.Module:
    """Repeat rank -> remove ``step`` of the target -> retrain ("Exploiting prunability": 5%, 1 and 4 epochs)."""
    s = run.strategy
    amount = _target_amount(run.prune)
    iterations = max(1, math.ceil(amount / s.step - 1e-9))
    model, done, removed_atoms = run.model, 0.0, 0
    macs, params = run.base_macs, run.base_params  # retraining keeps the architecture: only removals change them
    for i in range(1, iterations + 1):
        fraction = min(1.0, i * s.step / amount) if amount > 0 else 1.0
        graph = graph_for(model, run.inputs, run.prune) if done > 0 and run.prune.ratio is not None else None
        config = run.share(fraction, removed_atoms=removed_atoms, macs_now=macs, params_now=params, done=done,
                           graph_now=graph)
        if config is not None:
            if get_criterion(config.criterion).needs_data and s.rank_epochs > 0:
                per_epoch = math.ceil(len(run.train_data) / config.calib_batch_size)
                config = dataclasses.replace(config, calib_batches=s.rank_epochs * per_epoch)
            result = prune_model(model, run.inputs, config, data=run.train_data, loss_fn=run.loss_fn)
            model = result.model
            removed_atoms += result.report.channels_removed
            macs, params = _log_removal(run, f"iteration {i}: prune", model,
                                        channels_removed=result.report.channels_removed)
        run.fit(model, s.retrain_epochs, f"iteration {i}: retrain")
        done = fraction
    return model


def _per_layer_shares(run: _Run, graph: DependencyGraph, final: np.ndarray, fraction: float) -> PruneConfig:
    """A layer-wise config removing ``fraction`` of what ``final`` removes from each group.

    PSFP zeroes "the lowest P'_t fraction in each layer": a FLOPs or global target is turned
    into per-layer rates once, from the first ranking, so the layers do not trade channels
    from one epoch to the next.
    """
    ratios = {re.escape(names[0]): fraction * float(final[group.atoms].sum()) / len(group.atoms)
              for group, names in _prunable_groups(graph)}
    return dataclasses.replace(run.prune, ratio=0.0, global_ratio=None, target_flops=None, target_params=None,
                               layer_ratios=ratios)


def _zeroing_callbacks(run: _Run, graph: DependencyGraph, fraction_at: Callable[[int], float],
                       masks: list[np.ndarray]) -> TrainCallbacks:
    """on_epoch_end: rank the live weights and zero the ``fraction_at(epoch)`` share of each layer's target."""
    final = select_removal(graph, run.weight_scores(run.model, graph), run.prune)

    def on_epoch_end(epoch: int, model: nn.Module) -> None:
        config = _per_layer_shares(run, graph, final, fraction_at(epoch))
        removed = select_removal(graph, run.weight_scores(model, graph), config)
        zero_channels_(model, graph, removed)
        masks.append(removed)
        run.history.append({"phase": f"epoch {epoch}: soft prune", "share_of_target": fraction_at(epoch),
                            "zeroed": int(removed.sum())})

    return TrainCallbacks(on_epoch_end=on_epoch_end)


@register_strategy("psfp", PSFPConfig)
def psfp(run: _Run) -> nn.Module:
    """Progressive soft filter pruning: zero on the exponential schedule, remove at the end."""
    s = run.strategy
    graph = run.graph
    masks: list[np.ndarray] = []
    # "Exploiting prunability" eq. 11-12: the zeroed share after epoch e (1-based t = e + 1) follows P'_t / P
    share = lambda e: 1.0 if e + 1 >= s.epochs else psfp_schedule(e + 1, s.epochs, 1.0, s.d)  # noqa: E731
    callbacks = _zeroing_callbacks(run, graph, share, masks)
    run.fit(run.model, s.epochs, "psfp train", callbacks)
    result = apply_removal(run.model, run.inputs, graph, masks[-1], run.prune,
                           record={"step": "psfp remove", "config": run.prune.to_dict()})
    _log_removal(run, "remove zeroed", result.model, channels_removed=int(masks[-1].sum()))
    return result.model


def _producer_rows(model: nn.Module, graph: DependencyGraph, removed: np.ndarray):
    """(module, rows in P, rows in R) of every conv/Linear producer whose rows the mask touches."""
    modules = dict(model.named_modules())
    out = []
    for m, member in enumerate(graph.members):
        if member.kind not in PRODUCER_KINDS:
            continue
        atoms = graph.member_atoms(m)
        prunable = atoms >= 0
        in_p = np.zeros(atoms.shape, dtype=bool)
        in_p[prunable] = removed[atoms[prunable]]
        out.append((modules[member.module], torch.from_numpy(np.flatnonzero(in_p)),
                    torch.from_numpy(np.flatnonzero(~in_p))))
    return out


@register_strategy("autobalance", AutoBalanceConfig)
def autobalance(run: _Run) -> nn.Module:
    """Auto-Balance: weaken P and strengthen R by a balanced L2 regulariser, then remove P."""
    s = run.strategy
    graph = run.graph
    removed = select_removal(graph, run.weight_scores(run.model, graph), run.prune)
    eps = 1e-12
    terms = []  # (module, P rows, lambda_P, R rows, lambda_R), fixed at the start ("Exploiting prunability" Alg. 3)
    for module, p_rows, r_rows in _producer_rows(run.model, graph, removed):
        if p_rows.numel() == 0 or r_rows.numel() == 0:
            continue
        norms = module.weight.detach().reshape(module.weight.shape[0], -1).abs().sum(1)  # eq. 3
        m_p, m_r = norms[p_rows], norms[r_rows]
        theta = 0.5 * (float(m_p.max()) + float(m_r.min()))  # eq. 4-5: the split's L1 threshold
        lam_p = 1 + torch.log(theta / (m_p + eps))  # eq. 6
        lam_r = -1 - torch.log(m_r / (theta + eps))
        terms.append((module, p_rows, lam_p, r_rows, lam_r))

    def extra_loss(model: nn.Module, output: Any, inputs: torch.Tensor) -> torch.Tensor | None:
        if not terms:
            return None
        s_p = sum((lam * module.weight[rows].pow(2).flatten(1).sum(1)).sum() for module, rows, lam, _, _ in terms)
        s_r = sum((lam * module.weight[rows].pow(2).flatten(1).sum(1)).sum() for module, _, _, rows, lam in terms)
        tau = (-s.alpha * s_p / s_r).detach()  # eq. 10
        return s.alpha * s_p + tau * s_r  # eq. 9

    run.fit(run.model, s.epochs, "autobalance train", TrainCallbacks(extra_loss=extra_loss))
    result = apply_removal(run.model, run.inputs, graph, removed, run.prune,
                           record={"step": "autobalance remove", "config": run.prune.to_dict()})
    _log_removal(run, "remove P", result.model, channels_removed=int(removed.sum()))
    return result.model


def _accuracy(model: nn.Module, data: Any) -> float:
    return module_top1(model, data)


def _row_l1(module: nn.Module) -> torch.Tensor:
    return module.weight.detach().reshape(module.weight.shape[0], -1).abs().sum(1)


@register_strategy("play_and_prune", PlayAndPruneConfig)
def play_and_prune(run: _Run) -> nn.Module:
    """Play-and-Prune: AFP penalises the weakest filters, PRC sets penalty and threshold from accuracy.

    Our reading of eq. 21-23: with ``Tr = max(C - (xi - eps), 0)`` the penalty is
    ``lambda_A = Tr * lambda`` (eq. 23) and each layer's threshold is multiplied by ``delta_w``
    while the accuracy is within tolerance (``Tr > 0``) and divided by it otherwise (eq. 21 as
    printed multiplies by Tr, which would collapse the threshold to 0 after one epoch). Filters
    under their layer's threshold are zeroed and held at zero, never more than the target
    allows; if the tolerance stops pruning short of the target, the criterion completes it at
    the end and the history says how many channels that took.
    """
    s = run.strategy
    model, data = run.model, run.eval_data if run.eval_data is not None else run.train_data
    graph = run.graph
    modules = dict(model.named_modules())
    producers = [(m, modules[graph.members[m].module]) for m in producer_weights(model, graph)]
    xi = _accuracy(model, data)
    zeroed = np.zeros(graph.num_atoms, dtype=bool)
    state: dict[str, Any] = {"lam": s.lambda_, "penalised": []}
    # the first threshold: the fraction quantile of each layer's filter L1 norms (eq. 18)
    threshold = {m: float(torch.quantile(_row_l1(module), s.fraction)) for m, module in producers}

    def live_rows(m: int) -> np.ndarray:
        atoms = graph.member_atoms(m)
        return np.flatnonzero((atoms >= 0) & ~zeroed[np.maximum(atoms, 0)])

    def on_epoch_start(epoch: int, model: nn.Module) -> None:  # eq. 18: U = the weakest live filters
        chosen = []
        for m, module in producers:
            live = live_rows(m)
            count = int(round(s.fraction * live.size))
            if count:
                order = torch.argsort(_row_l1(module)[torch.from_numpy(live)])[:count]
                chosen.append((module, torch.from_numpy(live)[order]))
        state["penalised"] = chosen

    def extra_loss(model: nn.Module, output: Any, inputs: torch.Tensor) -> torch.Tensor | None:
        if not state["penalised"] or state["lam"] == 0:
            return None
        return state["lam"] * sum(module.weight[rows].abs().sum() for module, rows in state["penalised"])  # eq. 19

    def on_step_end(info: Any) -> None:
        if zeroed.any():
            zero_channels_(model, graph, zeroed)

    def on_epoch_end(epoch: int, model: nn.Module) -> None:
        accuracy = _accuracy(model, data)
        tr = max(accuracy - (xi - s.tolerance), 0.0)  # eq. 22
        state["lam"] = tr * s.lambda_  # eq. 23
        below = np.zeros(graph.num_atoms, dtype=bool)
        for m, module in producers:
            threshold[m] *= s.delta if tr > 0 else 1 / s.delta  # eq. 21 (see docstring)
            atoms = graph.member_atoms(m)
            hit = (_row_l1(module) < threshold[m]).numpy() & (atoms >= 0)
            below[atoms[hit]] = True
        allowed = select_removal(graph, run.weight_scores(model, graph), run.prune)
        new = below & allowed & ~zeroed
        zeroed[new] = True
        zero_channels_(model, graph, zeroed)
        run.history.append({"phase": f"epoch {epoch}: PRC", "accuracy": accuracy, "baseline_accuracy": xi,
                            "lambda_A": state["lam"], "zeroed": int(zeroed.sum())})

    callbacks = TrainCallbacks(on_epoch_start=on_epoch_start, extra_loss=extra_loss, on_step_end=on_step_end,
                               on_epoch_end=on_epoch_end)
    run.fit(model, s.epochs, "play_and_prune train", callbacks)
    final = select_removal(graph, run.weight_scores(model, graph), run.prune) | zeroed
    completed = int((final & ~zeroed).sum())
    result = apply_removal(model, run.inputs, graph, final, run.prune,
                           record={"step": "play_and_prune remove", "config": run.prune.to_dict()})
    _log_removal(run, "remove", result.model, channels_removed=int(final.sum()), zeroed_by_prc=int(zeroed.sum()),
                 completed_by_criterion=completed)
    return result.model
