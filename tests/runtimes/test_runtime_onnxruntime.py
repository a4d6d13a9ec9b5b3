"""onnxruntime session options, and the FP16 ONNX conversion (also used for TensorRT 11)."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from compressor.testing import export_test_onnx
from runtimes import ArtifactError, SessionConfig, get_runtime
from runtimes._onnx import PRECISION_KEY, write_fp16_onnx


@pytest.fixture(scope="module")
def ort_rt():
    rt = get_runtime("onnxruntime")
    reason = rt.is_available()
    if reason:
        pytest.skip(reason)
    return rt


def test_session_options_are_explicit_and_read_back(ort_rt, exported):
    with ort_rt.load(exported["tiny"].onnx, SessionConfig(threads=2)) as session:
        options = session.native.get_session_options()
        assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
        assert options.graph_optimization_level.name == "ORT_ENABLE_ALL"
        settings = session.settings
    assert settings["threads"] == 2 and settings["inter_op_threads"] == 1
    assert settings["providers"] == ["CPUExecutionProvider"] and settings["device"] == "cpu"
    assert settings["hint"] is None  # onnxruntime has no performance hint
    assert settings["graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_denormals_are_flushed_and_spinning_is_configurable(ort_rt, exported):
    for allow, expected in ((None, "default"), (False, "0"), (True, "1")):
        with get_runtime("onnxruntime", allow_spinning=allow).load(exported["tiny"].onnx) as session:
            options = session.native.get_session_options()
            assert options.get_session_config_entry("session.set_denormal_as_zero") == "1"
            assert session.settings["flush_denormal"] is True
            if expected != "default":
                assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected
            assert session.settings["allow_spinning"] is (allow is not False)  # onnxruntime spins by default
    with pytest.raises(TypeError, match="allow_spinning must be a bool"):
        get_runtime("onnxruntime", allow_spinning="no")


def test_default_threads_are_left_to_onnxruntime(ort_rt, exported):
    with ort_rt.load(exported["tiny"].onnx) as session:
        assert session.native.get_session_options().intra_op_num_threads == 0
        assert session.settings["threads"] is None


def test_fp16_build_converts_weights_and_keeps_float32_io(ort_rt, exported, tmp_path, parity):
    case = exported["resnet20"]
    built = ort_rt.build(case.onnx, tmp_path, precision="fp16")
    assert built == tmp_path / "model.fp16.onnx" and sorted(p.name for p in tmp_path.iterdir()) == [built.name]
    model = onnx.load(str(built))
    onnx.checker.check_model(model)
    assert {p.key: p.value for p in model.metadata_props}[PRECISION_KEY] == "fp16"
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
    assert {i.data_type for i in model.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)} \
        == {TensorProto.FLOAT16}
    assert built.stat().st_size < 0.6 * case.onnx.stat().st_size
    x = case.batch(5)
    with ort_rt.load(built, SessionConfig(precision="fp16")) as session:
        assert session.settings["precision"] == "fp16"
        parity(session.run(x), case.reference(x), rtol=1e-2, atol_scale=1e-2)


def test_precision_must_match_the_artifact(ort_rt, exported, tmp_path):
    with pytest.raises(ValueError, match=r"was built for fp32; load it with SessionConfig\(precision='fp32'\)"):
        ort_rt.load(exported["tiny"].onnx, SessionConfig(precision="fp16"))
    fp16 = ort_rt.build(exported["tiny"].onnx, tmp_path, precision="fp16")
    with pytest.raises(ValueError, match="was built for fp16"):
        ort_rt.load(fp16)
    assert ort_rt.build(fp16, tmp_path / "again", precision="fp16") == fp16  # already fp16: nothing to do
    with pytest.raises(ValueError, match="computes in fp16; export an fp32 ONNX"):
        ort_rt.build(fp16, tmp_path / "back", precision="fp32")


class _Upsampler(nn.Module):
    """Resize takes float32 scales whatever the data type: the conversion must keep them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.conv(x))).mean(dim=(2, 3))


def test_fp16_conversion_keeps_resize_scales_float32(ort_rt, tmp_path, parity):
    torch.manual_seed(0)
    model = _Upsampler().eval()
    source = export_test_onnx(model, (3, 8, 8), tmp_path / "up.onnx")
    built = write_fp16_onnx(source, tmp_path / "up16.onnx")
    x = torch.randn(2, 3, 8, 8).numpy()
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    with ort_rt.load(built, SessionConfig(precision="fp16")) as session:
        parity(session.run(x), ref, rtol=1e-2, atol_scale=1e-2)


def test_fp16_conversion_refuses_control_flow(tmp_path):
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y_then"])], "then", [],
                               [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch, name="branchy")], "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="node 'branchy' \\(If\\) has a subgraph"):
        write_fp16_onnx(path, tmp_path / "if16.onnx")
    assert not (tmp_path / "if16.onnx").exists()


def test_fp16_conversion_of_a_damaged_file_names_it(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ArtifactError, match="bad.onnx: cannot read the ONNX model"):
        write_fp16_onnx(bad, tmp_path / "out.onnx")
