"""Per-layer latency lookup table: shapes, interpolation, persistence, and timing on onnxruntime."""
import json

import numpy as np
import pytest
import torch

import compressor as C
import models
import compressor.app._latency_table as lt
from compressor.app._latency_table import (
    LatencyTable,
    _Entry,
    build_latency_table,
    layer_shapes,
)
from benchmarks._timing import TimingConfig
from compressor.pruning._api import graph_for

FAST = TimingConfig(warmup=1, min_runs=3, min_seconds=0.0, max_seconds=0.2)


def _graph(name, size):
    model = models.create_model(name).eval()
    example = torch.randn(1, *size)
    return model, example, graph_for(model, example, C.PruneConfig(target_flops=1.0))


def test_interpolation_matches_a_hand_computation():
    entry = _Entry([4, 8], [2, 6], [[1.0, 3.0], [2.0, 6.0]])
    assert entry.lookup(4, 2) == 1.0 and entry.lookup(8, 6) == 6.0  # grid points are exact
    assert entry.lookup(6, 4) == pytest.approx((1.0 + 3.0 + 2.0 + 6.0) / 4)  # the cell's centre
    assert entry.lookup(8, 4) == pytest.approx(4.0)
    # below the smallest width: linear extrapolation of the first segment, never below 0
    assert entry.lookup(2, 2) == pytest.approx(0.5)
    assert entry.lookup(0, 0) == 0.0
    assert entry.lookup(16, 12) == 6.0  # above the full width: clamped


def test_noise_never_rewards_more_channels():
    entry = _Entry([4, 8, 12], [8], [[2.0], [1.5], [3.0]])  # 8 channels timed faster than 4: noise
    assert entry.lookup(8, 8) == 2.0 and entry.lookup(6, 8) == 2.0 and entry.lookup(12, 8) == 3.0
    widths = np.linspace(1, 12, 23)
    values = [entry.lookup(w, 8) for w in widths]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_layer_shapes_of_resnet20():
    model, example, graph = _graph("resnet20", (3, 32, 32))
    shapes = layer_shapes(model, example, graph)
    assert len(shapes) == len(graph.layers)
    by_module = {layer.module: s for layer, s in zip(graph.layers, shapes)}
    stem = by_module["conv1"]
    assert stem.input_shape == (3, 32, 32) and not stem.in_axis and stem.out_axis
    assert by_module["fc"].kind == "linear" and by_module["fc"].input_shape == (64,)
    # the identical blocks of a stage share one key (timed once), and a strided conv sees the larger input
    keys = {s.key for s in shapes}
    assert len(keys) == 9
    strided = [s for s in shapes if s.options.get("stride") == (2, 2) and s.options["kernel_size"] == (3, 3)]
    assert strided and all(s.input_shape[1] in (32, 16) for s in strided)
    # each rebuilt layer runs at any grid width and has the asked channels
    for s in {s.key: s for s in shapes}.values():
        ins, outs = LatencyTable._axes(s, (0.5, 1.0), 4)
        for i in ins:
            for o in outs:
                layer = s.build(*s.timed_widths(i, o))
                y = layer(torch.randn(2, *s.input_for(s.timed_widths(i, o)[0])))
                assert y.shape[1 if s.kind == "conv" else -1] == o


def test_depthwise_layers_lose_their_inputs_with_their_groups():
    model, example, graph = _graph("mobilenetv2", (3, 64, 64))
    shapes = layer_shapes(model, example, graph)
    depthwise = [s for s in shapes if s.options.get("group_mode") == "group"]
    assert depthwise
    s = depthwise[0]
    assert s.options["groups"] == s.in_size == s.out_size
    ins, outs = LatencyTable._axes(s, (0.25, 0.5, 1.0), 8)
    assert ins == [s.in_size] and all(o % 8 == 0 for o in outs)
    for o in outs:
        inp, out = s.timed_widths(s.in_size, o)
        assert inp == out == o
        layer = s.build(inp, out)
        assert layer.groups == o
        assert layer(torch.randn(1, *s.input_for(inp))).shape[1] == o


def test_grid_is_aligned_and_includes_the_full_width():
    assert lt._grid(64, (0.25, 0.5, 0.75, 1.0), 1) == [16, 32, 48, 64]
    assert lt._grid(100, (0.25, 0.5, 1.0), 16) == [32, 48, 96, 100]
    assert lt._grid(3, (0.25, 0.5), 8) == [3]


def test_save_load_round_trip_and_bad_files(tmp_path):
    table = LatencyTable("onnxruntime", "cpu", 4, 2, {"k": _Entry([1, 2], [3], [[0.1], [0.2]])})
    path = tmp_path / "t.json"
    table.save(path)
    again = LatencyTable.load(path)
    assert again.to_dict() == table.to_dict()
    path.write_text("{not json")
    with pytest.raises(ValueError, match="t.json is not valid JSON"):
        LatencyTable.load(path)
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="t.json is not valid JSON"):
        LatencyTable.load(path)
    path.write_text(json.dumps({**table.to_dict(), "schema_version": 99}))
    with pytest.raises(ValueError, match="t.json has schema_version 99; this version reads 1"):
        LatencyTable.load(path)
    bad = table.to_dict()
    bad["entries"]["k"]["ms"] = [[0.1]]  # 2 x 1 grid expected
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"entries\['k'\]"):
        LatencyTable.load(path)
    with pytest.raises(ValueError, match="measured with batch_size=4, this run uses 8"):
        LatencyTable("onnxruntime", "cpu", 8, 2).check_matches(table, "t.json")


def test_built_on_onnxruntime_and_reused_from_its_file(tmp_path, monkeypatch):
    model, example, graph = _graph("resnet20", (3, 32, 32))
    path = tmp_path / "table.json"
    table, shapes = build_latency_table(model, example, graph, runtime="onnxruntime", batch_size=2, threads=1,
                                        fractions=(0.5, 1.0), align=4, timing=FAST, path=path)
    assert set(table.entries) == {s.key for s in shapes}
    assert all(np.min(e.ms) > 0 for e in table.entries.values())
    full = table.predict_ms(shapes, graph)
    assert full > 0
    half = graph.kept_counts(np.isin(np.arange(graph.num_atoms), graph.removable[::2]))
    assert table.predict_ms(shapes, graph, half) < full
    # a second build reads the file and times nothing
    monkeypatch.setattr(lt, "time_model", lambda *a, **k: pytest.fail("timed a layer the file already has"))
    again, _ = build_latency_table(model, example, graph, runtime="onnxruntime", batch_size=2, threads=1, align=4,
                                   path=path)
    assert again.predict_ms(shapes, graph) == pytest.approx(full)
    # a table timed on a 4-channel grid is not silently reused for another alignment
    with pytest.raises(ValueError, match="measured with align=4, this run uses 16"):
        build_latency_table(model, example, graph, runtime="onnxruntime", batch_size=2, threads=1, align=16, path=path)
    with pytest.raises(ValueError, match="measured with threads=1, this run uses 2"):
        build_latency_table(model, example, graph, runtime="onnxruntime", batch_size=2, threads=2, align=4, path=path)
