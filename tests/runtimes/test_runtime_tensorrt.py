"""TensorRT engines (FP32 and FP16) on a CUDA GPU: parity, profile, settings, damaged engines.

Skipped with ``is_available()``'s reason where TensorRT or the GPU is missing.
"""
from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from runtimes import ArtifactError, SessionConfig, get_runtime

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]
PROFILE = {"min_batch": 1, "opt_batch": 4, "max_batch": 8}
# GPU kernels sum in another order than the CPU reference; TF32 is off, so errors stay ~1e-6
FP32_TOL = {"rtol": 1e-3, "atol_scale": 1e-4}
FP16_TOL = {"rtol": 2e-2, "atol_scale": 2e-2}


@pytest.fixture(scope="module")
def trt_rt():
    rt = get_runtime("tensorrt")
    reason = rt.is_available("cuda")
    if reason:
        pytest.skip(reason)
    return rt


@pytest.fixture(scope="module")
def engines(trt_rt, exported, tmp_path_factory):
    return {precision: trt_rt.build(exported["tiny"].onnx, tmp_path_factory.mktemp(f"trt-{precision}"),
                                    precision=precision, **PROFILE)
            for precision in ("fp32", "fp16")}


def test_cpu_is_not_a_tensorrt_device(trt_rt):
    assert trt_rt.is_available("cpu") == "tensorrt runs on CUDA devices only, not 'cpu'"
    assert trt_rt.devices() == ["cuda"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_pytorch_across_the_profile(precision, trt_rt, engines, exported, parity):
    case = exported["tiny"]
    tol = FP32_TOL if precision == "fp32" else FP16_TOL
    with trt_rt.load(engines[precision], SessionConfig(device="cuda", precision=precision)) as session:
        for batch in (1, 5, 8, 2):
            x = case.batch(batch, seed=batch)
            parity(session.run(x), case.reference(x), **tol)


def test_resnet20_fp16(trt_rt, exported, tmp_path, parity):
    case = exported["resnet20"]
    engine = trt_rt.build(case.onnx, tmp_path, precision="fp16", **PROFILE)
    x = case.batch(8)
    with trt_rt.load(engine, SessionConfig(device="cuda", precision="fp16")) as session:
        parity(session.run(x), case.reference(x), **FP16_TOL)


def test_build_writes_the_engine_and_its_metadata(engines, tmp_path):
    import tensorrt as trt

    for precision, engine in engines.items():
        assert engine.name == "model.engine" and engine.stat().st_size > 0
        assert sorted(p.name for p in engine.parent.iterdir()) == ["model.engine", "model.engine.json"]
        meta = json.loads(engine.with_name("model.engine.json").read_text())
        assert meta["precision"] == precision and meta["tensorrt_version"] == trt.__version__
        assert (meta["min_batch"], meta["opt_batch"], meta["max_batch"]) == (1, 4, 8)
        assert meta["strongly_typed"] == (not hasattr(trt.BuilderFlag, "FP16"))
    assert json.loads(engines["fp32"].with_name("model.engine.json").read_text())["tf32"] is False


def test_settings_report_the_engine(trt_rt, engines):
    with trt_rt.load(engines["fp32"], SessionConfig(device="cuda")) as session:
        settings = session.settings
    assert settings["runtime"] == "tensorrt" and settings["device"].startswith("cuda")
    assert settings["precision"] == "fp32" and settings["device_name"]
    assert (settings["min_batch"], settings["opt_batch"], settings["max_batch"]) == (1, 4, 8)
    assert isinstance(settings["engine_device_memory_bytes"], int) and settings["engine_device_memory_bytes"] >= 0


def test_batch_outside_the_profile_is_refused(trt_rt, engines, exported):
    with trt_rt.load(engines["fp32"], SessionConfig(device="cuda")) as session:
        with pytest.raises(ValueError, match=r"batch 9 is outside the engine's profile \[1, 8\]"):
            session.run(exported["tiny"].batch(9))


def test_precision_must_match_the_engine(trt_rt, engines):
    with pytest.raises(ValueError, match="was built for fp16"):
        trt_rt.load(engines["fp16"], SessionConfig(device="cuda", precision="fp32"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_engines_name_the_file(damage, trt_rt, engines, tmp_path):
    bad = tmp_path / "model.engine"
    if damage == "truncated":
        data = engines["fp32"].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(ArtifactError, match="model.engine"):
        trt_rt.load(bad, SessionConfig(device="cuda"))


def test_parser_errors_are_listed(trt_rt, tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["input"], ["output"], domain="example.custom")], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("example.custom", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError, match="custom.onnx: TensorRT's ONNX parser failed") as info:
        trt_rt.build(path, tmp_path / "out")
    assert "Frobnicate" in str(info.value)
    assert not (tmp_path / "out" / "model.engine").exists()
