"""The speed guard: is the pruned model really faster than the unpruned one where it ships?

``compressor prune`` ends with this check when it knows its deployment target: both models are
exported to ONNX once, opened on each target runtime with the deployment batch size and threads,
and timed in interleaved rounds (AB, BA, ...), so drift on a shared machine hits both alike. The
practical speedup is the median of the per-round latency ratios with a bootstrap CI; the
theoretical one is the FLOPs ratio. A candidate that is not faster, or realises less than 80%
of its theoretical speedup, gets a loud warning with the likely cause and the fix
(:func:`benchmarks._speed_verdict.speed_verdict`).

It is a short check (a few seconds per runtime), not a benchmark: ``compressor bench`` measures
batch sweeps, percentiles and memory.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import flush_denormals, interleaved, paired_speedup, speed_verdict, TimingConfig
import torch
from compressor.deploy import export_onnx, ExportConfig
from runtimes import get_runtime, SessionConfig

GUARD_TIMING = TimingConfig(warmup=3, min_runs=15, min_seconds=0.6, max_seconds=4.0)


@dataclass
class SpeedCheck:
    """Pruned against unpruned on one runtime at the deployment batch size."""

    runtime: str
    device: str
    batch_size: int
    threads: int | None
    theoretical: float  # FLOPs ratio: unpruned / pruned
    practical: float  # median of per-round latency ratios
    practical_ci: tuple[float, float]
    efficiency: float
    unpruned_ms_median: float
    pruned_ms_median: float
    rounds: int
    verdict: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.verdict.get("level") == "ok")

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "device": self.device, "batch_size": self.batch_size, "threads": self.threads,
                "theoretical_speedup": self.theoretical, "practical_speedup": self.practical,
                "practical_speedup_ci": list(self.practical_ci), "efficiency": self.efficiency,
                "unpruned_ms_median": self.unpruned_ms_median, "pruned_ms_median": self.pruned_ms_median,
                "rounds": self.rounds, "verdict": self.verdict, "error": self.error}


def speed_check(unpruned: Any, pruned: Any, input_size: Sequence[int], runtimes: Sequence[str], *,
                theoretical: float, device: str = "cpu", batch_size: int = 1, threads: int | None = None,
                alignment: int | None = None, timing: TimingConfig = GUARD_TIMING, seed: int = 0) -> list[SpeedCheck]:
    """Time ``pruned`` against ``unpruned`` (torch modules) interleaved on each runtime.

    Args:
        unpruned, pruned: the models, exported to ONNX here (BatchNorm is folded by the runtimes'
            graph optimisers as it would be in deployment).
        input_size: one sample's shape, e.g. ``(3, 224, 224)``.
        runtimes: runtime names (onnxruntime, openvino, torch, tensorrt).
        theoretical: the FLOPs speedup, unpruned FLOPs / pruned FLOPs.
        alignment: the channel alignment the pruning used (for the verdict's advice).

    Returns:
        One :class:`SpeedCheck` per runtime; a runtime that cannot run here gets ``error`` set
        (the caller decides whether that is fatal).
    """

    checks = []
    x = np.random.default_rng(seed).standard_normal((batch_size, *input_size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        example = torch.from_numpy(x[:1].copy())
        paths = {}
        for name, model in (("unpruned", unpruned), ("pruned", pruned)):
            paths[name] = export_onnx(model.eval(), example, Path(tmp) / f"{name}.onnx",
                                      ExportConfig(exporter="torchscript")).path
        for runtime in runtimes:
            # two sessions take turns: onnxruntime's spinning pool would slow the other one
            rt = get_runtime(runtime, allow_spinning=False) if runtime == "onnxruntime" else get_runtime(runtime)
            reason = rt.is_available(device)
            if reason is not None:
                checks.append(SpeedCheck(runtime, device, batch_size, threads, theoretical, float("nan"),
                                         (float("nan"), float("nan")), float("nan"), float("nan"), float("nan"), 0,
                                         error=reason))
                continue
            with contextlib.ExitStack() as stack:
                stack.enter_context(flush_denormals())  # the torch runtime: random weights decay into subnormals
                config = SessionConfig(device=device, threads=threads)
                sessions = {name: stack.enter_context(rt.load(_artifact(runtime, path, name, unpruned, pruned), config))
                            for name, path in paths.items()}
                # every output: a runtime asked for one output may skip the graph that only feeds the others
                samples = interleaved({name: (lambda s=s: s.run_all(x)) for name, s in sessions.items()}, timing,
                                      device="cuda" if device in ("cuda", "gpu") else "cpu")
            stats = paired_speedup(samples["unpruned"], samples["pruned"], seed=seed)
            verdict = speed_verdict(stats.speedup_median, theoretical, ci=stats.speedup_ci, runtime=runtime,
                                    batch_size=batch_size, alignment=alignment)
            checks.append(SpeedCheck(runtime, device, batch_size, threads, theoretical, stats.speedup_median,
                                     tuple(stats.speedup_ci), stats.speedup_median / theoretical,
                                     float(np.median(samples["unpruned"])), float(np.median(samples["pruned"])),
                                     stats.rounds, verdict.to_dict()))
    return checks


def _artifact(runtime: str, path: Path, name: str, unpruned: Any, pruned: Any) -> Any:
    """The torch runtime runs the module itself; the others load the ONNX file."""
    if runtime == "torch":
        return unpruned if name == "unpruned" else pruned
    return path
