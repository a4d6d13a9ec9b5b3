"""Per-layer latency lookup table: each conv/Linear shape of a model timed on the runtime.

NetAdapt and HALP prune where the *measured* time goes rather than where the FLOPs are: a 1x1 conv
at high resolution or a depthwise conv runs far below the runtime's peak MACs per second, so its
channels save more milliseconds per MAC than those of a compute-bound 3x3 conv. The table times
every distinct layer shape of the model alone, exported to ONNX and run on the target runtime at
the deployment batch size and threads, on a grid of kept widths (fractions of the full input and
output channels, aligned to ``round_to``). A layer's latency at any width is the bilinear
interpolation of its grid, made monotone (more channels never run faster: noise would otherwise
reward adding channels) and extrapolated linearly below the smallest grid width.

The sum over layers is a *model* of the whole network's latency: it leaves out the elementwise
ops, the per-call overhead and the fusion the runtime does across layers. The pruning search
(:mod:`._latency_prune`) therefore only uses it to rank channels and to order candidates, and
calibrates it against whole-model measurements before choosing.

The table is saved as JSON (``schema_version``) and reused: a table built for one model serves
every model with the same layer shapes, and only missing shapes are timed.
"""
from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compressor.common.files import atomic_write_bytes, read_versioned_json
from compressor.graph import as_tuple, evaluating

from benchmarks import collect_environment, time_callable, TimingConfig
import torch
from compressor.deploy import export_onnx, ExportConfig
from runtimes import get_runtime, SessionConfig
from torch import nn


SCHEMA_VERSION = 1
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
LAYER_TIMING = TimingConfig(warmup=3, min_runs=10, min_seconds=0.15, max_seconds=1.0)
_MATCHED = ("runtime", "device", "batch_size", "threads", "align")


@contextlib.contextmanager
def open_session(model: Any, input_size: Sequence[int], runtime: str, device: str = "cpu",
                 threads: int | None = None, seed: int = 0) -> Iterator[Any]:
    """``model`` exported to ONNX (in a temporary directory) and open on ``runtime``; closed on exit."""

    with tempfile.TemporaryDirectory() as tmp:
        example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(seed))
        info = export_onnx(model.eval(), example, Path(tmp) / "model.onnx", ExportConfig(exporter="torchscript"))
        session = get_runtime(runtime).load(info.path, SessionConfig(device=device, threads=threads))
        try:
            yield session
        finally:
            session.close()


def time_model(model: Any, input_size: Sequence[int], runtime: str, device: str, batch_size: int,
               threads: int | None, timing: TimingConfig, seed: int = 0) -> list[float]:
    """Export ``model`` to ONNX, open it on ``runtime`` and time it; per-call latencies in ms."""
    with open_session(model, input_size, runtime, device, threads, seed) as session:
        x = np.random.default_rng(seed).standard_normal((batch_size, *input_size)).astype(np.float32)
        return time_callable(lambda: session.run(x), timing, device=device)


@dataclass
class LayerShape:
    """What one conv/Linear call of the model computes, enough to rebuild it alone."""

    key: str  # identifies the shape at full width, shared by identical layers
    kind: str  # conv | linear
    module_type: str
    in_size: int
    out_size: int
    input_shape: tuple[int, ...]  # one sample's input, at full width
    options: dict[str, Any]  # kernel_size, stride, padding, dilation, groups, padding_mode, group_mode
    in_axis: bool  # the input channels can change
    out_axis: bool

    def build(self, inp: int, out: int) -> Any:
        """The layer alone at ``inp`` input and ``out`` output channels (random weights)."""

        torch.manual_seed(0)
        if self.kind == "linear":
            return nn.Linear(inp, out)
        o = self.options
        groups = o["groups"]
        if o["group_mode"] == "group":  # whole groups removed: every kept group keeps its width
            groups = out // (self.out_size // o["groups"])
        conv = getattr(nn, self.module_type)  # Conv1d/2d/3d: a subclass is timed as its base
        return conv(inp, out, o["kernel_size"], stride=o["stride"], padding=o["padding"], dilation=o["dilation"],
                    groups=groups, bias=True, padding_mode=o["padding_mode"])

    def timed_widths(self, inp: int, out: int) -> tuple[int, int]:
        """The (input, output) channels really run for a grid point: a grouped conv that loses
        whole groups ("group" mode, e.g. depthwise) loses their inputs too."""
        if self.options.get("group_mode") == "group":
            groups = self.options["groups"]
            return out // (self.out_size // groups) * (self.in_size // groups), out
        return inp, out

    def input_for(self, inp: int) -> tuple[int, ...]:
        return (*self.input_shape[:-1], inp) if self.kind == "linear" else (inp, *self.input_shape[1:])


