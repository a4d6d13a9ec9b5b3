"""Latency-budget pruning: the chosen model meets a reachable budget by the gate's own statistics."""
import json

import pytest
import torch

import compressor as C
import models
from compressor.app._latency_prune import LatencyCandidate, _largest_within, _latency, prune_to_latency
from benchmarks._timing import TimingConfig
from compressor.app.cli import main

TIMING = TimingConfig(warmup=3, min_runs=20, min_seconds=0.3, max_seconds=2.0)
LAYERS = TimingConfig(warmup=2, min_runs=5, min_seconds=0.05, max_seconds=0.3)


def _synthetic(latency, noisy=()):
    """measure(x, again) for a model whose median latency is latency(x) ms, CI +-1%; the positions in
    ``noisy`` read 50% slow the first time they are measured."""
    calls = []

    def measure(x, again):
        ms = latency(x) * (1.5 if x in noisy and x not in [c for c, _ in calls] else 1.0)
        calls.append((x, again))
        return LatencyCandidate(x, x, ms, (ms * 0.99, ms * 1.01)), True

    return measure, calls


def test_search_finds_the_largest_position_within_the_budget():
    latency = lambda x: 2.0 + 8.0 * x  # noqa: E731  (10 ms unpruned, 2 ms fixed overhead)
    measure, calls = _synthetic(latency)
    top = (1.0, LatencyCandidate(1.0, 1.0, 10.0, (9.9, 10.1)))
    x, chosen = _largest_within(measure, 6.0, top, 0.6, 0.01, 8, 0.01, "test")
    assert chosen.meets(6.0) and latency(x) * 1.01 <= 6.0
    assert x > 0.48  # 6 ms = 2 + 8x at x = 0.5, less the CI margin
    assert len(calls) <= 10


def test_search_re_measures_a_miss_that_noise_made():
    latency = lambda x: 10.0 * x  # noqa: E731
    top = (1.0, LatencyCandidate(1.0, 1.0, 10.0, (9.9, 10.1)))
    measure, calls = _synthetic(latency, noisy={0.5})
    x, _ = _largest_within(measure, 5.5, top, 0.5, 0.01, 8, 0.01, "test")
    assert (0.5, True) in calls  # the noisy miss was measured again, and the search went on past it
    assert x >= 0.5


def test_search_reports_an_unreachable_budget():
    top = (1.0, LatencyCandidate(1.0, 1.0, 10.0, (9.9, 10.1)))
    measure, calls = _synthetic(lambda x: 5.0 + 5.0 * x)
    with pytest.raises(C.UnreachableTargetError, match="fastest candidate measured 5.050 ms"):
        _largest_within(measure, 4.0, top, 0.4, 0.01, 6, 0.01, "test")
    assert len(calls) <= 6  # the line through the misses says no model meets 4 ms: it heads for the smallest


def test_meets_a_reachable_budget_on_onnxruntime():
    model = models.create_model("resnet20").eval()
    base_ms = _latency(model, (3, 32, 32), "onnxruntime", "cpu", 8, 1, TIMING, 0)[0]
    budget = 0.65 * base_ms
    result = prune_to_latency(model, (3, 32, 32), C.PruneConfig(criterion="l2", target_flops=1.0, round_to=8),
                              budget, method="search", batch_size=8, threads=1, timing=TIMING)
    assert result.met and result.chosen.flops_ratio < 1.0 and result.chosen is result.flops_chosen
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    assert result.flops_guess is not None and result.unpruned.target_flops == 1.0
    # the gate's rule: a max-latency budget is violated only when the CI's lower bound is beyond it
    _, (low, _), _ = _latency(result.model, (3, 32, 32), "onnxruntime", "cpu", 8, 1, TIMING, 1)
    assert low <= budget * 1.25, "re-measured well above the budget: the search's choice did not hold"


def test_latency_table_method_meets_a_reachable_budget_on_onnxruntime(tmp_path):
    model = models.create_model("resnet20").eval()
    base_ms = _latency(model, (3, 32, 32), "onnxruntime", "cpu", 8, 1, TIMING, 0)[0]
    budget = 0.65 * base_ms
    table = tmp_path / "table.json"
    result = prune_to_latency(model, (3, 32, 32), C.PruneConfig(criterion="l2", target_flops=1.0, round_to=8),
                              budget, method="lut", compare=False, batch_size=8, threads=1, timing=TIMING,
                              table_path=table, fractions=(0.5, 1.0), layer_timing=LAYERS)
    assert result.met and result.method == "lut" and result.flops_chosen is None
    assert result.chosen.predicted_ms is not None and result.chosen.predicted_ms < result.table["predicted_unpruned_ms"]
    assert table.exists() and result.table["shapes"] == 9
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in model.parameters())
    for m in result.model.modules():  # physically smaller, widths aligned to round_to
        if isinstance(m, torch.nn.Conv2d) and m.out_channels != model.get_submodule("conv1").out_channels:
            assert m.out_channels % 8 == 0
    history = result.model.compressor_metadata["history"][-1]
    assert history["selection"] == "latency_table" and history["budget_ms"] == budget
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
    with pytest.raises(ValueError, match="unknown latency pruning method 'halp'; known: lut, search"):
        prune_to_latency(model, (3, 32, 32), config, 1.0, method="halp")


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


def test_cli_latency_table_reused_and_reported(tmp_path, capsys):
    model = models.create_model("resnet20").eval()
    budget = 0.7 * _latency(model, (3, 32, 32), "onnxruntime", "cpu", 1, 1, TIMING, 0)[0]
    table = tmp_path / "table.json"
    args = ["prune", "--model", "resnet20", "--target-latency-ms", f"{budget:.4f}", "--threads", "1", "--round-to",
            "4", "--latency-table", str(table), "--no-latency-compare", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "p")]) == 0
    facts = json.loads((tmp_path / "p" / "summary.json").read_text())["latency_search"]
    assert facts["method"] == "lut" and facts["met"] and facts["table"]["path"] == str(table)
    assert facts["chosen"]["latency_ms_ci"][1] <= budget and "samples_ms" not in facts["chosen"]
    assert "latency budget" in capsys.readouterr().out  # the table of the choice
    built = json.loads(table.read_text())
    assert built["schema_version"] == 1 and built["threads"] == 1 and len(built["entries"]) == 9
    # a table measured with other settings is refused before anything is written
    assert main([*args[:-4], "--latency-table", str(table), "--latency-batch-size", "4", "--quiet",
                 "--output", str(tmp_path / "q")]) == 2
    assert "measured with batch_size=1, this run uses 4" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()
