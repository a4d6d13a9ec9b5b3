"""ONNX export: a valid single file, dynamic batch, recorded input spec, no partial files."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

import compressor as C
from models import create_model


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_single_file_dynamic_batch(tmp_path, exporter):
    model = create_model("resnet20").eval()
    info = C.export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx", C.ExportConfig(exporter=exporter))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no external data, no temp files
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    assert info.input_name == "input" and info.input_shape == ["batch", 3, 32, 32] and info.input_dtype == "float32"
    assert info.output_shape == ["batch", 10] and info.opset == 18 and info.exporter == exporter
    session = ort.InferenceSession(info.path, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == expected.shape
        assert abs(got - expected).max() <= 1e-4 * abs(expected).max()


def test_opset_is_configurable(tmp_path):
    info = C.export_onnx(create_model("lenet5"), torch.randn(1, 1, 32, 32), tmp_path / "l.onnx",
                         C.ExportConfig(opset=17, exporter="torchscript"))
    assert info.opset == 17


def test_bad_config_and_failed_export_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="exporter must be"):
        C.ExportConfig(exporter="tflite")
    with pytest.raises(ValueError, match="opset must be between"):
        C.ExportConfig(opset=7)

    class Broken(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eig(x)[0]  # complex output: not exportable

    with pytest.raises(C.CompressorError, match="ONNX export of Broken"):
        C.export_onnx(Broken(), torch.randn(1, 3, 3), tmp_path / "b.onnx", C.ExportConfig(exporter="torchscript"))
    assert list(tmp_path.iterdir()) == []
