"""Statistics of latency samples: percentiles, bootstrap confidence intervals, paired speedups.

Everything here is pure numpy on raw samples in milliseconds; nothing is rounded (round only
when printing). Conventions, fixed once for the whole harness:

* Percentiles use numpy's default ``method="linear"`` (Hyndman & Fan type 7): the q-th
  percentile of n sorted samples x_0..x_{n-1} sits at index ``h = q/100 * (n - 1)`` and is
  interpolated linearly between x_floor(h) and x_ceil(h). For the samples 1..100 the median is
  50.5 and p90 is 90.1 (h = 89.1, between 90 and 91).
* The standard deviation is the sample standard deviation (``ddof=1``); it is 0.0 for a
  single sample.
* Confidence intervals are percentile-bootstrap intervals of the median: resample the data
  with replacement ``resamples`` times (seeded ``numpy.random.default_rng``), take each
  resample's median, and report the 2.5th and 97.5th percentiles of those medians (for the
  default 95% level). Seeded, so a report is reproducible from its raw samples.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from benchmarks._records import check_known_keys

__all__ = ["LatencyStats", "SpeedupStats", "bootstrap_median_ci", "efficiency", "paired_speedup", "summarize"]

DEFAULT_RESAMPLES = 2000
DEFAULT_CI_LEVEL = 0.95
_CHUNK_ELEMENTS = 2_000_000  # bootstrap resamples are drawn in blocks of at most this many values


def _as_samples(samples: Sequence[float] | np.ndarray, what: str, *, positive: bool = False) -> np.ndarray:
    """Validate raw samples and return them as a 1-D float64 array.

    Raises:
        ValueError: no samples, not one-dimensional, NaN/infinite, negative (or, with
            ``positive``, zero) values; the message names the issue and the first bad index.
    """
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence of numbers, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty; need at least one sample")
    for kind, mask in (("NaN", np.isnan(arr)), ("infinite", np.isinf(arr))):
        bad = np.flatnonzero(mask)
        if bad.size:
            raise ValueError(f"{what} holds {bad.size} {kind} value(s), the first at index {int(bad[0])}")
    bad = np.flatnonzero(arr <= 0) if positive else np.flatnonzero(arr < 0)
    if bad.size:
        i = int(bad[0])
        kind = "non-positive" if positive else "negative"
        raise ValueError(f"{what} holds {bad.size} {kind} value(s), the first at index {i} ({arr[i]!r}); "
                         f"latencies must be {'> 0' if positive else '>= 0'} ms")
    return arr


def _check_level(level: float) -> None:
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")


def _check_resamples(resamples: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")


def bootstrap_median_ci(samples: Sequence[float] | np.ndarray, *, seed: int = 0,
                        resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_CI_LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of ``samples``.

    Args:
        samples: the raw values (any unit; the interval is in the same unit).
        seed: seed of the ``numpy.random.default_rng`` that draws the resamples.
        resamples: how many bootstrap resamples.
        level: the interval's coverage, e.g. 0.95 for the 2.5th..97.5th percentiles.

    Returns:
        ``(low, high)``; ``(x, x)`` for a single sample or constant samples.

    Raises:
        ValueError: empty or non-finite samples, or a bad ``resamples``/``level``.
    """
    arr = np.asarray(samples, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError("bootstrap_median_ci needs a non-empty flat sequence of finite numbers")
    _check_resamples(resamples)
    _check_level(level)
    n = arr.size
    rng = np.random.default_rng(seed)
    medians = np.empty(resamples, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // n)  # bound the memory of one block of resamples
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        medians[start:stop] = np.median(arr[idx], axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(medians, [tail, 100.0 - tail])
    return float(low), float(high)


class _DictResult:
    """JSON round trip for the result dataclasses (tuples become lists and back)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):  # noqa: ANN206 - returns cls
        check_known_keys(cls, data)
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kwargs = {k: tuple(v) if isinstance(v, list) and "tuple" in str(fields[k].type) else v
                  for k, v in data.items()}
        return cls(**kwargs)


@dataclass(frozen=True)
class LatencyStats(_DictResult):
    """Summary of per-batch latencies, in milliseconds, with the raw samples kept.

    Attributes:
        batch_size: samples (images) per timed call.
        n: how many timed calls.
        latency_ms_min, latency_ms_max, latency_ms_median, latency_ms_mean: per batch.
        latency_ms_p90, latency_ms_p95, latency_ms_p99: percentiles (linear interpolation).
        latency_ms_std: sample standard deviation (``ddof=1``; 0.0 when ``n == 1``).
        median_ci_ms: bootstrap confidence interval ``(low, high)`` of the median.
        ci_level: the interval's coverage (0.95 by default).
        per_sample_ms_median: ``latency_ms_median / batch_size``.
        throughput_sps: samples per second at the median, ``batch_size / (median / 1000)``
            (``inf`` when the median is 0 ms, i.e. below the timer's resolution).
        samples_ms: the raw per-batch latencies, in the order they were taken.
    """

    batch_size: int
    n: int
    latency_ms_min: float
    latency_ms_max: float
    latency_ms_median: float
    latency_ms_mean: float
    latency_ms_p90: float
    latency_ms_p95: float
    latency_ms_p99: float
    latency_ms_std: float
    median_ci_ms: tuple[float, float]
    ci_level: float
    per_sample_ms_median: float
    throughput_sps: float
    samples_ms: list[float]


def summarize(samples_ms: Sequence[float] | np.ndarray, batch_size: int, seed: int = 0, *,
              resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_CI_LEVEL) -> LatencyStats:
    """Summarise raw per-batch latencies.

    Args:
        samples_ms: one latency per timed call, in milliseconds (e.g. from ``time_callable``).
        batch_size: samples per call, for the per-sample latency and the throughput.
        seed: seed of the bootstrap resampling of the median's confidence interval.
        resamples, level: bootstrap resamples and the interval's coverage.

    Raises:
        ValueError: empty samples, NaN/infinite/negative samples (the message names the first
            offending index), or a batch size that is not a positive int.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    arr = _as_samples(samples_ms, "samples_ms")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, [50, 90, 95, 99]))  # method="linear"
    return LatencyStats(
        batch_size=int(batch_size),
        n=int(arr.size),
        latency_ms_min=float(arr.min()),
        latency_ms_max=float(arr.max()),
        latency_ms_median=p50,
        latency_ms_mean=float(arr.mean()),
        latency_ms_p90=p90,
        latency_ms_p95=p95,
        latency_ms_p99=p99,
        latency_ms_std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        median_ci_ms=bootstrap_median_ci(arr, seed=seed, resamples=resamples, level=level),
        ci_level=float(level),
        per_sample_ms_median=p50 / batch_size,
        throughput_sps=batch_size / (p50 / 1000.0) if p50 > 0 else math.inf,
        samples_ms=[float(v) for v in arr],
    )


@dataclass(frozen=True)
class SpeedupStats(_DictResult):
    """Speedup of a candidate over a baseline from interleaved (ABAB) rounds.

    Each round times the baseline and the candidate back to back, so the per-round ratio
    ``base_ms[i] / cand_ms[i]`` cancels slow drift (thermal, frequency, other load) that would
    bias a ratio of two separately taken medians. A speedup above 1 means the candidate is faster.

    Attributes:
        rounds: how many paired rounds.
        speedup_median: median of the per-round ratios.
        speedup_ci: bootstrap confidence interval ``(low, high)`` of that median.
        ci_level: the interval's coverage.
        speedup_iqr: the 25th and 75th percentiles of the ratios (linear interpolation).
        ratios: the raw per-round ratios, in round order.
    """

    rounds: int
    speedup_median: float
    speedup_ci: tuple[float, float]
    ci_level: float
    speedup_iqr: tuple[float, float]
    ratios: list[float]


def paired_speedup(base_ms: Sequence[float] | np.ndarray, cand_ms: Sequence[float] | np.ndarray, seed: int = 0, *,
                   resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_CI_LEVEL) -> SpeedupStats:
    """Speedup of ``cand`` over ``base`` from paired latencies (round i of each was taken together).

    Args:
        base_ms: the baseline's latency in each round, in ms (e.g. ``interleaved(...)["base"]``).
        cand_ms: the candidate's latency in the same rounds, in ms.
        seed: seed of the bootstrap resampling of the median ratio's confidence interval.
        resamples, level: bootstrap resamples and the interval's coverage.

    Raises:
        ValueError: different lengths, empty, NaN/infinite or non-positive latencies.
    """
    base = _as_samples(base_ms, "base_ms", positive=True)
    cand = _as_samples(cand_ms, "cand_ms", positive=True)
    if base.size != cand.size:
        raise ValueError(f"paired rounds need as many baseline as candidate latencies, got {base.size} "
                         f"baseline and {cand.size} candidate")
    ratios = base / cand
    q25, q50, q75 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return SpeedupStats(
        rounds=int(ratios.size),
        speedup_median=q50,
        speedup_ci=bootstrap_median_ci(ratios, seed=seed, resamples=resamples, level=level),
        ci_level=float(level),
        speedup_iqr=(q25, q75),
        ratios=[float(v) for v in ratios],
    )


def efficiency(practical: float, theoretical: float) -> float:
    """How much of a theoretical gain is realised: ``practical / theoretical``.

    E.g. a measured speedup of 1.6 where the FLOPs ratio promises 2.0 gives 0.8; a measured
    memory saving over the theoretical TRM saving (eq. 10 of "FALF ConvNets: Fatuous auxiliary loss
    based filter-pruning for efficient deep CNNs") likewise.

    Raises:
        ValueError: either value is NaN/infinite, or ``theoretical`` is not positive.
    """
    for name, value in (("practical", practical), ("theoretical", theoretical)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if theoretical <= 0:
        raise ValueError(f"theoretical must be positive, got {theoretical!r}")
    return float(practical) / float(theoretical)