def layer_shapes(model: Any, example_inputs: Any, graph: Any) -> list[LayerShape]:
    """The shape of every entry of ``graph.layers`` (repeated calls of a module in call order).

    The input shapes are captured by a forward pass of ``model`` on ``example_inputs``.
    """

    names = {layer.module for layer in graph.layers}
    seen: dict[str, list[tuple[int, ...]]] = {n: [] for n in names}
    handles = []
    for name in names:
        module = model.get_submodule(name)
        handles.append(module.register_forward_pre_hook(
            lambda mod, args, name=name: seen[name].append(tuple(args[0].shape[1:]))))
    try:
        with evaluating(model), torch.no_grad():
            model(*as_tuple(example_inputs))
    finally:
        for h in handles:
            h.remove()
    calls: dict[str, int] = {}
    shapes = []
    for layer in graph.layers:
        k = calls.get(layer.module, 0)
        calls[layer.module] = k + 1
        module = model.get_submodule(layer.module)
        input_shape = seen[layer.module][k]
        if layer.kind == "linear":
            options: dict[str, Any] = {}
            base = "Linear"
        else:
            options = {"kernel_size": tuple(module.kernel_size), "stride": tuple(module.stride),
                       "padding": module.padding if isinstance(module.padding, str) else tuple(module.padding),
                       "dilation": tuple(module.dilation), "groups": module.groups,
                       "padding_mode": module.padding_mode, "group_mode": layer.group_mode}
            base = next(t.__name__ for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(module, t))
        key = f"{base} {layer.in_size}->{layer.out_size}{_describe(options)} in {'x'.join(map(str, input_shape))}"
        shapes.append(LayerShape(key, layer.kind, base, layer.in_size, layer.out_size, input_shape,
                                 options, layer.in_member is not None, layer.out_member is not None))
    return shapes


def _describe(options: dict[str, Any]) -> str:
    """`` k3x3 s2x2 p1x1`` ...: the conv options that change its cost (defaults left out)."""
    if not options:
        return ""
    join = lambda v: v if isinstance(v, str) else "x".join(map(str, v))
    parts = [f"k{join(options['kernel_size'])}", f"s{join(options['stride'])}", f"p{join(options['padding'])}"]
    if any(d != 1 for d in options["dilation"]):
        parts.append(f"d{join(options['dilation'])}")
    if options["groups"] != 1:
        parts.append(f"g{options['groups']}{options['group_mode'][:1]}")
    if options["padding_mode"] != "zeros":
        parts.append(options["padding_mode"])
    return " " + " ".join(parts)


def _grid(full: int, fractions: Sequence[float], align: int) -> list[int]:
    widths = {full}
    for f in fractions:
        w = max(align, int(round(f * full / align)) * align)
        if w < full:
            widths.add(w)
    return sorted(widths)


def _axis_interp(xs: np.ndarray, ys: np.ndarray, x: float) -> np.ndarray:
    """Linear interpolation along the first axis of ``ys``, extrapolated linearly below xs[0]."""
    if xs.size == 1:
        return ys[0]
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, xs.size - 2))
    t = min((x - xs[i]) / (xs[i + 1] - xs[i]), 1.0)
    return ys[i] + t * (ys[i + 1] - ys[i])


@dataclass
class _Entry:
    in_widths: list[int]
    out_widths: list[int]
    ms: list[list[float]]  # ms[i][j]: in_widths[i] x out_widths[j]

    def __post_init__(self) -> None:
        grid = np.array(self.ms, dtype=float)
        # more channels never run faster: a monotone envelope removes the noise that would say so
        grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=0), axis=1)
        self._grid = grid
        self._in = np.array(self.in_widths, dtype=float)
        self._out = np.array(self.out_widths, dtype=float)

    def lookup(self, inp: float, out: float) -> float:
        along_in = _axis_interp(self._in, self._grid, inp)
        return max(float(_axis_interp(self._out, along_in, out)), 0.0)


