"""The latency-pruning benchmark's comparison at the same latency: selection and interpolation."""
import json

import pytest

import models
from benchmarks import bench_latency_prune as bench
from compressor.app._latency_prune import LatencyCandidate, _latency
from benchmarks._timing import TimingConfig

TIMING = TimingConfig(warmup=3, min_runs=20, min_seconds=0.3, max_seconds=2.0)


def _c(flops, params, ms):
    return LatencyCandidate(flops, params, ms, (ms * 0.99, ms * 1.01))


def test_capacity_at_the_budget_is_interpolated_between_the_bracketing_models():
    points = [(20.0, 0.50, 0.70), (24.0, 0.55, 0.80), (26.0, 0.65, 0.85), (30.0, 0.70, 0.90)]
    at = bench.at_latency(points, 25.0)
    assert at["flops_ratio"] == pytest.approx(0.60) and at["params_ratio"] == pytest.approx(0.825)
    assert bench.at_latency(points[:2], 25.0) is None  # nothing measured above the budget


def test_common_latency_is_the_budget_or_the_shared_range():
    a = [(20.0, 0.5, 0.6), (26.0, 0.6, 0.7)]
    b = [(22.0, 0.5, 0.8), (27.0, 0.6, 0.9)]
    assert bench.common_latency([a, b], 25.0) == 25.0
    slow = [(25.5, 0.6, 0.7), (28.0, 0.7, 0.8)]  # the machine slowed down while one curve was re-timed
    assert bench.common_latency([a, slow], 25.0) == pytest.approx(25.75)  # both span 25.5-26 ms: its middle
    assert bench.common_latency([[(20.0, 0.5, 0.6), (21.0, 0.6, 0.7)], slow], 25.0) is None


def test_near_budget_takes_distinct_models_on_both_sides():
    models = [object() for _ in range(6)]
    cands = [_c(1.0, 1.0, 40.0), _c(0.6, 0.7, 26.0), _c(0.5, 0.6, 22.0), _c(0.55, 0.65, 24.5), _c(0.4, 0.5, 18.0),
             _c(0.6, 0.7, 25.5)]
    models[5] = models[1]  # a re-measurement of the same model: its latest measurement counts
    picked = bench.near_budget(cands, models, 25.0, each_side=2)
    assert [c.latency_ms_median for c, _ in picked] == [24.5, 22.0, 25.5]


def test_end_to_end_on_onnxruntime(tmp_path):
    # a budget relative to this machine's unpruned latency (an absolute one is noise-bound on a tiny model)
    model = models.create_model("resnet20").eval()
    budget = 0.7 * _latency(model, (3, 32, 32), "onnxruntime", "cpu", 1, 1, TIMING, 0)[0]
    out = tmp_path / "r"
    assert bench.main(["--model", "resnet20", "--runtime", "onnxruntime", "--budget-ms", f"{budget:.4f}",
                       "--threads", "1", "--round-to", "8", "--max-steps", "3", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1 and results["runs"][0]["result"]["met"]
    summary = (out / "summary.md").read_text()
    assert "| latency table (lut) |" in summary and "Side by side" in summary
