"""Prune to a latency budget measured on the deployment runtime, not guessed from FLOPs.

:func:`prune_to_latency` searches the FLOPs target of a pruning config by real measurements of
each candidate on the runtime (exported to ONNX, run by onnxruntime/OpenVINO/... at the
requested batch size and threads). A candidate meets the budget when the upper bound of the
bootstrap confidence interval of its median latency is within it, the same statistics the
release gate uses, so a noisy single timing cannot pass a model that is too slow.

It also measures the FLOPs-proportional guess ``target_flops = budget / unpruned latency``
(what one would choose assuming latency scales with FLOPs), so the report shows what measuring
bought: more FLOPs kept at the same latency, or a budget the guess would have missed.

This is the search over a global ratio; a per-layer latency lookup table (NetAdapt, HALP) that
removes channels where they save the most time is not implemented yet.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._stats import summarize
from ._timing import TimingConfig, time_callable


@dataclass
class LatencyCandidate:
    """One measured model: its FLOPs target, cost ratios and median latency with its CI (ms)."""

    target_flops: float
    flops_ratio: float
    params_ratio: float
    latency_ms_median: float
    latency_ms_ci: tuple[float, float]
    samples_ms: list[float] = field(repr=False, default_factory=list)

    def meets(self, budget_ms: float) -> bool:
        return self.latency_ms_ci[1] <= budget_ms


@dataclass
class LatencyPruneResult:
    """The chosen model and every measurement that led to it."""

    model: Any
    budget_ms: float
    runtime: str
    device: str
    batch_size: int
    threads: int | None
    unpruned: LatencyCandidate
    chosen: LatencyCandidate
    flops_guess: LatencyCandidate | None
    candidates: list[LatencyCandidate]

    @property
    def met(self) -> bool:
        return self.chosen.meets(self.budget_ms)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "model"}
        return {**out, "met": self.met}


def _latency(model: Any, input_size: tuple[int, ...], runtime: str, device: str, batch_size: int,
             threads: int | None, timing: TimingConfig, seed: int) -> tuple[float, tuple[float, float], list[float]]:
    """Export ``model`` to ONNX, open it on ``runtime`` and time it; (median, CI, samples) in ms."""
    import torch

    from compressor._export import ExportConfig, export_onnx
    from runtimes import SessionConfig, get_runtime

    with tempfile.TemporaryDirectory() as tmp:
        example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(seed))
        info = export_onnx(model.eval(), example, Path(tmp) / "model.onnx", ExportConfig(exporter="torchscript"))
        session = get_runtime(runtime).load(info.path, SessionConfig(device=device, threads=threads))
        try:
            x = np.random.default_rng(seed).standard_normal((batch_size, *input_size)).astype(np.float32)
            samples = time_callable(lambda: session.run(x), timing, device=device)
        finally:
            session.close()
    stats = summarize(samples, batch_size, seed=seed)
    return stats.latency_ms_median, tuple(stats.median_ci_ms), list(samples)


def prune_to_latency(model: Any, input_size: tuple[int, ...], config: Any, budget_ms: float, *,
                     runtime: str = "onnxruntime", device: str = "cpu", batch_size: int = 1,
                     threads: int | None = None, timing: TimingConfig | None = None, max_steps: int = 6,
                     data: Any = None, progress: Callable[[str], None] | None = None) -> LatencyPruneResult:
    """Prune ``model`` as ``config`` says, with the FLOPs target chosen so that it meets ``budget_ms``.

    Args:
        model: the network (not modified).
        input_size: one sample's shape, e.g. ``(3, 224, 224)``.
        config: :class:`compressor.PruneConfig`; its criterion, rounding, exclusions and residual
            policy are used, its target is replaced by the searched ``target_flops``.
        budget_ms: the latency budget per batch of ``batch_size``, in milliseconds.
        runtime, device, batch_size, threads: where and how the latency is measured.
        timing: the timing loop per candidate (default: >= 20 runs and >= 0.5 s, at most 3 s).
        max_steps: bisection steps after the first two candidates.
        data: calibration data for data-based criteria.

    Raises:
        ValueError: a budget <= 0, or the runtime cannot run here (with the reason).
        compressor.UnreachableTargetError: not even the smallest reachable model meets the budget.
    """
    import torch

    from compressor import PruneConfig, UnreachableTargetError, count_cost, prune_model
    from runtimes import get_runtime

    if not isinstance(budget_ms, (int, float)) or not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ValueError(f"the latency budget must be a number of ms > 0, got {budget_ms!r}")
    reason = get_runtime(runtime).is_available(device=device)
    if reason:
        raise ValueError(f"cannot measure on {runtime}/{device}: {reason}")
    timing = timing or TimingConfig(warmup=3, min_runs=20, min_seconds=0.5, max_seconds=3.0)
    log = progress or (lambda message: None)
    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(config.seed))
    base = count_cost(model, example)
    models: dict[float, Any] = {}
    candidates: list[LatencyCandidate] = []

    def measure(target: float) -> LatencyCandidate:
        pruned = model if target >= 1.0 else prune_model(
            model, example, PruneConfig.from_dict({**config.to_dict(), "ratio": None, "global_ratio": None,
                                                   "target_params": None, "target_flops": target}), data=data).model
        cost = count_cost(pruned, example)
        median, ci, samples = _latency(pruned, tuple(input_size), runtime, device, batch_size, threads, timing,
                                       config.seed)
        found = LatencyCandidate(target, cost.macs / base.macs, cost.params / base.params, median, ci, samples)
        models[target] = pruned
        candidates.append(found)
        log(f"target_flops {target:.3f}: FLOPs {found.flops_ratio:.1%}, median {median:.3f} ms "
            f"(CI {ci[0]:.3f}-{ci[1]:.3f}) {'meets' if found.meets(budget_ms) else 'misses'} {budget_ms:g} ms")
        return found

    unpruned = measure(1.0)
    if unpruned.meets(budget_ms):
        return LatencyPruneResult(model, budget_ms, runtime, device, batch_size, threads, unpruned, unpruned, None,
                                  candidates)
    guess_target = min(max(budget_ms / unpruned.latency_ms_median, 0.01), 0.999)
    try:
        guess = measure(guess_target)  # what "latency scales with FLOPs" would pick
    except UnreachableTargetError as exc:
        raise UnreachableTargetError(f"a {budget_ms:g} ms budget needs about {guess_target:.3f} of the FLOPs: {exc}") \
            from exc
    lo, hi = (guess, unpruned) if guess.meets(budget_ms) else (None, guess)  # lo meets, hi misses
    if lo is None:  # go down until a candidate meets the budget
        target = guess_target
        for _ in range(max_steps):
            target = max(target * budget_ms / hi.latency_ms_median * 0.9, 0.01)
            try:
                found = measure(target)
            except UnreachableTargetError as exc:
                raise UnreachableTargetError(f"no reachable pruning meets {budget_ms:g} ms on {runtime}: {exc}") \
                    from exc
            if found.meets(budget_ms):
                lo = found
                break
            hi = found
        if lo is None:
            raise UnreachableTargetError(f"{budget_ms:g} ms on {runtime} looks unreachable: not met after {max_steps} steps; the "
                                         f"fastest candidate measured {hi.latency_ms_median:.3f} ms")
    for _ in range(max_steps):  # bisect (in log FLOPs) for the largest model that still meets it
        if hi.target_flops - lo.target_flops < 0.01:
            break
        target = math.sqrt(lo.target_flops * hi.target_flops)
        found = measure(target)
        if found.meets(budget_ms):
            lo = found
        else:
            hi = found
    return LatencyPruneResult(models[lo.target_flops], budget_ms, runtime, device, batch_size, threads, unpruned, lo,
                              guess, candidates)
