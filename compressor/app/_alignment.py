"""``round_to="auto"`` on the deployment target: the pruning engine's alignment, measured by the runtime probe.

The engine (:mod:`compressor.pruning`) knows the ISA table and how to apply an alignment; which
runtimes are the target and what each of them needs is measured here, above the runtimes, by
``benchmarks``' probe (a few seconds per runtime, cached in the user cache directory). Every entry
point of the default path -- :func:`compressor.prune`, the command line, pipelines, latency-budget
pruning -- resolves the alignment through :func:`resolve_alignment` below.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from benchmarks import ProbeError, probe_alignment
from compressor.pruning import KINDS, PruneConfig, cpu_isa, table_alignment
from compressor.pruning import resolve_alignment as _resolve_with
from runtimes import get_runtime

DEFAULT_CPU_RUNTIMES = ("onnxruntime", "openvino")


@lru_cache(maxsize=1)
def _installed_cpu_runtimes() -> tuple[str, ...]:
    return tuple(name for name in DEFAULT_CPU_RUNTIMES if get_runtime(name).is_available("cpu") is None)


def default_runtimes() -> list[str]:
    """The CPU runtimes installed here (onnxruntime, OpenVINO); torch when neither is."""
    return list(_installed_cpu_runtimes()) or ["torch"]


def resolve_alignment(config: PruneConfig, *, refresh: bool = False) -> PruneConfig:
    """``config`` with ``alignment`` filled in for ``round_to="auto"``, each target runtime probed
    (or read from the probe's cache); without ``config.runtime`` the targets are this machine's
    CPU runtimes, and a group takes the largest alignment any of them needs."""
    return _resolve_with(config, measure=_runtime_alignment, runtimes=default_runtimes(), refresh=refresh)


_RESOLVED: dict[tuple[Any, ...], tuple[dict[str, int], str, str]] = {}  # per process: no file read per prune


def _runtime_alignment(runtime: str, config: PruneConfig, refresh: bool) -> tuple[dict[str, int], str, str]:
    """(alignment per kind, source, note) for one runtime, remembered for the process."""
    key = (runtime, config.device, config.batch_size, config.threads)
    if refresh or key not in _RESOLVED:
        found, source, note = _measured_alignment(runtime, config, refresh)
        _RESOLVED[key] = (found, "cache" if source == "probe" else source, note)
        return found, source, note
    return _RESOLVED[key]


def _measured_alignment(runtime: str, config: PruneConfig, refresh: bool) -> tuple[dict[str, int], str, str]:
    """(alignment per kind, source, note) for one runtime: measured, cached, or the ISA table."""
    if runtime == "tensorrt" or config.device in ("cuda", "gpu"):
        return table_alignment(runtime, config.device), "isa-table", "GPU targets are not probed"
    try:
        result = probe_alignment(runtime, device=config.device, batch_size=config.batch_size,
                                 threads=config.threads, isa=cpu_isa(), refresh=refresh)
    except ProbeError as exc:
        return table_alignment(runtime, config.device), "isa-table", str(exc)
    found = {k: int(result.alignment.get(k, 1)) for k in KINDS}
    return found, "cache" if result.cached else "probe", ""


