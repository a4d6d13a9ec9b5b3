"""Prune to a latency budget measured on the deployment runtime, not guessed from FLOPs.

Two methods, both accepting a candidate only when the upper bound of the bootstrap confidence
interval of its median latency on the runtime is within the budget (the release gate's own
statistics and its ``strict`` decision rule, :func:`benchmarks._decision.decide`, so a lucky
single timing cannot pass a model that is too slow):

``lut`` (default): a per-layer latency lookup table (:mod:`._latency_table`, NetAdapt/HALP) is
    built on the runtime, channels are ordered by *importance lost per millisecond saved*
    (:func:`compressor.cost_aware_path`), and the prefix of that order that meets the budget is
    found by measuring whole-model candidates (the table's sum is a model of the latency; the
    measurements calibrate it).
``search``: the FLOPs target of an ordinary (importance-only) pruning is searched by measuring
    candidates; latency enters only through the measurements.

With ``compare=True`` the ``lut`` method also runs ``search`` to the same budget, so the result
shows what latency-awareness bought: the FLOPs and parameters each keeps at the same measured
latency. Both report the FLOPs-proportional guess ``target_flops = budget / unpruned latency``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.app._latency_table import (
    DEFAULT_FRACTIONS,
    LAYER_TIMING,
    LatencyTable,
    build_latency_table,
    time_model,
)
from benchmarks import decide, summarize, TimingConfig
from compressor.common.errors import UnreachableTargetError
import compressor.app._alignment as _alignment
import torch
from compressor.graph import count_cost
from compressor.pruning import cost_aware_path, plan_pruning, PruneConfig, select_removal, smallest_removal
from runtimes import get_runtime

METHODS = ("lut", "search")


@dataclass
class LatencyCandidate:
    """One measured model: cost ratios and median latency with its CI (ms per batch).

    ``target_flops`` is the FLOPs target that made it (``search``); ``predicted_ms`` the latency
    table's model of it (``lut``).
    """

    flops_ratio: float
    params_ratio: float
    latency_ms_median: float
    latency_ms_ci: tuple[float, float]
    target_flops: float | None = None
    predicted_ms: float | None = None
    samples_ms: list[float] = field(repr=False, default_factory=list)

    def meets(self, budget_ms: float) -> bool:
        """The release gate's ``strict`` rule: the upper end of the median's CI is within the budget."""
        return decide(self.latency_ms_median, self.latency_ms_ci, budget_ms, direction="max", rule="strict").within


@dataclass
class LatencyPruneResult:
    """The chosen model and every measurement that led to it.

    ``flops_chosen`` is the FLOPs-target search's model at the same budget (the same as
    ``chosen`` for ``method="search"``; None when not compared), ``flops_guess`` the
    FLOPs-proportional guess, ``table`` facts about the latency table (``lut``).
    """

    model: Any
    budget_ms: float
    runtime: str
    device: str
    batch_size: int
    threads: int | None
    method: str
    unpruned: LatencyCandidate
    chosen: LatencyCandidate
    candidates: list[LatencyCandidate]
    flops_chosen: LatencyCandidate | None = None
    flops_guess: LatencyCandidate | None = None
    flops_candidates: list[LatencyCandidate] = field(default_factory=list)
    table: dict[str, Any] | None = None
    flops_model: Any = field(default=None, repr=False)
    candidate_models: list[Any] = field(default_factory=list, repr=False)  # keep_models: one per candidate
    flops_candidate_models: list[Any] = field(default_factory=list, repr=False)

    @property
    def met(self) -> bool:
        return self.chosen.meets(self.budget_ms)

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        heavy = ("model", "flops_model", "candidate_models", "flops_candidate_models")
        out = dataclasses.asdict(dataclasses.replace(self, **{k: None for k in heavy}))
        for k in heavy:
            out.pop(k)
        if not samples:
            for c in [out["unpruned"], out["chosen"], out["flops_chosen"], out["flops_guess"], *out["candidates"],
                      *out["flops_candidates"]]:
                if c:
                    c.pop("samples_ms", None)
        return {**out, "met": self.met}


def _latency(model: Any, input_size: tuple[int, ...], runtime: str, device: str, batch_size: int,
             threads: int | None, timing: TimingConfig, seed: int) -> tuple[float, tuple[float, float], list[float]]:
    """Export ``model`` to ONNX, open it on ``runtime`` and time it; (median, CI, samples) in ms."""
    samples = time_model(model, input_size, runtime, device, batch_size, threads, timing, seed)
    stats = summarize(samples, batch_size, seed=seed)
    return stats.latency_ms_median, tuple(stats.median_ci_ms), list(samples)


def _largest_within(measure: Callable[[float, bool], tuple[LatencyCandidate, bool]], budget_ms: float,
                    top: tuple[float, LatencyCandidate], first: float, lowest: float, max_steps: int,
                    resolution: float, what: str) -> tuple[float, LatencyCandidate]:
    """The largest position ``x`` (FLOPs target, or modelled ms) whose model meets the budget.

    ``top`` is the unpruned model (which misses); ``measure(x, again)`` returns the candidate at
    ``x`` and whether it is a model not measured before (``again``: measure it once more).
    Latency grows with ``x``: a proportional step down until a candidate meets the budget, then
    secant steps aimed just under the budget (by the width of the measurements' confidence
    intervals), kept inside the bracket so that it always shrinks. Every miss that becomes the
    bracket's upper end is measured once more before it is trusted.
    """

    seen = {top[0]: top[1]}  # position -> its latest measurement

    def bracket() -> tuple[tuple[float, LatencyCandidate] | None, tuple[float, LatencyCandidate]]:
        meets = [x for x, c in seen.items() if c.meets(budget_ms)]
        lo = max(meets) if meets else None
        hi = min(x for x, c in seen.items() if not c.meets(budget_ms) and (lo is None or x > lo))
        return (None if lo is None else (lo, seen[lo])), (hi, seen[hi])

    x, again, rechecked = first, False, set()
    for _ in range(max_steps + 2):
        found, new = measure(x, again)
        seen[x] = found
        lo, hi = bracket()
        if lo is None:
            if x <= lowest:
                break
            # down: proportionally, or along the line through the two fastest misses when that is
            # steeper (a fixed overhead makes proportional steps crawl), at most to half the former
            proportional = hi[0] * budget_ms / hi[1].latency_ms_median * 0.95
            x = proportional
            (x1, c1), (x2, c2) = sorted(seen.items())[:2]
            if c2.latency_ms_median > c1.latency_ms_median:
                slope = (c2.latency_ms_median - c1.latency_ms_median) / (x2 - x1)
                x = max(min(x, x1 - (c1.latency_ms_median - budget_ms) / slope), proportional / 2)
            x, again = max(x, lowest), False
            continue
        model_of_hi = (hi[1].flops_ratio, hi[1].params_ratio)  # positions can share a model
        if hi[0] != top[0] and model_of_hi not in rechecked:
            # a shared machine's noise can make a model miss that meets; measured once more, a
            # false miss stops being the bracket's end instead of stopping the search short
            rechecked.add(model_of_hi)
            x, again = hi[0], True
            continue
        if not new or hi[0] - lo[0] <= resolution * hi[0]:
            break  # the bracket is as narrow as the candidates are distinct
        (x0, c0), (x1, c1) = lo, hi
        margin = max(c.latency_ms_ci[1] - c.latency_ms_median for c in (c0, c1))
        slope = (c1.latency_ms_median - c0.latency_ms_median) / (x1 - x0)
        x = x0 + (budget_ms - margin - c0.latency_ms_median) / slope if slope > 0 else (x0 + x1) / 2
        x, again = min(max(x, x0 + 0.2 * (x1 - x0)), x1 - 0.2 * (x1 - x0)), False
    lo, hi = bracket()
    if lo is None:
        raise UnreachableTargetError(f"{budget_ms:g} ms looks unreachable by {what}: the fastest candidate measured "
                                     f"{min(c.latency_ms_median for c in seen.values()):.3f} ms")
    return lo


def _aligned_for(config: Any, runtime: str, device: str, batch_size: int, threads: int | None) -> Any:
    """``config`` with the alignment of the runtime the latency is measured on (``round_to="auto"``)."""

    if config.round_to != "auto":
        return config
    target = (runtime, device, batch_size, threads)
    if config.alignment and (config.runtime, config.device, config.batch_size, config.threads) == target:
        return config
    return _alignment.resolve_alignment(dataclasses.replace(config, runtime=runtime, device=device, batch_size=batch_size,
                                                 threads=threads, alignment={}))


def table_align(config: Any) -> int:
    """The latency table's grid multiple: ``round_to``, or the largest alignment ``"auto"`` chose."""
    if config.round_to != "auto":
        return int(config.round_to)
    return max(int(v) for v in config.alignment["kinds"].values())


