"""benchmarks._stats on synthetic samples with hand-computed answers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks._stats import (
    LatencyStats,
    SpeedupStats,
    bootstrap_median_ci,
    efficiency,
    paired_speedup,
    summarize,
)


def test_summarize_1_to_100_linear_interpolation():
    samples = [float(v) for v in range(1, 101)]
    s = summarize(samples, batch_size=8)
    assert s.n == 100 and s.batch_size == 8
    assert s.latency_ms_min == 1.0 and s.latency_ms_max == 100.0
    assert s.latency_ms_median == pytest.approx(50.5)
    assert s.latency_ms_mean == pytest.approx(50.5)
    # linear interpolation at h = q * (n - 1): p90 -> h = 89.1, between 90 and 91
    assert s.latency_ms_p90 == pytest.approx(90.1)
    assert s.latency_ms_p95 == pytest.approx(95.05)
    assert s.latency_ms_p99 == pytest.approx(99.01)
    # ddof=1: the variance of 1..n is n(n+1)/12
    assert s.latency_ms_std == pytest.approx(math.sqrt(100 * 101 / 12))
    assert s.per_sample_ms_median == pytest.approx(50.5 / 8)
    assert s.throughput_sps == pytest.approx(8 / 0.0505)
    low, high = s.median_ci_ms
    assert low <= 50.5 <= high and low < high
    assert s.ci_level == 0.95


def test_summarize_keeps_raw_samples_in_order():
    samples = [3.0, 1.0, 2.0, 5.0, 4.0]
    s = summarize(samples, 1)
    assert s.samples_ms == samples
    assert s.latency_ms_median == 3.0
    assert summarize(np.array(samples), 1) == s  # numpy input gives the same result


def test_throughput_at_constant_latency():
    s = summarize([4.0] * 50, batch_size=8)
    assert s.throughput_sps == pytest.approx(2000.0)  # 8 samples / 4 ms
    assert s.per_sample_ms_median == pytest.approx(0.5)
    assert s.median_ci_ms == (4.0, 4.0)
    assert s.latency_ms_std == 0.0


def test_single_sample():
    s = summarize([2.5], 1)
    assert s.n == 1 and s.latency_ms_std == 0.0 and s.median_ci_ms == (2.5, 2.5)
    assert s.latency_ms_p99 == 2.5


def test_zero_median_has_infinite_throughput():
    assert summarize([0.0, 0.0, 0.0], 4).throughput_sps == math.inf


def test_bootstrap_ci_covers_true_median_and_shrinks_with_n():
    rng = np.random.default_rng(42)
    large = rng.normal(10.0, 1.0, 4000)
    small = large[:100]
    lo_large, hi_large = summarize(large, 1).median_ci_ms
    lo_small, hi_small = summarize(small, 1).median_ci_ms
    assert lo_large <= 10.0 <= hi_large
    assert hi_large - lo_large < hi_small - lo_small


def test_bootstrap_is_seeded_and_level_sets_width():
    x = np.random.default_rng(0).exponential(1.0, 300)
    assert bootstrap_median_ci(x, seed=3) == bootstrap_median_ci(x, seed=3)
    assert summarize(x, 1, seed=3).median_ci_ms == bootstrap_median_ci(x, seed=3)
    lo50, hi50 = bootstrap_median_ci(x, level=0.5)
    lo99, hi99 = bootstrap_median_ci(x, level=0.99)
    assert lo99 <= lo50 < hi50 <= hi99
    with pytest.raises(ValueError, match="level"):
        bootstrap_median_ci(x, level=1.0)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_median_ci(x, resamples=0)


@pytest.mark.parametrize("samples, message", [
    ([], "empty"),
    ([1.0, -0.5], "negative .*index 1"),
    ([1.0, 2.0, float("nan")], "NaN .*index 2"),
    ([float("inf")], "infinite .*index 0"),
    ([[1.0, 2.0]], "flat"),
])
def test_summarize_rejects_bad_samples(samples, message):
    with pytest.raises(ValueError, match=message):
        summarize(samples, 1)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, None])
def test_summarize_rejects_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        summarize([1.0, 2.0], batch_size)


def test_latency_stats_json_round_trip():
    s = summarize([1.0, 2.0, 4.0, 8.0], 2)
    data = json.loads(json.dumps(s.to_dict()))
    assert LatencyStats.from_dict(data) == s
    with pytest.raises(ValueError, match="unknown LatencyStats key\\(s\\)"):
        LatencyStats.from_dict({**data, "latency_s": 1})


def test_paired_constant_2x():
    p = paired_speedup([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    assert p.rounds == 4
    assert p.speedup_median == 2.0
    assert p.speedup_ci == (2.0, 2.0)
    assert p.speedup_iqr == (2.0, 2.0)
    assert p.ratios == [2.0] * 4


def test_paired_quartiles_linear_interpolation():
    # ratios 1..5: q25 at h = 1 -> 2, q75 at h = 3 -> 4
    p = paired_speedup([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5)
    assert p.speedup_median == 3.0 and p.speedup_iqr == (2.0, 4.0)
    assert p.speedup_ci[0] <= 3.0 <= p.speedup_ci[1]
    # ratios 1..4: q25 at h = 0.75 -> 1.75, q75 at h = 2.25 -> 3.25, median 2.5
    p = paired_speedup([4.0, 3.0, 2.0, 1.0], [4.0, 1.5, 2 / 3, 0.25])
    assert p.speedup_median == pytest.approx(2.5)
    assert p.speedup_iqr == pytest.approx((1.75, 3.25))
    assert p.ratios == pytest.approx([1.0, 2.0, 3.0, 4.0])  # in round order


def test_paired_slower_candidate_is_below_one():
    assert paired_speedup([1.0] * 3, [4.0] * 3).speedup_median == 0.25


def test_paired_errors():
    with pytest.raises(ValueError, match="3 baseline and 2 candidate"):
        paired_speedup([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="cand_ms .*non-positive"):
        paired_speedup([1.0], [0.0])
    with pytest.raises(ValueError, match="base_ms .*NaN"):
        paired_speedup([float("nan")], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_speedup([], [])


def test_speedup_stats_json_round_trip():
    p = paired_speedup([3.0, 2.0, 5.0], [1.0, 1.0, 2.0])
    assert SpeedupStats.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_efficiency():
    assert efficiency(1.6, 2.0) == pytest.approx(0.8)
    assert efficiency(0, 3) == 0.0
    with pytest.raises(ValueError, match="theoretical must be positive"):
        efficiency(1.0, 0.0)
    with pytest.raises(ValueError, match="practical must be a finite number"):
        efficiency(float("nan"), 1.0)
    with pytest.raises(ValueError, match="theoretical must be a finite number"):
        efficiency(1.0, float("inf"))
