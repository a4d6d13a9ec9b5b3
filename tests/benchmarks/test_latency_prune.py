"""Latency-budget pruning: the chosen model meets a reachable budget by the gate's own statistics."""
import json

import pytest

import compressor as C
import models
from benchmarks._latency_prune import _latency, prune_to_latency
from benchmarks._timing import TimingConfig
from compressor.cli import main

TIMING = TimingConfig(warmup=3, min_runs=20, min_seconds=0.3, max_seconds=2.0)


def test_meets_a_reachable_budget_on_onnxruntime():
    model = models.create_model("resnet20").eval()
    base_ms = _latency(model, (3, 32, 32), "onnxruntime", "cpu", 8, 1, TIMING, 0)[0]
    budget = 0.65 * base_ms
    result = prune_to_latency(model, (3, 32, 32), C.PruneConfig(criterion="l2", target_flops=1.0, round_to=8),
                              budget, batch_size=8, threads=1, timing=TIMING)
    assert result.met and result.chosen.flops_ratio < 1.0
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert result.flops_guess is not None and result.unpruned.target_flops == 1.0
    # the gate's rule: a max-latency budget is violated only when the CI's lower bound is beyond it
    _, (low, _), _ = _latency(result.model, (3, 32, 32), "onnxruntime", "cpu", 8, 1, TIMING, 1)
    assert low <= budget * 1.25, "re-measured well above the budget: the search's choice did not hold"


def test_bad_input():
    model = models.create_model("resnet20")
    config = C.PruneConfig(target_flops=1.0)
    with pytest.raises(ValueError, match="budget must be a number of ms > 0"):
        prune_to_latency(model, (3, 32, 32), config, -1.0)
    with pytest.raises(ValueError, match="cannot measure on tensorrt"):
        prune_to_latency(model, (3, 32, 32), config, 1.0, runtime="tensorrt", device="cuda")


def test_cli_generous_and_impossible_budgets(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["prune", "--model", "resnet20", "--target-latency-ms", "100000", "--threads", "1",
                 "--output", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["latency_search"]["met"] and summary["flops_ratio"] == 1.0
    assert main(["prune", "--model", "resnet20", "--target-latency-ms", "0.000001", "--threads", "1",
                 "--output", str(tmp_path / "q"), "--quiet"]) == 2
    assert "unreachable" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