def prune_to_latency(model: Any, input_size: tuple[int, ...], config: Any, budget_ms: float, *,
                     method: str = "lut", compare: bool = True, runtime: str = "onnxruntime", device: str = "cpu",
                     batch_size: int = 1, threads: int | None = None, timing: TimingConfig | None = None,
                     max_steps: int = 8, data: Any = None, table_path: str | Path | None = None,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, layer_timing: TimingConfig = LAYER_TIMING,
                     keep_models: bool = False, progress: Callable[[str], None] | None = None) -> LatencyPruneResult:
    """Prune ``model`` as ``config`` says, as little as possible while meeting ``budget_ms``.

    Args:
        model: the network (not modified).
        input_size: one sample's shape, e.g. ``(3, 224, 224)``.
        config: :class:`compressor.PruneConfig`; its criterion, rounding, exclusions and residual
            policy are used, its target is replaced (``search``) or ignored (``lut``).
        budget_ms: the latency budget per batch of ``batch_size``, in milliseconds.
        method: ``"lut"`` (latency table, channels removed where they save the most time) or
            ``"search"`` (a measured search over the FLOPs target).
        compare: with ``lut``, also run ``search`` to the same budget and report its model.
        runtime, device, batch_size, threads: where and how the latency is measured.
        timing: the timing loop per candidate (default: >= 20 runs and >= 0.5 s, at most 3 s).
        max_steps: measurements after the first guess, per search (re-measurements included).
        data: calibration data for data-based criteria.
        table_path: a JSON latency table to reuse and extend (``lut``); kept for the next run.
        fractions, layer_timing: the widths timed per layer shape (fractions of the full input and
            output channels) and the timing loop per width (``lut``).
        keep_models: keep every candidate's model in the result (``candidate_models``,
            ``flops_candidate_models``), e.g. to re-measure them side by side.

    Raises:
        ValueError: a budget <= 0, an unknown method, a table measured elsewhere, or a runtime
            that cannot run here (with the reason).
        compressor.UnreachableTargetError: not even the smallest reachable model meets the budget.
    """

    if not isinstance(budget_ms, (int, float)) or not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ValueError(f"the latency budget must be a number of ms > 0, got {budget_ms!r}")
    if method not in METHODS:
        raise ValueError(f"unknown latency pruning method {method!r}; known: {', '.join(METHODS)}")
    reason = get_runtime(runtime).is_available(device=device)
    if reason:
        raise ValueError(f"cannot measure on {runtime}/{device}: {reason}")
    config = _aligned_for(config, runtime, device, batch_size, threads)
    if method == "lut" and table_path is not None and Path(table_path).exists():  # refuse it before measuring
        LatencyTable(runtime, device, batch_size, threads, align=table_align(config)).check_matches(
            LatencyTable.load(table_path), str(table_path))
    timing = timing or TimingConfig(warmup=3, min_runs=20, min_seconds=0.5, max_seconds=3.0)
    log = progress or (lambda message: None)
    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(config.seed))
    base = count_cost(model, example)

    def measure(pruned: Any, **position: Any) -> LatencyCandidate:
        cost = count_cost(pruned, example)
        median, ci, samples = _latency(pruned, tuple(input_size), runtime, device, batch_size, threads, timing,
                                       config.seed)
        return LatencyCandidate(cost.macs / base.macs, cost.params / base.params, median, ci, samples_ms=samples,
                                **position)

    def describe(c: LatencyCandidate) -> str:
        return (f"FLOPs {c.flops_ratio:.1%}, params {c.params_ratio:.1%}, median {c.latency_ms_median:.3f} ms "
                f"(CI {c.latency_ms_ci[0]:.3f}-{c.latency_ms_ci[1]:.3f}) "
                f"{'meets' if c.meets(budget_ms) else 'misses'} {budget_ms:g} ms")

    unpruned = measure(model, target_flops=1.0)
    log(f"unpruned: {describe(unpruned)}")
    facts = dict(budget_ms=budget_ms, runtime=runtime, device=device, batch_size=batch_size, threads=threads,
                 method=method, unpruned=unpruned)
    if unpruned.meets(budget_ms):
        return LatencyPruneResult(model, **facts, chosen=unpruned, candidates=[unpruned], flops_chosen=unpruned,
                                  flops_model=model)
    plan = plan_pruning(model, example, config, data=data)  # scored once for every candidate of both methods
    flops_model, flops_chosen, guess, flops_candidates = None, None, None, []
    if method == "search" or compare:
        flops = _Candidates(plan, measure, describe, log, unpruned)
        flops_model, flops_chosen = _flops_search(plan, flops, budget_ms, unpruned, max_steps)
        guess, flops_candidates = flops.measured[1], flops.measured
        kept = flops.pruned if keep_models else []
        if method == "search":
            return LatencyPruneResult(flops_model, **facts, chosen=flops_chosen, candidates=flops_candidates,
                                      flops_chosen=flops_chosen, flops_guess=guess, flops_candidates=flops_candidates,
                                      flops_model=flops_model, candidate_models=kept, flops_candidate_models=kept)
    lut = _Candidates(plan, measure, describe, log, unpruned)
    lut_model, chosen, table = _lut_search(
        plan, lut, budget_ms, unpruned, max_steps, log,
        dict(runtime=runtime, device=device, batch_size=batch_size, threads=threads, fractions=fractions,
             timing=layer_timing, path=table_path))
    return LatencyPruneResult(lut_model, **facts, chosen=chosen, candidates=lut.measured, flops_chosen=flops_chosen,
                              flops_guess=guess, flops_candidates=flops_candidates, table=table, flops_model=flops_model,
                              candidate_models=lut.pruned if keep_models else [],
                              flops_candidate_models=flops.pruned if keep_models and flops_candidates else [])