@dataclass
class LatencyTable:
    """Measured latency of layer shapes on one runtime, device, batch size and thread count."""

    runtime: str
    device: str
    batch_size: int
    threads: int | None
    entries: dict[str, _Entry] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    align: int = 1  # the grid's channel multiple: a table timed at other widths is not reused

    def layer_ms(self, shape: LayerShape, out: int, inp: int) -> float:
        """Modelled latency (ms per batch) of ``shape`` with ``out``/``inp`` channels kept."""
        entry = self.entries[shape.key]
        if shape.options.get("group_mode") == "group":
            return entry.lookup(shape.in_size, out)
        return entry.lookup(inp, out)

    def predict_ms(self, shapes: Sequence[LayerShape], graph: Any, kept: np.ndarray | None = None) -> float:
        """Modelled latency of the whole model: the sum over its layers, at ``kept`` widths."""
        total = 0.0
        for shape, layer in zip(shapes, graph.layers):
            total += self.layer_ms(shape, *layer.kept_widths(kept))
        return total

    def measure(self, shapes: Sequence[LayerShape], *, fractions: Sequence[float] = DEFAULT_FRACTIONS, align: int = 1,
                timing: TimingConfig = LAYER_TIMING, progress: Callable[[str], None] | None = None) -> int:
        """Time every shape of ``shapes`` not in the table yet; returns how many were added."""
        log = progress or (lambda message: None)
        todo: dict[str, LayerShape] = {}
        for s in shapes:
            if s.key not in self.entries:
                todo.setdefault(s.key, s)
        start = time.perf_counter()
        for n, shape in enumerate(todo.values(), 1):
            in_widths, out_widths = self._axes(shape, fractions, align)
            ms = [[self._time(shape, *shape.timed_widths(i, o), timing) for o in out_widths] for i in in_widths]
            self.entries[shape.key] = _Entry(in_widths, out_widths, ms)
            log(f"layer shape {n}/{len(todo)}: {shape.key}: {ms[-1][-1]:.4f} ms at full width "
                f"({len(in_widths) * len(out_widths)} widths timed)")
        self.seconds += time.perf_counter() - start
        return len(todo)

    def _time(self, shape: LayerShape, inp: int, out: int, timing: TimingConfig) -> float:
        samples = time_model(shape.build(inp, out), shape.input_for(inp), self.runtime, self.device,
                             self.batch_size, self.threads, timing)
        return float(np.median(samples))

    @staticmethod
    def _axes(shape: LayerShape, fractions: Sequence[float], align: int) -> tuple[list[int], list[int]]:
        mode, groups = shape.options.get("group_mode", ""), shape.options.get("groups", 1)
        if mode == "group":  # the output decides the kept groups; the input follows
            step = shape.out_size // groups
            return [shape.in_size], _grid(shape.out_size, fractions, math.lcm(step, align)) if shape.out_axis \
                else [shape.out_size]
        step = math.lcm(align, groups) if mode == "width" else align
        ins = _grid(shape.in_size, fractions, step) if shape.in_axis else [shape.in_size]
        outs = _grid(shape.out_size, fractions, step) if shape.out_axis else [shape.out_size]
        return ins, outs

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "runtime": self.runtime, "device": self.device,
                "batch_size": self.batch_size, "threads": self.threads, "align": self.align,
                "environment": self.environment,
                "seconds": self.seconds,
                "entries": {k: {"in_widths": e.in_widths, "out_widths": e.out_widths, "ms": e.ms}
                            for k, e in self.entries.items()}}

    def save(self, path: str | Path) -> None:
        """Write the table as JSON (a temporary file renamed into place)."""

        atomic_write_bytes(Path(path), json.dumps(self.to_dict(), indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save`.

        Raises:
            ValueError: not JSON, another schema version, or a malformed entry (the file and
                the key are named).
        """
        path = Path(path)
        raw = read_versioned_json(path, kind="latency table", schema_version=SCHEMA_VERSION, error=ValueError)
        for key in ("runtime", "device", "batch_size", "entries"):
            if key not in raw:
                raise ValueError(f"{path}: missing key {key!r}")
        entries = {}
        for name, e in raw["entries"].items():
            try:
                entry = _Entry(list(map(int, e["in_widths"])), list(map(int, e["out_widths"])),
                               [list(map(float, row)) for row in e["ms"]])
                ok = np.shape(entry.ms) == (len(entry.in_widths), len(entry.out_widths)) and \
                    bool(np.all(np.isfinite(entry.ms))) and float(np.min(entry.ms)) >= 0
            except (KeyError, TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"{path}: entries[{name!r}] must have in_widths, out_widths and an "
                                 "in x out grid of non-negative ms")
            entries[name] = entry
        return cls(raw["runtime"], raw["device"], raw["batch_size"], raw.get("threads"), entries,
                   raw.get("environment", {}), float(raw.get("seconds", 0.0)), int(raw.get("align", 1)))

    def check_matches(self, other: LatencyTable, where: str) -> None:
        """Raise ValueError when ``other`` was measured elsewhere (runtime, device, batch, threads, alignment)."""
        for key in _MATCHED:
            if getattr(self, key) != getattr(other, key):
                raise ValueError(f"{where}: the table was measured with {key}={getattr(other, key)!r}, this run uses "
                                 f"{getattr(self, key)!r}; use another file or delete it")


def build_latency_table(model: Any, example_inputs: Any, graph: Any, *, runtime: str, device: str = "cpu",
                        batch_size: int = 1, threads: int | None = None,
                        fractions: Sequence[float] = DEFAULT_FRACTIONS, align: int = 1,
                        timing: TimingConfig = LAYER_TIMING, path: str | Path | None = None,
                        progress: Callable[[str], None] | None = None) -> tuple[LatencyTable, list[LayerShape]]:
    """Time the layer shapes of ``model`` (``graph``: its dependency graph) on ``runtime``.

    With ``path``, an existing table there is reused (it must have been measured with the same
    runtime, device, batch size, threads and alignment) and the shapes it lacks are added and saved back.

    Returns:
        The table and the shape of every entry of ``graph.layers``.
    """

    shapes = layer_shapes(model, example_inputs, graph)
    table = LatencyTable(runtime, device, batch_size, threads, environment=collect_environment([device]), align=align)
    if path is not None and Path(path).exists():
        cached = LatencyTable.load(path)
        table.check_matches(cached, str(path))
        table.entries, table.seconds = cached.entries, cached.seconds
    added = table.measure(shapes, fractions=fractions, align=align, timing=timing, progress=progress)
    if path is not None and added:
        table.save(path)
    return table, shapes
