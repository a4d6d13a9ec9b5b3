"""The alignment probe: its step finder on fake timers, and the real probe's bound and cache."""
from __future__ import annotations

import json
import math
import time

import pytest

import benchmarks._alignment as A


def staircase(step: int, per_unit: float = 0.01):
    """A runtime that pads every width up to a multiple of ``step`` (vector blocks)."""
    def measure(kind, widths):
        return {w: per_unit * A.work(kind, math.ceil(w / step) * step) for w in widths}
    return measure


def slow_path(step: int, penalty: float = 1.6, per_unit: float = 0.01):
    """Widths that are multiples of ``step`` run on a fast kernel, the rest ``penalty`` times slower."""
    def measure(kind, widths):
        return {w: per_unit * A.work(kind, w) * (1.0 if w % step == 0 else penalty) for w in widths}
    return measure


def linear(per_unit: float = 0.01, overhead: float = 0.05):
    """No step at all: latency grows with the work (plus a fixed per-call cost)."""
    def measure(kind, widths):
        return {w: overhead + per_unit * A.work(kind, w) for w in widths}
    return measure


@pytest.mark.parametrize("measure,expected", [
    (staircase(16), 16), (staircase(8), 8), (slow_path(8), 8), (slow_path(16), 16), (slow_path(4), 4),
    (linear(), 1),
])
def test_step_finder_picks_the_step(measure, expected):
    found = A.run_probe(measure)
    assert {k: p.alignment for k, p in found.items()} == {k: expected for k in A.KINDS}


def test_step_finder_per_kind_and_noise_tolerance():
    def measure(kind, widths):
        base = staircase(16)(kind, widths) if kind == "conv" else slow_path(4)(kind, widths) \
            if kind == "depthwise" else linear()(kind, widths)
        # +-1.5% jitter (half the tolerance) must not invent a step
        return {w: t * (1.015 if (w * 7919) % 3 == 0 else 0.985 if (w * 7919) % 3 == 1 else 1.0)
                for w, t in base.items()}
    found = A.run_probe(measure)
    assert found["conv"].alignment == 16
    assert found["depthwise"].alignment == 4
    assert found["linear"].alignment == 1


def test_probe_widths_cover_every_class_with_its_neighbours():
    widths = set(A.probe_widths())
    assert len(widths) <= 24  # the probe must stay short
    for a in (1, 2, 4, 8):
        members = [w for w in widths if w % a == 0 and (w // a) % 2 == 1]
        assert len(members) >= 4
        assert all(w - a in widths and w + a in widths for w in members)


def test_the_probe_block_keeps_its_frame_and_scales_work():
    assert A.work("depthwise", 160) / A.work("depthwise", 80) == pytest.approx(2.0)
    assert A.work("conv", 97) > A.work("conv", 96)
    import onnx

    for kind in A.KINDS:
        model = onnx.load_from_string(A._chain_onnx(kind, 100, 2))
        onnx.checker.check_model(model)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims[:2] == [2, A.FRAME]


def test_cached_probe_is_read_without_timing(tmp_path, monkeypatch):
    cache = tmp_path / "alignment.json"
    calls = []

    def fake(kind, widths):
        calls.append(kind)
        return staircase(8)(kind, widths)

    first = A.probe_alignment("onnxruntime", batch_size=1, threads=2, isa="test", measure=fake, cache=cache)
    assert not first.cached and first.alignment == {"conv": 8, "depthwise": 8, "linear": 8}
    assert sorted(calls) == sorted(A.KINDS)

    def spy(*args, **kwargs):
        raise AssertionError("the cache should have answered: nothing may be timed")

    monkeypatch.setattr(A, "runtime_measure", spy)
    again = A.probe_alignment("onnxruntime", batch_size=1, threads=2, isa="test", cache=cache)
    assert again.cached and again.alignment == first.alignment
    # another thread count or batch size is another target: it is not served from this entry
    with pytest.raises(AssertionError, match="nothing may be timed"):
        A.probe_alignment("onnxruntime", batch_size=1, threads=1, isa="test", cache=cache)
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 1 and "threads=2" in next(iter(entries)) and "onnxruntime=" in next(iter(entries))


def test_damaged_cache_is_measured_again(tmp_path):
    cache = tmp_path / "alignment.json"
    cache.write_text("{not json")
    result = A.probe_alignment("onnxruntime", isa="test", measure=staircase(16), cache=cache)
    assert not result.cached and result.alignment["conv"] == 16
    assert json.loads(cache.read_text())["schema_version"] == A.SCHEMA_VERSION


def test_unavailable_runtime_is_a_probe_error(tmp_path):
    with pytest.raises(A.ProbeError, match="tensorrt"):
        A.probe_alignment("tensorrt", device="cuda", cache=tmp_path / "a.json", measure=staircase(8))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_real_probe_is_short_and_cached(runtime, tmp_path, monkeypatch):
    monkeypatch.setattr(A, "_load_average", lambda: 0.0)  # the busy-machine refusal is tested below
    cache = tmp_path / "alignment.json"
    start = time.perf_counter()
    result = A.probe_alignment(runtime, batch_size=1, threads=2, isa="test", cache=cache)
    wall = time.perf_counter() - start
    # the bound is the probe's own budget (rounds are cut to fit), plus session set-up on a loaded machine
    assert wall < 4 * A.PROBE_BUDGET_S
    assert set(result.alignment) == set(A.KINDS)
    assert all(v in (1, 2, 4, 8, 16) for v in result.alignment.values())
    assert all(len(p.latency_ms) == len(A.probe_widths()) for p in result.kinds.values())
    monkeypatch.setattr(A, "runtime_measure", lambda *a, **k: pytest.fail("timed again despite the cache"))
    assert A.probe_alignment(runtime, batch_size=1, threads=2, isa="test", cache=cache).cached


def test_a_busy_machine_is_not_probed_and_nothing_is_cached(tmp_path, monkeypatch):
    """Timings under heavy load under-report the steps; the probe refuses and the ISA table applies."""
    import os

    from compressor import PruneConfig
    import compressor.app._alignment as _align
    from compressor.pruning import ISA_TABLE

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setattr(A, "_load_average", lambda: 1.5 * cores + 2)
    monkeypatch.setattr(A, "runtime_measure", lambda *a, **k: pytest.fail("timed on a busy machine"))
    cache = tmp_path / "alignment.json"
    with pytest.raises(A.ProbeError, match="busy .*load average"):
        A.probe_alignment("onnxruntime", batch_size=1, threads=2, isa="test", cache=cache)
    assert not cache.exists()
    monkeypatch.setenv("COMPRESSOR_CACHE_DIR", str(tmp_path))
    _align._RESOLVED.clear()
    try:
        config = _align.resolve_alignment(PruneConfig(ratio=0.3, runtime="onnxruntime", threads=2))
    finally:
        _align._RESOLVED.clear()
    entry = config.alignment["runtimes"]["onnxruntime"]
    assert entry["source"] == "isa-table" and "busy" in entry["note"]
    assert config.alignment["kinds"]["conv"] == ISA_TABLE[_align.cpu_isa()]
    monkeypatch.setattr(A, "_load_average", lambda: 0.5)
    assert A.machine_busy() is None

