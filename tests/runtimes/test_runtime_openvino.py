"""OpenVINO: IR precision on disk, properties read back from the compiled model, dynamic batch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from runtimes import SessionConfig, get_runtime

pytestmark = pytest.mark.openvino


@pytest.fixture(scope="module")
def openvino_rt():
    rt = get_runtime("openvino")
    reason = rt.is_available()
    if reason:
        pytest.skip(reason)
    return rt


@pytest.fixture(scope="module")
def irs(openvino_rt, exported, tmp_path_factory):
    """resnet20's IR built at both precisions (default arguments otherwise)."""
    out = {}
    for precision in ("fp32", "fp16"):
        out[precision] = openvino_rt.build(exported["resnet20"].onnx, tmp_path_factory.mktemp(precision),
                                           precision=precision)
    return out


def _float_weights(onnx_path) -> int:
    model = onnx.load(str(onnx_path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


def test_default_build_stores_fp32_weights(irs, exported):
    # save_model compresses to FP16 unless told not to: an fp32 build must hold 4 bytes per weight
    n = _float_weights(exported["resnet20"].onnx)
    size = irs["fp32"].with_suffix(".bin").stat().st_size
    assert 4 * n <= size <= 4 * n * 1.02 + 4096, (size, n)


def test_fp16_build_halves_the_weights_and_stays_close(irs, exported, openvino_rt, parity):
    size32 = irs["fp32"].with_suffix(".bin").stat().st_size
    size16 = irs["fp16"].with_suffix(".bin").stat().st_size
    assert 0.45 <= size16 / size32 <= 0.55, (size16, size32)
    case = exported["resnet20"]
    x = case.batch(5)
    with openvino_rt.load(irs["fp16"], SessionConfig(precision="fp32")) as session:
        assert session.settings["inference_precision"] == "f32"  # fp16 weights, f32 compute
        parity(session.run(x), case.reference(x), rtol=1e-2, atol_scale=1e-2)


def test_fp16_inference_precision_is_requested_and_read_back(irs, exported, openvino_rt, parity):
    case = exported["resnet20"]
    x = case.batch(5)
    with openvino_rt.load(irs["fp16"], SessionConfig(precision="fp16")) as session:
        # CPUs without native f16 arithmetic run an f16 request in bf16: the settings say which
        assert session.settings["inference_precision"] in ("f16", "bf16")
        assert session.settings["precision"] == "fp16"
        parity(session.run(x), case.reference(x), rtol=2e-2, atol_scale=2e-2)


def test_fp32_precision_hint_is_f32_not_the_plugins_bf16_default(irs, openvino_rt):
    with openvino_rt.load(irs["fp32"], SessionConfig(precision="fp32")) as session:
        assert str(session.native.get_property("INFERENCE_PRECISION_HINT").get_type_name()) == "f32"


@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_threads_and_hint_are_set_and_read_back(irs, openvino_rt, hint):
    with openvino_rt.load(irs["fp32"], SessionConfig(threads=2, hint=hint)) as session:
        compiled = session.native
        assert compiled.get_property("INFERENCE_NUM_THREADS") == 2
        assert str(compiled.get_property("PERFORMANCE_HINT")).lower() == hint
        settings = session.settings
    assert settings["threads"] == 2 and settings["hint"] == hint
    assert settings["plugin"] == "CPU" and settings["device"] == "cpu"
    assert settings["num_streams"] >= 1 and settings["optimal_num_requests"] >= 1


def test_threads_default_to_the_plugin_choice(irs, openvino_rt):
    with openvino_rt.load(irs["fp32"]) as session:
        assert session.settings["threads"] == session.native.get_property("INFERENCE_NUM_THREADS")


def test_ir_keeps_the_dynamic_batch(irs, exported, openvino_rt):
    with openvino_rt.load(irs["fp32"]) as session:
        assert session.input_name == "input"
        assert session.input_shape == (None, 3, 32, 32)
        for batch in (1, 3, 16):
            assert session.run(exported["resnet20"].batch(batch)).shape == (batch, 10)


def test_onnx_can_be_loaded_directly(exported, openvino_rt, parity):
    case = exported["tiny"]
    x = case.batch(3)
    with openvino_rt.load(case.onnx) as session:
        parity(session.run(x), case.reference(x))


def test_devices_are_lowercase_names(openvino_rt):
    devices = openvino_rt.devices()
    assert "cpu" in devices and set(devices) <= {"cpu", "gpu"}
