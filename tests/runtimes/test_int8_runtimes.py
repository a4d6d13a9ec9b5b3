"""INT8 builds on each runtime: precision and calibration hash recorded in the artifact, wrong-precision
loads refused, layers kept in FP32, check_calibration's errors, INT8 parity judging and the manifest
check of INT8 runs, and the TensorRT explicit-quantization build (stand-in, and a real GPU when present).
"""
from __future__ import annotations

import enum
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtimes import (BundleConfig, BundleError, Calibration, ParityError, SessionConfig, compare, get_runtime,
                      load_bundle, quantizable_layers, write_bundle)
from runtimes._onnx import PRECISION_KEY
from runtimes._parity import INT8_MIN_TOP1_AGREEMENT
from runtimes._quantize import CALIBRATION_KEY, check_calibration
from test_runtime_tensorrt_standin import install_fake  # noqa: F401 (a fixture: the stand-in tensorrt module)

INT8_RUNTIMES = ("onnxruntime", "openvino")


def _calibration(input_size: tuple[int, ...], n: int = 32, seed: int = 0, exclude: tuple[str, ...] = ()) -> Calibration:
    samples = np.random.default_rng(seed).standard_normal((n, *input_size)).astype(np.float32)
    return Calibration(samples, exclude=exclude, source="test:normal")


@pytest.fixture(scope="module")
def tiny(exported):
    return exported["tiny"]


@pytest.fixture(scope="module")
def calibration(tiny) -> Calibration:
    return _calibration(tiny.input_size)


@pytest.fixture(scope="module")
def int8_artifacts(tiny, calibration, tmp_path_factory) -> dict[str, Path]:
    """``{runtime: INT8 artifact of the tiny model}``, built once."""
    return {name: get_runtime(name).build(tiny.onnx, tmp_path_factory.mktemp(f"int8-{name}"), precision="int8",
                                          calibration=calibration)
            for name in INT8_RUNTIMES}


def _openvino_rt_info(xml: Path, key: str) -> str | None:
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    path = ["runtimes", key]
    return model.get_rt_info(path).astype(str) if model.has_rt_info(path) else None


# ------------------------------------------------------------------------------- onnxruntime, OpenVINO


def test_onnxruntime_int8_artifact_is_a_qdq_model_recording_precision_and_calibration(int8_artifacts, calibration):
    artifact = int8_artifacts["onnxruntime"]
    assert artifact.name == "model.int8.onnx"
    model = onnx.load(str(artifact))
    props = {p.key: p.value for p in model.metadata_props}
    assert props[PRECISION_KEY] == "int8"
    assert props[CALIBRATION_KEY] == calibration.sha256() and len(calibration.sha256()) == 64
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3


def test_openvino_int8_ir_records_precision_and_calibration(int8_artifacts, calibration):
    import openvino as ov

    xml = int8_artifacts["openvino"]
    assert xml.name == "model.xml" and xml.with_suffix(".bin").is_file()
    assert _openvino_rt_info(xml, "precision") == "int8"
    assert _openvino_rt_info(xml, "calibration_sha256") == calibration.sha256()
    ops = [op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()]
    assert "FakeQuantize" in ops  # NNCF's quantizers on the activations


def test_calibration_hash_follows_the_samples_only(tiny):
    a, b = _calibration(tiny.input_size), _calibration(tiny.input_size, exclude=("/0/Conv",))
    assert a.sha256() == b.sha256()  # exclusions are recorded separately (fp32_layers)
    assert a.sha256() != _calibration(tiny.input_size, seed=1).sha256()
    assert a.sha256() != Calibration(a.samples[:16]).sha256()
    assert b.to_dict()["fp32_layers"] == ["/0/Conv"] and b.to_dict()["samples"] == 32
    assert b.to_dict()["sample_shape"] == list(tiny.input_size)