class _Candidates:
    """The models one search measured, keyed by the channels they remove (a model is built once)."""

    def __init__(self, plan: Any, measure: Callable[..., LatencyCandidate],
                 describe: Callable[[LatencyCandidate], str], log: Callable[[str], None], unpruned: LatencyCandidate):
        self.plan, self._measure, self._describe, self._log = plan, measure, describe, log
        self.models: dict[bytes, tuple[Any, LatencyCandidate]] = {}
        self.measured = [unpruned]
        self.pruned = [plan.model]  # the model of each measurement

    def at(self, removed: np.ndarray, again: bool, label: str, record: dict[str, Any],
           **position: Any) -> tuple[LatencyCandidate, bool]:
        key = np.packbits(removed).tobytes()
        if key in self.models and not again:
            return self.models[key][1], False
        pruned = self.models[key][0] if key in self.models else self.plan.apply(removed, record=record).model
        found = self._measure(pruned, **position)
        self.models[key] = (pruned, found)
        self.measured.append(found)
        self.pruned.append(pruned)
        self._log(f"{label}{' again' if again else ''}: {self._describe(found)}")
        return found, True

    def model(self, removed: np.ndarray) -> Any:
        return self.models[np.packbits(removed).tobytes()][0]


def _flops_search(plan: Any, candidates: _Candidates, budget_ms: float, unpruned: LatencyCandidate,
                  max_steps: int) -> tuple[Any, LatencyCandidate]:
    """``search``: the largest FLOPs target whose (importance-ranked) model meets the budget."""

    settings = {**plan.config.to_dict(), "ratio": None, "global_ratio": None, "target_params": None}
    graph = plan.graph

    def removal(target: float) -> np.ndarray:
        return select_removal(graph, plan.scores, PruneConfig.from_dict({**settings, "target_flops": target}))

    everything = smallest_removal(graph, plan.scores, plan.config)
    lowest = graph.cost(graph.kept_counts(everything))[0] / graph.macs * (1 + 1e-9)  # the smallest reachable

    def at(target: float, again: bool) -> tuple[LatencyCandidate, bool]:
        record = {"step": "prune", "config": {**settings, "target_flops": target}}
        return candidates.at(removal(target), again, f"FLOPs target {target:.3f}", record, target_flops=target)

    # the first candidate is what "latency scales with FLOPs" would pick
    guess_target = min(max(budget_ms / unpruned.latency_ms_median, lowest), 0.999)
    target, chosen = _largest_within(at, budget_ms, (1.0, unpruned), guess_target, lowest, max_steps, 0.01,
                                     "a FLOPs target")
    return candidates.model(removal(target)), chosen


