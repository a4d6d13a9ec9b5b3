"""The public API: one ``compressor.prune`` for every target, and a curated, documented facade."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import compressor
import compressor.app._alignment as app_alignment
import compressor.app._prune as app_prune
from compressor.pruning import NOT_MEASURED, PruneResult, StrategyResult, prune_model
from models import create_model


def test_every_public_name_resolves_and_is_documented():
    assert len(compressor.__all__) == len(set(compressor.__all__))
    for name in compressor.__all__:
        value = getattr(compressor, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert (value.__doc__ or "").strip(), f"compressor.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'prune_channels_'"):
        compressor.prune_channels_  # noqa: B018  (engine internals live in compressor.pruning)


def test_importing_the_facade_or_the_foundation_imports_no_torch():
    code = ("import sys, compressor, compressor.common.errors, compressor.common.files, compressor.common.config; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def resnet20():
    return create_model("resnet20", width=16).eval(), torch.randn(1, 3, 32, 32)


def test_prune_takes_a_criterion_name_a_config_or_keywords(resnet20):
    model, x = resnet20
    by_name = compressor.prune(model, x, "l2", ratio=0.5, round_to=1)
    by_config = compressor.prune(model, x, compressor.PruneConfig(criterion="l2", ratio=0.5, round_to=1))
    assert isinstance(by_name, PruneResult) and isinstance(by_config, PruneResult)
    assert by_name.report.flops_ratio == by_config.report.flops_ratio < 1
    with pytest.raises(ValueError, match="not both"):
        compressor.prune(model, x, compressor.PruneConfig(ratio=0.5), ratio=0.3)


def test_prune_runs_a_strategy_from_its_config_or_its_name(resnet20):
    model, x = resnet20
    result = compressor.prune(model, x, ratio=0.5, round_to=1, strategy=compressor.OneShotConfig())
    assert isinstance(result, StrategyResult) and result.flops_ratio < 1
    named = compressor.prune(model, x, ratio=0.5, round_to=1, strategy="oneshot")
    assert named.macs_after == result.macs_after
    with pytest.raises(ValueError, match="unknown option"):
        compressor.prune(model, x, ratio=0.5, strategy="oneshot", strategy_options={"epochs": 3})


def test_prune_to_a_latency_budget_measures_on_the_runtime(resnet20, monkeypatch):
    model, x = resnet20
    calls = []

    def fake(model, input_size, config, budget_ms, **kwargs):
        calls.append((input_size, config.criterion, budget_ms, kwargs))
        return "measured"

    monkeypatch.setattr(app_prune, "prune_to_latency", fake)
    assert compressor.prune(model, x, "fpgm", latency_budget_ms=2.5, latency_options={"method": "search"}) == "measured"
    assert calls == [((3, 32, 32), "fpgm", 2.5, {"method": "search", "runtime": "onnxruntime", "data": None})]
    with pytest.raises(ValueError, match="cannot be combined"):
        compressor.prune(model, x, latency_budget_ms=2.5, strategy="oneshot")


def test_prune_probes_the_target_and_the_engine_alone_takes_the_isa_table(resnet20, monkeypatch):
    """round_to="auto": compressor.prune measures the runtime; prune_model measures nothing."""
    model, x = resnet20
    probed = []

    def measure(runtime, config, refresh):
        probed.append(runtime)
        return {"conv": 8, "depthwise": 8, "linear": 1}, "probe", ""

    monkeypatch.setattr(app_alignment, "_runtime_alignment", measure)
    result = compressor.prune(model, x, target_flops=0.6, runtime="onnxruntime")
    entry = result.report.config["alignment"]["runtimes"]["onnxruntime"]
    assert probed == ["onnxruntime"] and entry["source"] == "probe"

    engine = prune_model(model, x, compressor.PruneConfig(target_flops=0.6, runtime="onnxruntime"))
    entry = engine.report.config["alignment"]["runtimes"]["onnxruntime"]
    assert probed == ["onnxruntime"] and entry["source"] == "isa-table" and entry["note"] == NOT_MEASURED
