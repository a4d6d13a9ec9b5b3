"""Channel-alignment probe: at which channel multiples does a runtime's latency step?

CPU runtimes pack channels into vector-width blocks (onnxruntime's NCHWc layout and OpenVINO's
oneDNN kernels use 16 floats on AVX-512, 8 on AVX2) and take slower, generic kernels for widths
that do not fit. A pruned layer of 37 channels can therefore run slower than the unpruned 64.
Instead of guessing the block from the ISA, the probe times small chains of representative layers
on the runtime itself, at the deployment batch size and thread count, at widths chosen around
multiples of 16: for every class of widths (odd; 2 mod 4; 4 mod 8; 8 mod 16) it compares each
width's latency against the interpolation of its two neighbours of the next class, in units of
work (MACs). A class that runs more than ``tolerance`` slower than its neighbours predict is
*penalised*; the alignment is twice the coarsest penalised class (1 when none is).

Three layer kinds are probed separately, because they use different kernels: dense convolutions
(alternating 3x3 and 1x1, as in ResNets), depthwise 3x3 convolutions (MobileNets, EfficientNets)
and Linear layers. Each probe is a chain of a few layers of the same width, so that the layout
conversions a runtime inserts at a graph's input and output are amortised, as in a real network.

Results are cached in the user cache directory (``$COMPRESSOR_CACHE_DIR``, else
``$XDG_CACHE_HOME/cnn-compressor``, else ``~/.cache/cnn-compressor``), keyed by runtime, its
version, device, CPU ISA, threads and batch size, so a probe runs once per machine and target.
When the runtime cannot be probed (not installed, no device, TensorRT on a machine without it),
callers fall back to the ISA table of :mod:`compressor.pruning._align`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from compressor.common.errors import CompressorError
from compressor.common.files import atomic_write_bytes
from runtimes import get_runtime, package_versions, SessionConfig
from benchmarks._timing import interleaved, TimingConfig

SCHEMA_VERSION = 1
KINDS = ("conv", "depthwise", "linear")
MAX_ALIGNMENT = 16
TOLERANCE = 0.03  # a class must run this much slower than its neighbours predict to count
CACHE_FILE = "alignment.json"
PROBE_BUDGET_S = 8.0  # per runtime: all kinds together
_CLASSES = (1, 2, 4, 8)  # width classes: w = m + a, between multiples m and m + 2a of 2a
_BASES = (96, 128)  # two 32-wide windows: every class has members in both

FRAME = 128  # channels at the probe block's input and output
_SIDE = {"conv": 14, "depthwise": 28}  # spatial side at batch 1


class ProbeError(CompressorError):
    """The probe could not run on this runtime/device (the reason says why)."""


def probe_widths() -> list[int]:
    """The widths timed per kind: 4 members of every class and the neighbours each is compared with.

    Every multiple of 16 in the windows is timed; from each of them, ``m + a`` (an odd multiple of
    ``a``) for every class ``a``, whose neighbours ``m`` and ``m + 2a`` are then also timed.
    """
    chosen = set(range(_BASES[0], _BASES[-1] + 33, 16))
    for base in _BASES:
        for start in (base, base + 16):
            for a in _CLASSES:
                chosen.update((start, start + a, start + 2 * a))
    return sorted(chosen)


def _neighbours(width: int, a: int) -> tuple[int, int]:
    """The multiples of ``2a`` just below and above ``width`` (an odd multiple of ``a``)."""
    below = width - a
    return below, below + 2 * a


@dataclass
class KindProbe:
    """What one layer kind's probe found."""

    kind: str
    alignment: int
    penalty: dict[str, float]  # class a -> median (measured / interpolated) - 1 of its members
    latency_ms: dict[str, float]  # width -> median latency of the chain

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_step(kind: str, latency_ms: Mapping[int, float], tolerance: float = TOLERANCE) -> KindProbe:
    """The alignment that ``latency_ms`` (width -> median ms) calls for.

    For each class ``a`` (widths that are odd multiples of ``a``), every member's latency is
    divided by the work-interpolation of its neighbours at multiples of ``2a``; the class's
    penalty is the median excess. The alignment is ``2a`` for the coarsest class whose penalty
    exceeds ``tolerance``, capped at :data:`MAX_ALIGNMENT`; 1 when no class pays a penalty.
    """
    penalty: dict[str, float] = {}
    alignment = 1
    for a in _CLASSES:
        excess = []
        for w in latency_ms:
            if w % a or (w // a) % 2 == 0:
                continue
            lo, hi = _neighbours(w, a)
            if lo not in latency_ms or hi not in latency_ms:
                continue
            t_lo, t_hi = latency_ms[lo], latency_ms[hi]
            frac = (work(kind, w) - work(kind, lo)) / (work(kind, hi) - work(kind, lo))
            expected = max(t_lo + frac * (t_hi - t_lo), min(t_lo, t_hi))
            if expected > 0:
                excess.append(latency_ms[w] / expected - 1.0)
        if excess:
            penalty[str(a)] = float(np.median(excess))
            if penalty[str(a)] > tolerance:
                alignment = min(2 * a, MAX_ALIGNMENT)
    return KindProbe(kind, alignment, penalty, {str(w): float(t) for w, t in sorted(latency_ms.items())})


@dataclass
class ProbeResult:
    """A runtime's probe: the alignment per layer kind, and how it was obtained."""

    runtime: str
    device: str
    batch_size: int
    threads: int | None
    key: str
    kinds: dict[str, KindProbe]
    seconds: float
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def alignment(self) -> dict[str, int]:
        return {k: p.alignment for k, p in self.kinds.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "device": self.device, "batch_size": self.batch_size, "threads": self.threads,
                "key": self.key, "kinds": {k: p.to_dict() for k, p in self.kinds.items()}, "seconds": self.seconds,
                "extra": self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], cached: bool = False) -> ProbeResult:
        kinds = {k: KindProbe(**p) for k, p in data["kinds"].items()}
        return cls(data["runtime"], data["device"], int(data["batch_size"]), data["threads"], data["key"], kinds,
                   float(data["seconds"]), cached, dict(data.get("extra", {})))