@pytest.mark.parametrize("name", INT8_RUNTIMES)
def test_int8_sessions_give_the_same_answers_and_refuse_the_wrong_precision(name, tiny, int8_artifacts, tmp_path):
    rt = get_runtime(name)
    artifact = int8_artifacts[name]
    x = tiny.batch(64, seed=3)
    with rt.load(artifact, SessionConfig(threads=2, precision="int8")) as session:
        assert session.settings["precision"] == "int8"
        result = compare(tiny.reference(x), session.run(x), runtime=name, device="cpu", precision="int8")
    assert result.passed and result.mean_cosine_similarity >= 0.99, result.describe()
    with pytest.raises(ValueError, match=r"was built for int8; load it with SessionConfig\(precision='int8'\)"):
        rt.load(artifact, SessionConfig(threads=2, precision="fp32"))
    fp32 = rt.build(tiny.onnx, tmp_path, precision="fp32")
    with pytest.raises(ValueError, match=r"was built for fp32; load it with SessionConfig\(precision='fp32'\)"):
        rt.load(fp32, SessionConfig(threads=2, precision="int8"))


@pytest.mark.parametrize("name", [*INT8_RUNTIMES, "tensorrt"])
def test_calibration_goes_with_int8_and_only_int8(name, tiny, calibration, tmp_path):
    rt = get_runtime(name)  # checked before the SDK: TensorRT need not be installed
    with pytest.raises(ValueError, match=r"an int8 build needs calibration data \(calibration=runtimes.Calibration"):
        rt.build(tiny.onnx, tmp_path / "a", precision="int8")
    for precision in ("fp32", "fp16"):
        with pytest.raises(ValueError, match=f"calibration data is for int8 builds, not {precision}"):
            rt.build(tiny.onnx, tmp_path / "b", precision=precision, calibration=calibration)
    assert list(tmp_path.iterdir()) == []


def test_torch_runtime_has_no_int8(tiny, calibration, tmp_path):
    rt = get_runtime("torch")
    message = r"torch cannot use precision 'int8'; it supports \['fp32', 'fp16'\]"
    with pytest.raises(ValueError, match=message):
        rt.build(tiny.model, tmp_path, precision="int8", calibration=calibration)
    with pytest.raises(ValueError, match=message):
        rt.load(tiny.model, SessionConfig(precision="int8"))


# ---------------------------------------------------------------------------------- layers kept in FP32


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def test_excluded_layer_keeps_fp32_weights_in_the_onnxruntime_model(tiny, tmp_path):
    layers = quantizable_layers(tiny.onnx)
    assert len(layers) == 3 and [layer.split("/")[-1] for layer in layers] == ["Conv", "Conv", "Gemm"]
    kept, quantized = layers[0], layers[1]
    artifact = get_runtime("onnxruntime").build(tiny.onnx, tmp_path, precision="int8",
                                                calibration=_calibration(tiny.input_size, exclude=(kept,)))
    model = onnx.load(str(artifact))
    producers = _producers(model)
    initializers = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    weight = nodes[kept].input[1]
    assert weight not in producers and initializers[weight].data_type == onnx.TensorProto.FLOAT
    dequantize = producers[nodes[quantized].input[1]]
    assert dequantize.op_type == "DequantizeLinear"
    assert initializers[dequantize.input[0]].data_type == onnx.TensorProto.INT8  # per-channel int8 weights
    assert {p.key: p.value for p in model.metadata_props}[PRECISION_KEY] == "int8"


def _int8_weight_feeds(model) -> dict[str, bool]:
    """``{convolution/matmul name: whether its weight comes from an int8 constant}`` of an OpenVINO model."""
    def from_int8(node, depth=0) -> bool:
        if node.get_type_name() == "Constant":
            return node.get_output_element_type(0).get_type_name() == "i8"
        if node.get_type_name() == "Parameter" or depth > 6:
            return False
        return any(from_int8(i.get_source_output().get_node(), depth + 1) for i in node.inputs())

    return {op.get_friendly_name(): from_int8(op.input(1).get_source_output().get_node())
            for op in model.get_ops() if op.get_type_name() in ("Convolution", "MatMul")}


