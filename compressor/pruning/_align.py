"""Channel alignment chosen for the deployment target (``round_to="auto"``).

Runtimes run channel counts that fit their vector blocks on fast kernels and fall back to slower,
generic ones for the rest (see ``benchmarks/_alignment.py`` for the measurements; the probe is wired
in by ``compressor/app/_alignment.py``, since measuring a runtime sits above the pruning engine). Pruning to
arbitrary widths can therefore make a model with half the FLOPs run *slower*. With
``round_to="auto"`` (the default) every channel group is pruned to a multiple of the alignment
its layers need on the target:

1. the target is ``PruneConfig.runtime`` on ``device`` at ``batch_size`` and ``threads``; without
   a runtime, it is the CPU runtimes of this machine (onnxruntime and OpenVINO, whichever are
   installed), and a group takes the largest alignment any of them needs;
2. each runtime is *probed* once (a few seconds; cached in the user cache directory) for its
   alignment per layer kind: dense convolutions, depthwise convolutions, Linear layers;
3. where probing is impossible (the runtime is not installed here, TensorRT, a GPU), the
   alignment comes from :data:`ISA_TABLE`: 16 channels for AVX-512 (16 fp32 lanes), 8 for
   AVX2, 4 for 128-bit SIMD (SSE, NEON), 8 for GPU tensor cores (FP16/TF32 tiles);
4. a group takes the largest alignment of its layers' kinds, but never more than its own width
   (rounded down to a power of two): a group narrower than twice the alignment is kept whole,
   since on a 16-lane CPU a conv pruned from 16 to 8 channels runs no faster (it is padded back
   to one vector) -- capping at half the width instead, so that 16- and 24-channel groups could
   be halved, cost MobileNetV3-Large 10% of its speedup on onnxruntime (1.45x against 1.60x at
   batch 1); a 6-channel layer of a tiny net is aligned to 4.

An explicit integer ``round_to`` bypasses all of this and applies to every group.
"""
from __future__ import annotations

import dataclasses
import platform
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

from compressor.pruning._config import PruneConfig

KINDS = ("conv", "depthwise", "linear")
#: finds one runtime's alignment: (alignment per kind, source, note); see :func:`resolve_alignment`
Measure = Callable[[str, PruneConfig, bool], tuple[dict[str, int], str, str]]
NOT_MEASURED = "not probed: the pruning engine measures no runtime (compressor.prune and the command line probe)"
#: fallback alignment (channels) by instruction set, when a runtime cannot be probed
ISA_TABLE = {"avx512": 16, "avx2": 8, "sse": 4, "neon": 4, "gpu": 8, "unknown": 8}


@lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The widest SIMD instruction set of this CPU: ``avx512``, ``avx2``, ``sse``, ``neon`` or ``unknown``."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "neon"
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if not flags:
        return "unknown"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "sse" if "sse2" in flags else "unknown"


def table_alignment(runtime: str, device: str) -> dict[str, int]:
    """The documented fallback: :data:`ISA_TABLE` for the device (every kind alike)."""
    value = ISA_TABLE["gpu"] if device in ("cuda", "gpu") else ISA_TABLE[cpu_isa()]
    return {kind: value for kind in KINDS}


def resolve_alignment(config: PruneConfig, *, measure: Measure | None = None, runtimes: Sequence[str] = (),
                      refresh: bool = False) -> PruneConfig:
    """``config`` with ``alignment`` filled in for ``round_to="auto"`` (unchanged otherwise).

    ``measure(runtime, config, refresh) -> (alignment per kind, source, note)`` finds a runtime's
    alignment; the pruning engine itself measures nothing, so without it every kind gets the ISA
    table. :func:`compressor.prune`, the command line and pipelines pass the runtime probe
    (``compressor.app``). ``runtimes`` are the targets when ``config.runtime`` is unset.
    The result records, per layer kind, the alignment chosen, where it came from (``probe``,
    ``cache`` or ``isa-table`` with the reason) and for which runtimes, so the recipe says why
    each width is what it is.
    """
    if config.round_to != "auto" or (config.alignment and not refresh):
        return config
    targets = [config.runtime] if config.runtime else list(runtimes) or ["cpu"]
    kinds = {kind: 1 for kind in KINDS}
    per_runtime: dict[str, Any] = {}
    for name in targets:
        if measure is None:
            found, source, note = table_alignment(name, config.device), "isa-table", NOT_MEASURED
        else:
            found, source, note = measure(name, config, refresh)
        per_runtime[name] = {"kinds": found, "source": source, **({"note": note} if note else {})}
        kinds = {k: max(kinds[k], found[k]) for k in KINDS}
    alignment = {"kinds": kinds, "runtimes": per_runtime, "device": config.device, "batch_size": config.batch_size,
                 "threads": config.threads, "isa": cpu_isa()}
    return dataclasses.replace(config, alignment=alignment)


def member_kind(graph: Any, m: int) -> str | None:
    """The layer kind a member's channels run through: conv, depthwise, linear (None: not a layer)."""
    member = graph.members[m]
    if member.kind.startswith("linear"):
        return "linear"
    if member.kind.startswith("conv"):
        return "depthwise" if member.groups > 1 and member.groups == member.size else "conv"
    return None


def group_alignment(graph: Any, config: PruneConfig) -> np.ndarray:
    """The channel multiple each group of ``graph`` is pruned to (one int per group).

    An integer ``round_to`` applies to every group. ``"auto"`` takes, per group, the largest
    alignment of the layer kinds it feeds or is produced by, capped at the largest power of two
    that is at most the group's width.
    """
    if config.round_to != "auto":
        return np.full(len(graph.groups), int(config.round_to), dtype=np.int64)
    if not config.alignment:
        config = resolve_alignment(config)
    kinds = config.alignment["kinds"]
    out = np.ones(len(graph.groups), dtype=np.int64)
    for g in graph.groups:
        wanted = max((kinds.get(member_kind(graph, m), 1) for m in g.members), default=1)
        width = len(g.atoms)
        cap = 1 << (width.bit_length() - 1) if width >= 1 else 1
        out[g.index] = max(1, min(int(wanted), cap))
    return out


def alignment_summary(config: PruneConfig) -> str:
    """One line for the terminal: what alignment was chosen and why."""
    if config.round_to != "auto":
        return f"channel alignment: round_to={config.round_to} (explicit)"
    if not config.alignment:
        return "channel alignment: auto (not resolved yet)"
    kinds = config.alignment["kinds"]
    sources = ", ".join(f"{name}: {info['source']}" + (f" ({info['note']})" if info.get("note") else "")
                        for name, info in config.alignment["runtimes"].items())
    return (f"channel alignment: auto -> conv {kinds['conv']}, depthwise {kinds['depthwise']}, "
            f"linear {kinds['linear']} (batch {config.alignment['batch_size']}, threads "
            f"{config.alignment['threads'] or 'default'}; {sources})")