# ---------------------------------------------------------------- cache

def cache_dir() -> Path:
    """Where probe results live: ``$COMPRESSOR_CACHE_DIR``, ``$XDG_CACHE_HOME/cnn-compressor`` or ``~/.cache/...``."""
    explicit = os.environ.get("COMPRESSOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cnn-compressor"


def cache_key(runtime: str, version: str, device: str, isa: str, threads: int | None, batch_size: int) -> str:
    return f"{runtime}={version}|{device}|{isa}|threads={threads}|batch={batch_size}"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged cache is re-measured, never an error
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    payload = {"schema_version": SCHEMA_VERSION, "entries": entries}
    with contextlib.suppress(OSError):  # a read-only home must not stop pruning
        atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True).encode())


# ---------------------------------------------------------------- measuring

Measure = Callable[[str, Sequence[int]], dict[int, float]]


def _chain_onnx(kind: str, width: int, batch_size: int, seed: int = 0) -> bytes:
    """The probe block for ``kind`` at ``width`` channels, as a serialized ONNX model.

    The block's input and output have :data:`FRAME` channels whatever the width, so the layout
    conversions a runtime inserts at a graph's boundary cost the same at every width, and an
    unaligned width pays what it pays inside an aligned network: its own kernels and the
    conversions around it.
    """
    from onnx import TensorProto, helper, numpy_helper  # optional SDK: onnx

    rng = np.random.default_rng(seed + width)
    side = _side(kind, batch_size)
    nodes, inits = [], []
    current = "x"
    for i, (k, cin, cout, groups) in enumerate(_layers(kind, width)):
        if kind == "linear":
            w = (rng.standard_normal((cout, cin)) / math.sqrt(cin)).astype(np.float32)
            nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}"], transB=1))
        else:
            fan_in = (cin // groups) * k * k
            w = (rng.standard_normal((cout, cin // groups, k, k)) / math.sqrt(fan_in)).astype(np.float32)
            nodes.append(helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"g{i}"], kernel_shape=[k, k],
                                          pads=[k // 2] * 4, group=groups))
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
        current = f"h{i}"
    shape = [batch_size, FRAME] if kind == "linear" else [batch_size, FRAME, side, side]
    graph = helper.make_graph(nodes, f"probe_{kind}_{width}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _layers(kind: str, width: int) -> list[tuple[int, int, int, int]]:
    """(kernel, in, out, groups) of the probe block: FRAME -> width ... width -> FRAME."""
    if kind == "conv":  # a ResNet-style run: 3x3 in, 1x1 and 3x3 at the width, 1x1 out
        return [(3, FRAME, width, 1), (1, width, width, 1), (3, width, width, 1), (1, width, FRAME, 1)]
    if kind == "depthwise":  # a MobileNet inverted residual: expand, depthwise 3x3, project
        return [(1, FRAME, width, 1), (3, width, width, width), (1, width, FRAME, 1)]
    return [(1, FRAME, width, 1), (1, width, FRAME, 1)]  # Linear: in, out


def _side(kind: str, batch_size: int) -> int:
    """Spatial side: the block's work stays about constant as the batch grows."""
    return 0 if kind == "linear" else max(4, round(_SIDE[kind] / math.sqrt(batch_size)))


def work(kind: str, width: int) -> float:
    """MACs per sample and pixel of the probe block at ``width`` (the interpolation's x axis)."""
    return float(sum(k * k * (cin // groups) * cout for k, cin, cout, groups in _layers(kind, width)))


def runtime_measure(runtime: str, device: str, batch_size: int, threads: int | None, *, rounds: int = 21,
                    warmup: int = 2, deadline: float | None = None) -> Measure:
    """A measure function that times chains on ``runtime``: one session per width, interleaved rounds."""

    # many sessions alternate on few cores: onnxruntime's spinning workers would steal the next one's
    rt = get_runtime(runtime, allow_spinning=False) if runtime == "onnxruntime" else get_runtime(runtime)

    def measure(kind: str, widths: Sequence[int]) -> dict[int, float]:
        sessions, inputs = {}, {}
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            for w in widths:
                path = Path(tmp) / f"{kind}_{w}.onnx"
                path.write_bytes(_chain_onnx(kind, w, batch_size))
                artifact: Any = _torch_chain(path) if runtime == "torch" else path
                sessions[w] = stack.enter_context(rt.load(artifact, SessionConfig(device=device, threads=threads)))
                side = _side(kind, batch_size)
                shape = (batch_size, FRAME) if kind == "linear" else (batch_size, FRAME, side, side)
                inputs[w] = np.random.default_rng(w).standard_normal(shape).astype(np.float32)

            order = list(widths)
            fns = {str(w): (lambda s=sessions[w], x=inputs[w]: s.run(x)) for w in order}

            remaining = None if deadline is None else deadline - time.perf_counter()
            n = rounds if remaining is None else max(3, min(rounds, int(rounds * min(1.0, remaining / 2.0))))
            samples = interleaved(fns, TimingConfig(warmup=warmup, min_runs=1, min_seconds=0.0), rounds=n, device=device)
        return {w: float(np.median(samples[str(w)])) for w in order}

    return measure


def _torch_chain(onnx_path: Path) -> Any:
    """The torch runtime times an nn.Module: the same chain rebuilt from the ONNX weights."""
    import onnx  # optional SDK: onnx
    import torch  # optional SDK: torch
    from onnx import numpy_helper  # optional SDK: onnx

    model = onnx.load(str(onnx_path))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    layers: list[Any] = []
    for node in model.graph.node:
        if node.op_type == "Relu":
            layers.append(torch.nn.ReLU())
            continue
        w, b = weights[node.input[1]], weights[node.input[2]]
        if node.op_type == "Gemm":
            layer: Any = torch.nn.Linear(w.shape[1], w.shape[0])
        else:
            groups = next(a.i for a in node.attribute if a.name == "group")
            k = w.shape[-1]
            layer = torch.nn.Conv2d(w.shape[1] * groups, w.shape[0], k, padding=k // 2, groups=groups)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
        layers.append(layer)
    return torch.nn.Sequential(*layers).eval()


def run_probe(measure: Measure, kinds: Sequence[str] = KINDS, widths: Sequence[int] | None = None,
              tolerance: float = TOLERANCE) -> dict[str, KindProbe]:
    """Measure every kind at the probe widths and find its step."""
    widths = probe_widths() if widths is None else list(widths)
    return {kind: find_step(kind, measure(kind, widths), tolerance) for kind in kinds}


def _load_average() -> float:
    return os.getloadavg()[0]


def machine_busy() -> str | None:
    """Why the CPU is too busy for the probe to see a 3% step, or None.

    Other processes competing for the cores add noise far above the steps the probe looks for; a
    probe run then under-reports the alignment (it once chose 4 instead of 16 at a load average of
    8 on 2 cores), and the result would be cached. Busy means a 1-minute load average above
    1.5 x the available cores + 1 (4 on 2 cores, 25 on 16).
    """
    try:
        load = _load_average()
    except (AttributeError, OSError):  # no load average on this platform
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if load > 1.5 * cores + 1:
        return (f"the machine is busy (1-minute load average {load:.1f} on {cores} cores), so the timings would "
                "be noise; using the ISA table this time (nothing is cached)")
    return None


def probe_alignment(runtime: str, *, device: str = "cpu", batch_size: int = 1, threads: int | None = None,
                    isa: str = "", refresh: bool = False, measure: Measure | None = None,
                    budget_s: float = PROBE_BUDGET_S, cache: Path | None = None) -> ProbeResult:
    """The alignment per layer kind for ``runtime`` on ``device``, from the cache or a fresh probe.

    Args:
        runtime: a runtime name of :mod:`runtimes` (onnxruntime, openvino, torch).
        device, batch_size, threads: the deployment target; the probe runs with exactly these.
        isa: the CPU's instruction-set key (part of the cache key; see ``compressor.pruning._align.cpu_isa``).
        refresh: probe again even if the cache has this target.
        measure: ``measure(kind, widths) -> {width: ms}``; default times chains on the runtime.
        budget_s: rough bound on the probe's wall time (rounds are cut to fit).
        cache: the cache file; default ``cache_dir() / "alignment.json"``.

    Raises:
        ProbeError: the runtime cannot run here (not installed, no device), with the reason.
    """

    rt = get_runtime(runtime)
    reason = rt.is_available(device)
    if reason is not None:
        raise ProbeError(f"cannot probe {runtime} on {device}: {reason}")
    version = _runtime_version(runtime, package_versions)
    key = cache_key(runtime, version, device, isa, threads, batch_size)
    path = cache_dir() / CACHE_FILE if cache is None else Path(cache)
    entries = _read_cache(path)
    if not refresh and key in entries:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            return ProbeResult.from_dict(entries[key], cached=True)
    start = time.perf_counter()
    if measure is None:
        busy = machine_busy()
        if busy:  # timings taken now would hide the steps and be cached for good
            raise ProbeError(f"not probing {runtime}: {busy}")
        measure = runtime_measure(runtime, device, batch_size, threads, deadline=start + budget_s)
    try:
        kinds = run_probe(measure)
    except ProbeError:
        raise
    except Exception as exc:  # a runtime that fails on the probe's tiny graphs cannot be probed
        raise ProbeError(f"the alignment probe failed on {runtime}/{device}: {type(exc).__name__}: {exc}") from exc
    result = ProbeResult(runtime, device, batch_size, threads, key, kinds, time.perf_counter() - start,
                         extra={"widths": probe_widths(), "tolerance": TOLERANCE})
    entries = _read_cache(path)  # another process may have written meanwhile
    entries[key] = result.to_dict()
    _write_cache(path, entries)
    return result


def _runtime_version(runtime: str, package_versions: Callable[..., dict[str, Any]]) -> str:
    package = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torch": "torch", "tensorrt": "tensorrt"}
    versions = package_versions()
    return str(versions.get(package.get(runtime, runtime), "unknown"))