def test_excluded_layer_keeps_fp32_weights_in_the_openvino_ir(tiny, int8_artifacts, tmp_path):
    import openvino as ov

    kept = quantizable_layers(tiny.onnx)[0]
    xml = get_runtime("openvino").build(tiny.onnx, tmp_path, precision="int8",
                                        calibration=_calibration(tiny.input_size, exclude=(kept,)))
    full = _int8_weight_feeds(ov.Core().read_model(str(int8_artifacts["openvino"])))
    partial = _int8_weight_feeds(ov.Core().read_model(str(xml)))
    assert all(full.values()) and len(full) == 3, full
    fp32 = [name for name, int8 in partial.items() if not int8]
    assert len(fp32) == 1 and fp32[0].startswith(kept), partial  # OpenVINO names it <onnx node>/WithoutBiases
    assert _openvino_rt_info(xml, "precision") == "int8"


def test_check_calibration_names_the_shape_and_the_unknown_layer(tiny, tmp_path):
    check_calibration(tiny.onnx, _calibration(tiny.input_size))  # fits
    with pytest.raises(ValueError, match=r"calibration samples have shape \(4, 3, 8, 8\) but .*tiny.onnx takes input "
                                         r"'input' of shape \(batch, 3, 16, 16\)"):
        check_calibration(tiny.onnx, Calibration(np.zeros((4, 3, 8, 8), np.float32)))
    with pytest.raises(ValueError, match=r"calibration samples have shape \(4, 3, 16\)"):
        check_calibration(tiny.onnx, Calibration(np.zeros((4, 3, 16), np.float32)))
    with pytest.raises(ValueError, match=r"layers to keep in FP32 \['/nope/Conv'\] are not quantizable nodes of "
                                         r".*tiny.onnx; it has 3, e.g. \['/0/Conv'"):
        check_calibration(tiny.onnx, _calibration(tiny.input_size, exclude=("/0/Conv", "/nope/Conv")))
    for name in INT8_RUNTIMES:  # the builds check first and write nothing
        with pytest.raises(ValueError, match=r"\(4, 3, 8, 8\)"):
            get_runtime(name).build(tiny.onnx, tmp_path / name, precision="int8",
                                    calibration=Calibration(np.zeros((4, 3, 8, 8), np.float32)))
        with pytest.raises(ValueError, match="/nope/Conv"):
            get_runtime(name).build(tiny.onnx, tmp_path / name, precision="int8",
                                    calibration=_calibration(tiny.input_size, exclude=("/nope/Conv",)))
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("samples,message", [
    (np.zeros((4, 3, 16, 16), np.int64), r"must be a float array \(N, \*input_shape\), got an array of shape"),
    (np.zeros(3, np.float32), "must be a float array"),
    ([[0.0]], "got list"),
    (np.zeros((0, 3, 16, 16), np.float32), "the calibration set is empty"),
])
def test_calibration_rejects_bad_samples(samples, message):
    with pytest.raises(ValueError, match=message):
        Calibration(samples)


def test_calibration_rejects_an_unknown_method():
    with pytest.raises(ValueError, match=r"calibration method must be one of \['entropy', 'minmax', 'percentile'\], "
                                         r"got 'kl'"):
        Calibration(np.zeros((2, 3), np.float32), method="kl")


# ------------------------------------------------------------------------------------------- parity


def _logits(n: int = 100, seed: int = 0) -> np.ndarray:
    """Logits whose class 0 wins over class 1 by a hair: swapping the two flips the argmax and leaves the
    cosine near 1."""
    ref = np.random.default_rng(seed).standard_normal((n, 10))
    ref[:, 0], ref[:, 1] = 5.0, 4.99
    return ref.astype(np.float32)


