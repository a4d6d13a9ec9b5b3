"""Bundles: every zoo model, pruned and unpruned, exports to ONNX + OpenVINO with verified parity;
tampering, failed parity and missing runtimes give clear errors and no half-written bundle."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compressor as C
from compressor.testing import randomize_
from models import create_model, default_input_size, list_models
from runtimes import BundleConfig, BundleError, ParityError, RuntimeUnavailable, load_bundle, write_bundle

COMPRESSOR = str(Path(sys.executable).with_name("compressor"))


def _bundle(model, size, out, precision="fp32", exporter="torchscript", targets=("onnx", "openvino")):
    x = torch.randn(1, *size)
    folded, _ = C.fold_batchnorm(model.eval(), x)
    info = C.export_onnx(folded, x, out.parent / f"{out.name}.onnx", C.ExportConfig(exporter=exporter))

    def reference(batch):
        with torch.no_grad():
            return folded(torch.from_numpy(batch)).numpy()

    return write_bundle(info.path, out, reference, tuple(size),
                        BundleConfig(targets=targets, precision=precision, batch_sizes=(1, 4), threads=2))


@pytest.mark.parametrize("pruned", [False, True], ids=["unpruned", "pruned"])
@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_exports_with_parity(tmp_path, name, pruned):
    size = (3, 128, 64) if name == "reid_resnet50" else default_input_size(name)
    model = randomize_(create_model(name).eval())
    if pruned:
        model = C.prune(model, torch.randn(1, *size), "l2", target_flops=0.5, round_to=1).model  # exact widths
    bundle = _bundle(model, size, tmp_path / "b")
    assert bundle.manifest["parity_passed"] and len(bundle.parity) == 4  # 2 runtimes x 2 batch sizes
    assert {p["runtime"] for p in bundle.parity} == {"onnxruntime", "openvino"}
    assert load_bundle(tmp_path / "b").manifest["artifacts"] == {"onnx": "model.onnx", "openvino": "openvino/model.xml"}


def test_fp16_openvino_bundle_is_half_size_and_close(tmp_path):
    model = randomize_(create_model("resnet20").eval())
    b32 = _bundle(model, (3, 32, 32), tmp_path / "b32", targets=("openvino",))
    b16 = _bundle(model, (3, 32, 32), tmp_path / "b16", precision="fp16", targets=("openvino",))
    size = lambda b: (b.path / "openvino" / "model.bin").stat().st_size  # noqa: E731
    assert 0.4 < size(b16) / size(b32) < 0.6
    assert all(p["passed"] and p["tolerance_rel"] > 1e-3 for p in b16.parity)


def test_tampered_and_missing_files_are_named(tmp_path):
    _bundle(create_model("lenet5"), (1, 32, 32), tmp_path / "b", targets=("onnx",))
    onnx_file = tmp_path / "b" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        load_bundle(tmp_path / "b")
    onnx_file.unlink()
    with pytest.raises(BundleError, match="model.onnx is missing"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        load_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(tmp_path / "nothing")


def test_parity_failure_carries_numbers_and_is_recorded(tmp_path):
    model = create_model("lenet5").eval()
    x = torch.randn(1, 1, 32, 32)
    info = C.export_onnx(model, x, tmp_path / "m.onnx", C.ExportConfig(exporter="torchscript"))

    def wrong(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy() + 0.5

    with pytest.raises(ParityError, match=r"onnxruntime/cpu/fp32 batch 1: max abs 5\.0+e-01"):
        write_bundle(info.path, tmp_path / "b", wrong, (1, 32, 32), BundleConfig(targets=("onnx",)))
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["parity_passed"] is False and manifest["parity"][0]["max_abs_error"] == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(BundleError, match="failed its parity check"):
        load_bundle(tmp_path / "b")
    assert load_bundle(tmp_path / "b", allow_failed_parity=True).manifest["parity_passed"] is False


def test_missing_runtime_writes_nothing(tmp_path):
    with pytest.raises(RuntimeUnavailable, match="tensorrt"):
        write_bundle(tmp_path / "absent.onnx", tmp_path / "b", lambda b: b, (3, 8, 8),
                     BundleConfig(targets=("onnx", "tensorrt")))
    assert list(tmp_path.iterdir()) == []


def test_cli_export_acceptance(tmp_path):
    """`compressor prune` then `compressor export --to onnx,openvino` (default dynamo exporter)."""
    subprocess.run([COMPRESSOR, "prune", "--model", "resnet20", "--target-flops", "0.5", "--output",
                    str(tmp_path / "half"), "--quiet"], check=True, capture_output=True)
    proc = subprocess.run([COMPRESSOR, "export", str(tmp_path / "half"), "--to", "onnx,openvino", "--output",
                           str(tmp_path / "bundle"), "--threads", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": ok") == 4 and "folded" in proc.stdout
    manifest = load_bundle(tmp_path / "bundle").manifest
    assert manifest["onnx"]["exporter"] == "dynamo" and manifest["input"]["shape"] == ["batch", 3, 32, 32]
    assert manifest["num_classes"] == 10 and manifest["versions"]["onnxruntime"]
    assert manifest["recipe"]["history"][0]["step"] == "prune"
    assert manifest["cost"]["trm_bytes"]["64"] > manifest["cost"]["mps_bytes"]
    assert set(manifest["files"]) == {"model.onnx", "openvino/model.xml", "openvino/model.bin"}


def test_cli_export_tensorrt_without_tensorrt(tmp_path):
    proc = subprocess.run([COMPRESSOR, "export", "resnet20", "--to", "tensorrt", "--output", str(tmp_path / "b")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "tensorrt is not installed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
