"""Models with several outputs (a detector's raw heads) export, bundle, run and benchmark on every runtime.

Two small conv nets stand in for the two shapes detectors take: a YOLO-like one returning a tuple
of three feature maps of different sizes, and a RetinaNet-like one returning a dict of per-anchor
class logits and box deltas. Each is exported to an ONNX + OpenVINO bundle; every runtime's
``run_all`` must equal PyTorch on every output, the manifest must record every output, a tampered
second output must fail parity naming it, and ``bench`` must time the bundle.
"""
from __future__ import annotations

import collections
import contextlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import runtimes._tensorrt as trt_module
from benchmarks._command import main as bench_main
from compressor.app._bundle import export_bundle
from compressor.deploy import ExportConfig, export_onnx, flatten_outputs
from runtimes import (BundleConfig, BundleError, ParityError, SessionConfig, compare_outputs, get_runtime, load_bundle,
                      write_bundle)
from test_runtime_tensorrt_standin import fake_tensorrt

SIZE = (3, 16, 16)
RUNTIMES = ("torch", "onnxruntime", "openvino")


class ThreeLevels(nn.Module):
    """YOLO-like: a stem, two stride-2 stages and a 1x1 head per level -> (B, 6, 16|8|4, 16|8|4)."""

    names = ["output_0", "output_1", "output_2"]

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU()) for _ in range(2)])
        self.heads = nn.ModuleList([nn.Conv2d(8, 6, 1) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p3 = self.stem(x)
        p4 = self.down[0](p3)
        p5 = self.down[1](p4)
        return tuple(head(p) for head, p in zip(self.heads, (p3, p4, p5)))


class AnchorDict(nn.Module):
    """RetinaNet-like: {"cls_logits": (B, A, 5), "bbox_regression": (B, A, 4)} with A = 8 * 8 * 2 anchors."""

    names = ["cls_logits", "bbox_regression"]

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.cls = nn.Conv2d(8, 2 * 5, 3, padding=1)
        self.box = nn.Conv2d(8, 2 * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.body(x)
        n = x.shape[0]
        return {"cls_logits": self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, 5),
                "bbox_regression": self.box(f).permute(0, 2, 3, 1).reshape(n, -1, 4)}


MODELS = {"tuple": ThreeLevels, "dict": AnchorDict}


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[kind]()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so that folding is exercised
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _reference(model: nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        return [t.numpy() for _, t in flatten_outputs(model(torch.from_numpy(x)))]


def _batch(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SIZE)).astype(np.float32)


def _close(got: list[np.ndarray], expected: list[np.ndarray], rtol: float = 1e-4) -> None:
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape and a.dtype == np.float32, (i, a.shape, b.shape, a.dtype)
        assert np.abs(a - b).max() <= rtol * np.abs(b).max(), f"output {i} differs"


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multi_output")
    config = BundleConfig(targets=("onnx", "openvino"), batch_sizes=(1, 3), threads=1)
    for kind in MODELS:
        export_bundle(_model(kind), root / kind, SIZE, config, ExportConfig(exporter="torchscript"), source=kind)
    return {kind: root / kind for kind in MODELS}


# ----------------------------------------------------------------------------- naming and export


def test_flatten_outputs_names_like_the_export():
    t = torch.zeros(2, 3)
    Pair = collections.namedtuple("Pair", "boxes scores")
    assert [n for n, _ in flatten_outputs(t)] == ["output"]
    assert [n for n, _ in flatten_outputs((t,))] == ["output"]  # one tensor is "output" however it is wrapped
    assert [n for n, _ in flatten_outputs((t, [t, None, t]))] == ["output_0", "output_1_0", "output_1_2"]
    assert [n for n, _ in flatten_outputs({"b": t, "a": {"x": t}})] == ["b", "a_x"]  # insertion order
    assert [n for n, _ in flatten_outputs(Pair(t, t), prefix="y")] == ["boxes", "scores"]
    with pytest.raises(TypeError, match="key 3"):
        flatten_outputs({3: t})
    with pytest.raises(TypeError, match="returned a int"):
        flatten_outputs((t, 3))
    with pytest.raises(ValueError, match="holding no tensor"):
        flatten_outputs((None, []))
    with pytest.raises(ValueError, match="repeated names"):
        flatten_outputs({"a_0": t, "a": [t]})


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_export_names_every_output_with_a_dynamic_batch(tmp_path, kind, exporter):
    model = _model(kind)
    info = export_onnx(model, torch.from_numpy(_batch(1)), tmp_path / "m.onnx", ExportConfig(exporter=exporter))
    assert info.output_names == MODELS[kind].names
    assert len(info.output_shapes) == len(info.output_names) and info.output_shape == info.output_shapes[0]
    assert all(shape[0] == "batch" for shape in info.output_shapes), info.output_shapes
    session = get_runtime("onnxruntime").load(tmp_path / "m.onnx", SessionConfig(threads=1))
    x = _batch(3)
    assert session.output_names == MODELS[kind].names
    _close(session.run_all(x), _reference(model, x))


def test_export_takes_explicit_output_names(tmp_path):
    names = ("p3", "p4", "p5")
    info = export_onnx(_model("tuple"), torch.from_numpy(_batch(1)), tmp_path / "m.onnx",
                       ExportConfig(exporter="torchscript", output_names=names))
    assert info.output_names == list(names)
    with pytest.raises(ValueError, match="distinct"):
        ExportConfig(output_names=("a", "a"))


# ----------------------------------------------------------------------------- sessions


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("kind", list(MODELS))
def test_every_runtime_returns_every_output(bundles, kind, runtime):
    model = _model(kind)
    bundle = load_bundle(bundles[kind])
    rt = get_runtime(runtime)
    if rt.is_available():
        pytest.skip(f"{runtime}: {rt.is_available()}")
    artifact = model if runtime == "torch" else bundle.artifact("onnx" if runtime == "onnxruntime" else runtime)
    with rt.load(artifact, SessionConfig(threads=1)) as session:
        for n in (1, 4):
            x = _batch(n, seed=n)
            expected = _reference(model, x)
            outputs = session.run_all(x)
            _close(outputs, expected)
            np.testing.assert_array_equal(session.run(x), outputs[0])  # run() is still the first output
        assert session.output_names == MODELS[kind].names == [o["name"] for o in bundle.manifest["outputs"]]


def test_torch_learns_the_output_names_on_its_first_run():
    with get_runtime("torch").load(_model("dict"), SessionConfig(threads=1)) as session:
        assert session.output_names is None
        session.run(_batch(1))
        assert session.output_names == AnchorDict.names


def test_a_missing_output_fails_parity_naming_it():
    ref = [np.ones((2, 3), np.float32), np.ones((2, 4), np.float32)]
    with pytest.raises(ParityError, match=r"output 'b \(openvino returned 1 outputs, PyTorch 2\)'"):
        compare_outputs(ref, ref[:1], ["a", "b"], runtime="openvino", device="cpu", precision="fp32")
    results = compare_outputs(ref, [ref[0], ref[1] * 2], ["a", "b"], runtime="openvino", device="cpu",
                              precision="fp32")
    assert [(r.output, r.passed) for r in results] == [("a", True), ("b", False)]


def test_a_single_output_model_gives_a_list_of_one(exported):
    case = exported["tiny"]
    x = case.batch(2)
    with get_runtime("onnxruntime").load(case.onnx, SessionConfig(threads=1)) as session:
        outputs = session.run_all(x)
        assert session.output_names == ["output"] and len(outputs) == 1
        np.testing.assert_array_equal(outputs[0], session.run(x))


def test_the_tensorrt_stand_in_returns_every_output(monkeypatch, tmp_path):
    """TensorRT 10's tensor API, every output bound and copied back, in the engine's order, dtypes kept."""
    outputs = {
        "p3": ((-1, 3, 16, 16), "float32", lambda x: x * 2),
        "p4": ((-1, 3, 8, 8), "float32", lambda x: x[:, :, ::2, ::2] + 1),
        "labels": ((-1, 5), "int32", lambda x: np.tile(np.arange(5, dtype=np.int32), (len(x), 1))),
    }
    trt = fake_tensorrt(10, outputs=outputs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_module, "cuda_device_reason", lambda: None)
    for name, value in {"get_device_name": lambda *a: "Stand-in GPU", "init": lambda: None,
                        "current_device": lambda: 0, "stream": lambda s: contextlib.nullcontext(),
                        "Stream": lambda device: type("Stream", (), {"cuda_stream": 0,
                                                                     "synchronize": lambda self: None})()}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"serialized engine")
    session = get_runtime("tensorrt").load(engine, SessionConfig(device="cuda"))
    session._device = torch.device("cpu")  # the stand-in's "device memory" is host memory
    assert session.output_names == ["p3", "p4", "labels"]
    x = _batch(2)
    got = session.run_all(x)
    assert trt.calls["executed"] == [sorted(["input", *outputs])]  # every output had a buffer
    np.testing.assert_array_equal(got[0], x * 2)
    np.testing.assert_array_equal(got[1], x[:, :, ::2, ::2] + 1)
    assert got[2].dtype == np.int32 and got[2].tolist() == [list(range(5))] * 2
    np.testing.assert_array_equal(session.run(x), x * 2)
    session.close()


# ----------------------------------------------------------------------------- bundles


@pytest.mark.parametrize("kind", list(MODELS))
def test_the_manifest_records_and_checks_every_output(bundles, kind):
    manifest = load_bundle(bundles[kind]).manifest
    shapes = {"tuple": [["batch", 6, 16, 16], ["batch", 6, 8, 8], ["batch", 6, 4, 4]],
              "dict": [["batch", 128, 5], ["batch", 128, 4]]}[kind]
    assert manifest["outputs"] == [{"name": n, "shape": s} for n, s in zip(MODELS[kind].names, shapes)]
    assert manifest["output_shape"] == shapes[0] and manifest["num_classes"] is None
    runs = {(r["runtime"], r["batch_size"], r["output"]) for r in manifest["parity"]}
    assert runs == {(rt, bs, n) for rt in ("onnxruntime", "openvino") for bs in (1, 3) for n in MODELS[kind].names}
    assert manifest["parity_passed"] and all(r["passed"] for r in manifest["parity"])


def _edit(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, message", [
    (lambda m: m["outputs"].pop(), r"declares outputs \['output_0', 'output_1'\] but model.onnx has"),
    (lambda m: m["outputs"][1].update(name="p4"), "declares outputs"),
    (lambda m: m["outputs"][2].update(shape=["batch", 6, 5, 5]), r"declares output 'output_2' of shape"),
    (lambda m: m.update(outputs="all"), "outputs must be a list"),
    (lambda m: m.update(parity=[r for r in m["parity"] if r["output"] != "output_1" or r["runtime"] != "openvino"]),
     r"no openvino parity run for output\(s\) \['output_1'\]"),
])
def test_a_manifest_disagreeing_with_the_outputs_is_refused(bundles, tmp_path, change, message):
    path = Path(shutil.copytree(bundles["tuple"], tmp_path / "b"))
    _edit(path, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_a_tampered_second_output_fails_parity_naming_it(tmp_path):
    """A weight that feeds only output_1 is changed in the ONNX file: parity fails on output_1 alone."""
    model = _model("tuple")
    onnx_file = tmp_path / "model.onnx"
    export_onnx(model, torch.from_numpy(_batch(1)), onnx_file, ExportConfig(exporter="torchscript"))
    proto = onnx.load(str(onnx_file))
    head = next(n for n in proto.graph.node if n.output[0] == "output_1")
    weight = next(i for i in proto.graph.initializer if i.name == head.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    onnx.save(proto, str(onnx_file))

    config = BundleConfig(targets=("onnx", "openvino"), batch_sizes=(2,), threads=1)
    with pytest.raises(ParityError) as info:
        write_bundle(onnx_file, tmp_path / "bundle", lambda x: _reference(model, x), SIZE, config)
    failed = [r for r in info.value.results if not r.passed]
    assert {(r.runtime, r.output) for r in failed} == {("onnxruntime", "output_1"), ("openvino", "output_1")}
    assert "output 'output_1' on onnxruntime/cpu/fp32 batch 2: max abs" in str(info.value)
    assert "output_0" not in str(info.value) and "output_2" not in str(info.value)
    with pytest.raises(BundleError, match="failed its parity check"):
        load_bundle(tmp_path / "bundle")
    manifest = load_bundle(tmp_path / "bundle", allow_failed_parity=True).manifest
    assert [r["output"] for r in manifest["parity"] if not r["passed"]] == ["output_1", "output_1"]


def test_a_reference_with_another_number_of_outputs_is_refused(tmp_path):
    model = _model("tuple")
    onnx_file = tmp_path / "model.onnx"
    export_onnx(model, torch.from_numpy(_batch(1)), onnx_file, ExportConfig(exporter="torchscript"))
    with pytest.raises(ValueError, match="the reference returns 2 outputs but .* has 3"):
        write_bundle(onnx_file, tmp_path / "bundle", lambda x: _reference(model, x)[:2], SIZE,
                     BundleConfig(targets=("onnx",), batch_sizes=(1,), threads=1))
    assert not (tmp_path / "bundle").exists()


# ----------------------------------------------------------------------------- evaluation and benchmark


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_open_predictor_gives_every_output(bundles, runtime):
    from compressor.app._evaluate import open_predictor

    model = _model("dict")
    x = _batch(2)
    with open_predictor(bundles["dict"], runtime=runtime, threads=1, outputs="all") as (predict, name):
        _close(predict(x), _reference(model, x))
    with open_predictor(bundles["dict"], runtime=runtime, threads=1) as (predict, _):
        _close([predict(x)], _reference(model, x)[:1])  # the default is unchanged: the first output
    with open_predictor(model, outputs="all") as (predict, name):
        assert name == "torch"
        _close(predict(x), _reference(model, x))
    with pytest.raises(ValueError, match="outputs must be one of 'first', 'all'"):
        with open_predictor(model, outputs="some"):
            pass


def test_bench_times_a_multi_output_bundle(bundles, tmp_path):
    out = tmp_path / "report"
    code = bench_main([
        str(bundles["tuple"]), "--runtimes", "onnxruntime,openvino", "--batch-sizes", "2", "--threads", "1",
        "--warmup", "1", "--min-runs", "3", "--max-runs", "3", "--min-seconds", "0", "--max-seconds", "5",
        "--memory-runs", "1", "--quiet", "--output", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["latency"]
    assert {(r["runtime"], r["status"]) for r in rows} == {("onnxruntime", "ok"), ("openvino", "ok")}
    assert all(r["stats"]["latency_ms_median"] > 0 for r in rows)
    assert {(r["runtime"], r["status"]) for r in results["memory"]} == {("onnxruntime", "ok"), ("openvino", "ok")}