def _swap_top2(ref: np.ndarray, rows: int) -> np.ndarray:
    out = ref.copy()
    out[:rows, [0, 1]] = out[:rows, [1, 0]]
    return out


def test_int8_parity_judges_answers_not_numbers():
    ref = _logits()
    scaled = ref * 1.5  # 50% relative error, same direction, same argmax
    fp32 = compare(ref, scaled, runtime="r", device="cpu", precision="fp32")
    int8 = compare(ref, scaled, runtime="r", device="cpu", precision="int8")
    assert not fp32.passed and int8.passed
    assert int8.max_rel_error == pytest.approx(0.5, rel=1e-4)  # recorded...
    assert int8.tolerance_rel is None  # ...not judged
    assert int8.tolerance_cosine == 0.99 and int8.tolerance_top1 == INT8_MIN_TOP1_AGREEMENT == 0.98
    assert int8.mean_cosine_similarity == pytest.approx(1.0) and int8.top1_agreement == 1.0
    assert "mean cosine 1.000000" in int8.describe() and "(floor 0.98): ok" in int8.describe()


def test_int8_parity_fails_below_the_top1_agreement_floor():
    ref = _logits()
    one, three = (compare(ref, _swap_top2(ref, rows), runtime="r", device="cpu", precision="int8")
                  for rows in (1, 3))
    assert one.top1_agreement == pytest.approx(0.99) and one.passed
    assert three.top1_agreement == pytest.approx(0.97) and not three.passed
    assert three.mean_cosine_similarity > 0.999  # the cosine alone would pass
    assert "top-1 agreement 97.0% (floor 0.98): FAILED" in three.describe()
    strict = compare(ref, _swap_top2(ref, 1), runtime="r", device="cpu", precision="int8",
                     floors={"top1_agreement": 0.995})
    assert not strict.passed and strict.tolerance_top1 == 0.995


def test_int8_parity_judges_the_mean_cosine_and_top1_only_for_logits():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 4, 5)).astype(np.float32)
    out = ref.copy()
    out[:1] = -out[:1]  # one sample inverted: worst cosine -1, mean 0.98
    result = compare(ref, out, runtime="r", device="cpu", precision="int8")
    assert result.cosine_similarity == pytest.approx(-1.0) and result.mean_cosine_similarity == pytest.approx(0.98)
    assert result.tolerance_top1 is None and not result.passed  # 0.98 < 0.99
    assert compare(ref, out, runtime="r", device="cpu", precision="int8", floors={"cosine": 0.97}).passed
    noisy = ref.copy()
    noisy[:, 0, 0] += 4.0  # the flattened argmax moves: a 3-D output is not a classifier's, so not judged
    moved = compare(ref, noisy, runtime="r", device="cpu", precision="int8", floors={"cosine": 0.5})
    assert moved.top1_agreement < 0.5 and moved.passed


@pytest.fixture
def int8_bundle(tiny, int8_artifacts, tmp_path) -> Path:
    held_out = tiny.batch(48, seed=7)
    write_bundle(tiny.onnx, tmp_path / "b", tiny.reference, tiny.input_size,
                 BundleConfig(targets=("onnx",), precision="int8", threads=2),
                 prebuilt={"onnx": (int8_artifacts["onnxruntime"], "int8")}, held_out=held_out,
                 floors={"cosine": 0.99, "top1_agreement": 0.9})
    return tmp_path / "b"


def test_int8_bundle_checks_parity_on_the_held_out_samples(int8_bundle):
    bundle = load_bundle(int8_bundle)
    manifest = bundle.manifest
    assert manifest["artifact_precision"] == {"onnx": "int8"} and manifest["artifacts"] == {"onnx": "model.int8.onnx"}
    assert manifest["int8"]["floors"] == {"cosine": 0.99, "top1_agreement": 0.9}
    assert manifest["int8"]["held_out_samples"] == 48
    (run,) = manifest["parity"]
    assert run["precision"] == "int8" and run["batch_size"] == 48 and run["passed"]
    assert run["tolerance_top1"] == 0.9 and run["tolerance_rel"] is None and run["mean_cosine_similarity"] >= 0.99
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))  # manifest.json is not in its own files table