def _lut_search(plan: Any, candidates: _Candidates, budget_ms: float, unpruned: LatencyCandidate, max_steps: int,
                log: Callable[[str], None], table_kw: dict[str, Any]) -> tuple[Any, LatencyCandidate, dict[str, Any]]:
    """``lut``: time the layer shapes, order channels by importance per ms saved, measure prefixes."""

    config = plan.config
    table, shapes = build_latency_table(plan.model, plan.example_inputs, plan.graph, align=table_align(config),
                                        progress=log, **table_kw)
    path = cost_aware_path(plan.graph, plan.scores, config, lambda i, out, inp: table.layer_ms(shapes[i], out, inp))
    predicted = float(path.costs[0])
    distinct = len({s.key for s in shapes})
    log(f"latency table: {distinct} layer shapes, modelled {predicted:.3f} ms against "
        f"{unpruned.latency_ms_median:.3f} ms measured unpruned; {len(path.steps)} removal steps down to "
        f"{path.costs[-1]:.3f} ms modelled")
    unpruned.predicted_ms = predicted
    record = {"step": "prune", "config": config.to_dict(), "selection": "latency_table",
              "latency_table": {k: table_kw[k] for k in ("runtime", "device", "batch_size", "threads")},
              "budget_ms": budget_ms}
    candidates.models[np.packbits(path.removal(0)).tobytes()] = (plan.model, unpruned)

    def at(modelled_ms: float, again: bool) -> tuple[LatencyCandidate, bool]:
        prefix = path.prefix_for(modelled_ms)
        cost = float(path.costs[prefix])
        return candidates.at(path.removal(prefix), again, f"modelled {cost:.3f} ms", record, predicted_ms=cost)

    first = predicted * budget_ms / unpruned.latency_ms_median
    x, chosen = _largest_within(at, budget_ms, (predicted, unpruned), first, float(path.costs[-1]), max_steps, 0.005,
                                "the latency table's order")
    facts = {"path": str(table_kw["path"]) if table_kw["path"] else None, "layers": len(shapes),
             "shapes": distinct, "build_seconds": table.seconds,
             "predicted_unpruned_ms": predicted, "measured_unpruned_ms": unpruned.latency_ms_median,
             "steps": len(path.steps)}
    return candidates.model(path.removal(path.prefix_for(x))), chosen, facts
