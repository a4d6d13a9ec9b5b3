"""Timing loops: warm up, then time each call (perf_counter on CPU, CUDA events on GPU).

* :class:`TimingConfig` bounds a run by count and by time: it stops once both ``min_runs`` and
  ``min_seconds`` are reached, or as soon as ``max_runs`` or ``max_seconds`` is hit.
* :func:`time_callable` returns one latency per call, in milliseconds.
* :func:`interleaved` times several callables in rotating rounds (AB, BA, AB, ...) for the
  paired speedup of :func:`benchmarks._stats.paired_speedup`.
* :func:`flush_denormals` and :func:`has_subnormals`: subnormal floats (random-weight models
  produce them) make CPU kernels 10-100x slower and the timings meaningless.

torch is imported only inside the functions that need it (CUDA timing, denormal flushing), so
timing an onnxruntime or OpenVINO session never imports it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from benchmarks._records import check_known_keys

__all__ = ["TIMING_DEVICES", "TimingConfig", "flush_denormals", "has_subnormals", "interleaved", "rotation",
           "time_callable"]

TIMING_DEVICES = ("cpu", "cuda")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_seconds(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number of seconds {'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class TimingConfig:
    """How long to time: a count- and time-bounded run after a fixed warm-up.

    The timed loop stops after a call once ``runs >= min_runs`` and ``elapsed >= min_seconds``
    both hold, or as soon as ``runs >= max_runs`` or ``elapsed >= max_seconds`` (the maxima win
    over the minima, so a slow model may stop before ``min_runs``). At least one call is always
    timed. ``elapsed`` is wall time since the first timed call started (warm-up excluded). The
    warm-up is count-bounded only.

    Attributes:
        warmup: untimed calls before timing (allocators, caches, lazy initialisation, JIT).
        min_runs, max_runs: bounds on the number of timed calls.
        min_seconds, max_seconds: bounds on the timed loop's wall time, in seconds.
    """

    warmup: int = 10
    min_runs: int = 20
    max_runs: int = 1000
    min_seconds: float = 1.0
    max_seconds: float = 10.0

    def __post_init__(self) -> None:
        _check_int("warmup", self.warmup, 0)
        _check_int("min_runs", self.min_runs, 1)
        _check_int("max_runs", self.max_runs, 1)
        _check_seconds("min_seconds", self.min_seconds, positive=False)
        _check_seconds("max_seconds", self.max_seconds, positive=True)
        if self.min_runs > self.max_runs:
            raise ValueError(f"min_runs ({self.min_runs}) must not exceed max_runs ({self.max_runs})")
        if self.min_seconds > self.max_seconds:
            raise ValueError(f"min_seconds ({self.min_seconds}) must not exceed max_seconds ({self.max_seconds})")

    def done(self, runs: int, elapsed_s: float) -> bool:
        """Whether a loop that has made ``runs`` timed calls in ``elapsed_s`` seconds stops now."""
        if runs >= self.max_runs or elapsed_s >= self.max_seconds:
            return True
        return runs >= self.min_runs and elapsed_s >= self.min_seconds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingConfig:
        """Inverse of :meth:`to_dict`. Raises ValueError on unknown keys or bad values."""
        check_known_keys(cls, data)
        return cls(**data)


class _CpuTimer:
    """Host wall time of one call, ``time.perf_counter_ns`` (monotonic, highest resolution)."""

    def sync(self) -> None:
        pass

    def __call__(self, fn: Callable[[], Any]) -> float:
        start = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - start) / 1e6


class _CudaTimer:
    """Device time of one call: a pair of CUDA events on the current stream, then synchronize.

    The device is synchronised before the start event so that work queued by earlier calls is
    not charged to this one, and the end event is waited on before reading the time.
    """

    def __init__(self) -> None:
        import torch  # optional SDK: torch

        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' timing needs a CUDA device (torch.cuda.is_available() is False)")
        self._cuda = torch.cuda
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        self._cuda.synchronize()

    def __call__(self, fn: Callable[[], Any]) -> float:
        self._cuda.synchronize()
        self._start.record()
        fn()
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))  # already in ms


def _timer(device: str) -> _CpuTimer | _CudaTimer:
    if device not in TIMING_DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, TIMING_DEVICES))}, got {device!r}")
    return _CudaTimer() if device == "cuda" else _CpuTimer()


def time_callable(fn: Callable[[], Any], config: TimingConfig | None = None, device: str = "cpu") -> list[float]:
    """Warm up, then time calls of ``fn`` until ``config``'s bounds say stop.

    Args:
        fn: a zero-argument callable, e.g. ``lambda: session.run(x)``. Its result is dropped.
        config: warm-up and run bounds; default ``TimingConfig()``.
        device: ``"cpu"`` times each call with ``time.perf_counter_ns``; ``"cuda"`` with a pair
            of CUDA events around it and a synchronize (imports torch).

    Returns:
        The latency of each timed call, in milliseconds, in call order.

    Raises:
        ValueError: an unknown device. RuntimeError: ``device="cuda"`` without a CUDA device.
        Whatever ``fn`` raises is propagated.
    """
    config = TimingConfig() if config is None else config
    timer = _timer(device)
    for _ in range(config.warmup):
        fn()
    timer.sync()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        samples.append(timer(fn))
        if config.done(len(samples), time.perf_counter() - start):
            return samples


def rotation(names: list[str], round_index: int) -> list[str]:
    """The call order of round ``round_index``: ``names`` rotated left by the round number.

    For two callables this gives AB, BA, AB, ...; for three ABC, BCA, CAB, ... Each callable
    takes each position equally often, so a position effect (cache state left by the previous
    call, a drift within a round) falls evenly on all of them.
    """
    k = round_index % len(names)
    return names[k:] + names[:k]


def interleaved(fns: Mapping[str, Callable[[], Any]], config: TimingConfig | None = None,
                rounds: int | None = None, device: str = "cpu") -> dict[str, list[float]]:
    """Time several callables in interleaved rounds, for paired comparisons.

    Each callable is warmed up (``config.warmup`` calls, themselves interleaved), then every
    round calls each callable once, in the order :func:`rotation` gives, so that slow drift
    affects all of them alike and the i-th latencies form a pair.

    Args:
        fns: name -> zero-argument callable, e.g. ``{"base": ..., "pruned": ...}``.
        config: warm-up and bounds; default ``TimingConfig()``. Without ``rounds``, its run and
            time bounds apply to the number of rounds and their total wall time.
        rounds: an exact number of rounds, overriding ``config``'s run and time bounds.
        device: ``"cpu"`` or ``"cuda"``, as for :func:`time_callable`.

    Returns:
        name -> the latency of each round, in ms; all lists have the same length.

    Raises:
        ValueError: no callables, a non-callable, a bad ``rounds`` or an unknown device.
    """
    if not fns:
        raise ValueError("interleaved needs at least one callable")
    for name, fn in fns.items():
        if not callable(fn):
            raise ValueError(f"fns[{name!r}] is not callable ({type(fn).__name__})")
    if rounds is not None:
        _check_int("rounds", rounds, 1)
    config = TimingConfig() if config is None else config
    timer = _timer(device)
    names = list(fns)
    for i in range(config.warmup):
        for name in rotation(names, i):
            fns[name]()
    timer.sync()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    done = 0
    while True:
        for name in rotation(names, done):
            samples[name].append(timer(fns[name]))
        done += 1
        if rounds is not None:
            if done >= rounds:
                return samples
        elif config.done(done, time.perf_counter() - start):
            return samples


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Within the block, torch's CPU kernels flush subnormal floats to zero (FTZ/DAZ).

    Deployed runtimes do this; without it a random-weight model whose activations decay into the
    subnormal range runs 10-100x slower on x86. The setting is per thread and process-wide for
    that thread, so the previous state is restored on exit.

    Yields:
        Whether the CPU supports flushing (``torch.set_flush_denormal``'s answer: SSE3 on x86).
    """
    import torch  # optional SDK: torch

    # torch has no getter: a float32 subnormal survives a round trip through a tensor only when
    # flushing is off
    was_on = torch.tensor([1e-39], dtype=torch.float32).item() == 0.0
    supported = bool(torch.set_flush_denormal(True))
    try:
        yield supported
    finally:
        torch.set_flush_denormal(was_on)


def has_subnormals(array: Any) -> bool:
    """Whether ``array`` holds a subnormal float: ``0 < |x| < np.finfo(dtype).tiny``.

    The threshold is the smallest normal number of the array's own floating dtype (float32:
    ~1.18e-38), so pass activations in the dtype they are computed in. Integer and boolean
    arrays hold no subnormals. Use it on a model's activations or outputs to warn that CPU
    timings of a random-weight model may be dominated by denormal arithmetic.

    Raises:
        TypeError: ``array`` is not real-valued numeric (strings, objects, complex).
    """
    arr = np.asarray(array)
    if arr.dtype.kind in "biu":
        return False
    if arr.dtype.kind != "f":
        raise TypeError(f"has_subnormals takes a real numeric array, got dtype {arr.dtype}")
    magnitude = np.abs(arr)
    return bool(((magnitude > 0) & (magnitude < np.finfo(arr.dtype).tiny)).any())