def test_a_manifest_claiming_an_int8_run_passed_below_its_floor_is_refused(int8_bundle):
    _edit_manifest(int8_bundle, lambda m: m["parity"][0].update(top1_agreement=0.5))
    with pytest.raises(BundleError, match=r"parity\[0\] says passed=True but its errors .*top-1 agreement 0.5\) "
                                          r"say fail"):
        load_bundle(int8_bundle)


def test_a_manifest_whose_int8_floors_were_raised_is_refused(int8_bundle):
    _edit_manifest(int8_bundle, lambda m: m["int8"]["floors"].update(top1_agreement=0.999))
    with pytest.raises(BundleError, match=r"parity\[0\] has tolerances \(None, 0.99\) \(top-1 floor 0.9\) for "
                                          r"precision 'int8'; the parity check uses \(None, 0.99\) "
                                          r"\(top-1 floor 0.999\)"):
        load_bundle(int8_bundle)


def test_int8_bundle_needs_held_out_samples_and_a_prebuilt_artifact(tiny, int8_artifacts, tmp_path):
    config = BundleConfig(targets=("onnx",), precision="int8", threads=2)
    with pytest.raises(ValueError, match="INT8 artifacts are checked on held-out samples; pass held_out"):
        write_bundle(tiny.onnx, tmp_path / "a", tiny.reference, tiny.input_size, config,
                     prebuilt={"onnx": (int8_artifacts["onnxruntime"], "int8")})
    with pytest.raises(ValueError, match=r"give prebuilt artifacts for \['onnx'\]"):
        write_bundle(tiny.onnx, tmp_path / "b", tiny.reference, tiny.input_size, config, held_out=tiny.batch(4))
    assert list(tmp_path.iterdir()) == []


def test_an_int8_bundle_below_its_floor_is_written_failed(tiny, int8_artifacts, tmp_path):
    def wrong(x):  # another model's answers
        return -tiny.reference(x)

    with pytest.raises(ParityError, match=r"onnxruntime/cpu/int8 on 32 held-out samples: .*mean cosine -"):
        write_bundle(tiny.onnx, tmp_path / "b", wrong, tiny.input_size,
                     BundleConfig(targets=("onnx",), precision="int8", threads=2),
                     prebuilt={"onnx": (int8_artifacts["onnxruntime"], "int8")}, held_out=tiny.batch(32))
    with pytest.raises(BundleError, match="failed its parity check"):
        load_bundle(tmp_path / "b")


# ------------------------------------------------------------------------------------- TensorRT


@pytest.fixture
def trt_int8(install_fake, monkeypatch):  # noqa: F811 (the imported fixture)
    """``install(major)``: the stand-in tensorrt, with an INT8 builder flag (to see that none is set) and
    a parser that records the ONNX it was given."""
    def install(major: int):
        trt = install_fake(major)
        trt.BuilderFlag = enum.Enum("BuilderFlag", ["TF32", "INT8"] + (["FP16"] if major == 10 else []))
        parser = trt.OnnxParser

        class RecordingParser(parser):
            def parse_from_file(self, path):
                model = onnx.load(path)
                trt.calls["parsed_nodes"] = [n.op_type for n in model.graph.node]
                trt.calls["parsed_initializers"] = {t.name: t for t in model.graph.initializer}
                trt.calls["parsed_graph"] = model.graph
                return super().parse_from_file(path)

        trt.OnnxParser = RecordingParser
        return trt
    return install


@pytest.mark.parametrize("major", [10, 11])
def test_tensorrt_int8_is_an_explicitly_quantized_strongly_typed_network(major, trt_int8, tiny, calibration,
                                                                          tmp_path):
    trt = trt_int8(major)
    rt = get_runtime("tensorrt")
    engine = rt.build(tiny.onnx, tmp_path, precision="int8", calibration=calibration, min_batch=1, opt_batch=4,
                      max_batch=8)
    calls = trt.calls
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]  # QDQ file staged only
    assert calls["network_flags"] == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    flags = calls["config"].flags
    assert trt.BuilderFlag.INT8 not in flags and getattr(trt.BuilderFlag, "FP16", None) not in flags
    nodes = calls["parsed_nodes"]
    assert nodes.count("QuantizeLinear") >= 3 and nodes.count("Conv") == 2
    assert calls["parsed_metadata"][PRECISION_KEY] == "int8"
    assert calls["parsed_metadata"][CALIBRATION_KEY] == calibration.sha256()
    # symmetric int8 activations (TensorRT has no zero points): every QuantizeLinear's zero point is int8 0
    initializers = calls["parsed_initializers"]
    for node in calls["parsed_graph"].node:
        if node.op_type == "QuantizeLinear":
            zero = initializers[node.input[2]]
            assert zero.data_type == onnx.TensorProto.INT8
            assert not onnx.numpy_helper.to_array(zero).any(), node.name
    meta = json.loads((tmp_path / "model.engine.json").read_text())
    assert meta["precision"] == "int8" and meta["strongly_typed"] is True
    assert meta["calibration"] == calibration.to_dict()
    with pytest.raises(ValueError, match=r"was built for int8; load it with SessionConfig\(precision='int8'\)"):
        rt.load(engine, SessionConfig(device="cuda", precision="fp32"))
    session = rt.load(engine, SessionConfig(device="cuda", precision="int8"))
    assert session.settings["precision"] == "int8"
    assert session.settings["engine_metadata"]["calibration"]["samples"] == 32


def test_tensorrt_int8_keeps_excluded_layers_without_qdq(trt_int8, tiny, tmp_path):
    trt = trt_int8(11)
    kept = quantizable_layers(tiny.onnx)[1]
    get_runtime("tensorrt").build(tiny.onnx, tmp_path, precision="int8",
                                  calibration=_calibration(tiny.input_size, exclude=(kept,)))
    graph = trt.calls["parsed_graph"]
    producers = {out: n for n in graph.node for out in n.output}
    node = next(n for n in graph.node if n.name == kept)
    assert node.input[1] not in producers  # a float initializer, not a DequantizeLinear
    meta = json.loads((tmp_path / "model.engine.json").read_text())
    assert meta["calibration"]["fp32_layers"] == [kept]


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_real_tensorrt_int8_engine_answers_like_pytorch(tiny, calibration, tmp_path):
    rt = get_runtime("tensorrt")
    reason = rt.is_available("cuda")
    if reason:
        pytest.skip(reason)
    engine = rt.build(tiny.onnx, tmp_path, precision="int8", calibration=calibration, min_batch=1, opt_batch=8,
                      max_batch=64)
    meta = json.loads((tmp_path / "model.engine.json").read_text())
    assert meta["precision"] == "int8" and meta["strongly_typed"] is True
    assert meta["calibration"]["sha256"] == calibration.sha256()
    x = tiny.batch(64, seed=5)
    with rt.load(engine, SessionConfig(device="cuda", precision="int8")) as session:
        assert session.settings["precision"] == "int8"
        out = session.run(x)
        assert session.run(x[:3]).shape == (3, 10)
    result = compare(tiny.reference(x), out, runtime="tensorrt", device="cuda", precision="int8")
    assert result.passed and result.mean_cosine_similarity >= 0.99, result.describe()
    with pytest.raises(ValueError, match="was built for int8"):
        rt.load(engine, SessionConfig(device="cuda", precision="fp32"))
