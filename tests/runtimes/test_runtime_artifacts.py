"""Missing, truncated and corrupt artifacts raise ArtifactError naming the file; builds are atomic."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runtimes import ArtifactError, SessionConfig, get_runtime

GARBAGE = b"\x00\xffnot a model\x00" * 64


def _damaged_onnx(kind: str, source: Path, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}_model.onnx"
    if kind == "truncated":
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(GARBAGE)
    elif kind == "empty":
        path.write_bytes(b"")
    return path  # "missing": never written


def _assert_names_file(err: ArtifactError, path: Path, *words: str) -> None:
    message = str(err)
    assert path.name in message, message
    for word in words:
        assert word in message, message
    assert "\n" not in message and "Exception from src" not in message, message  # no traceback soup


ONNX_RUNTIMES = [pytest.param("onnxruntime"), pytest.param("openvino", marks=pytest.mark.openvino)]
DAMAGE = {"truncated": "truncated or corrupt", "garbage": "truncated or corrupt", "empty": "empty",
          "missing": "not found"}


@pytest.fixture
def available(request):
    def check(name: str):
        rt = get_runtime(name)
        reason = rt.is_available()
        if reason:
            pytest.skip(reason)
        return rt
    return check


@pytest.mark.parametrize("kind", sorted(DAMAGE))
@pytest.mark.parametrize("runtime_name", ONNX_RUNTIMES)
def test_damaged_onnx_fails_build_and_load_naming_the_file(runtime_name, kind, available, exported, tmp_path):
    rt = available(runtime_name)
    bad = _damaged_onnx(kind, exported["tiny"].onnx, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(ArtifactError) as info:
        rt.build(bad, out)
    _assert_names_file(info.value, bad, DAMAGE[kind])
    assert not out.exists() or list(out.iterdir()) == []  # nothing half-written
    with pytest.raises(ArtifactError) as info:
        rt.load(bad)
    _assert_names_file(info.value, bad)
    if kind in ("truncated", "garbage"):
        assert info.value.__cause__ is not None  # the runtime's own error, chained


@pytest.fixture(scope="module")
def ir_dir(exported, tmp_path_factory):
    rt = get_runtime("openvino")
    if rt.is_available():
        pytest.skip(rt.is_available())
    out = tmp_path_factory.mktemp("ir")
    rt.build(exported["tiny"].onnx, out)
    return out


@pytest.mark.openvino
@pytest.mark.parametrize("damage,culprit,words", [
    ("truncate_bin", "model.bin", ["truncated or corrupt", "weights"]),
    ("truncate_xml", "model.xml", ["truncated or corrupt"]),
    ("garbage_xml", "model.xml", ["truncated or corrupt"]),
    ("remove_bin", "model.bin", ["not found"]),
    ("remove_xml", "model.xml", ["not found"]),
])
def test_damaged_openvino_ir_fails_load_naming_the_file(damage, culprit, words, ir_dir, tmp_path):
    ir = tmp_path / "ir"
    shutil.copytree(ir_dir, ir)
    target = ir / ("model.bin" if damage.endswith("bin") else "model.xml")
    if damage.startswith("truncate"):
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    elif damage.startswith("garbage"):
        target.write_bytes(GARBAGE)
    else:
        target.unlink()
    with pytest.raises(ArtifactError) as info:
        get_runtime("openvino").load(ir / "model.xml")
    _assert_names_file(info.value, ir / culprit, *words)


@pytest.mark.openvino
def test_openvino_load_rejects_other_file_types(ir_dir):
    with pytest.raises(ArtifactError, match=r"model\.bin: expected OpenVINO IR or ONNX model \(\.xml or \.onnx file\)"):
        get_runtime("openvino").load(ir_dir / "model.bin")


@pytest.mark.openvino
def test_openvino_build_failure_leaves_no_half_written_ir(exported, tmp_path, monkeypatch):
    import openvino

    def save_half_then_fail(model, path, compress_to_fp16=True):
        Path(path).write_text("<net")  # a partial .xml, as if the process died mid-write
        raise OSError("disk full")

    out = tmp_path / "out"
    monkeypatch.setattr(openvino, "save_model", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        get_runtime("openvino").build(exported["tiny"].onnx, out)
    assert list(out.iterdir()) == []  # no model.xml, no staging directory


@pytest.mark.openvino
def test_openvino_rebuild_replaces_the_artifact(exported, tmp_path):
    rt = get_runtime("openvino")
    first = rt.build(exported["tiny"].onnx, tmp_path, precision="fp32")
    size32 = first.with_suffix(".bin").stat().st_size
    second = rt.build(exported["tiny"].onnx, tmp_path, precision="fp16")
    assert first == second and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    assert second.with_suffix(".bin").stat().st_size < size32


def test_onnxruntime_fp32_build_returns_the_onnx_itself(exported, tmp_path):
    onnx = exported["tiny"].onnx
    assert get_runtime("onnxruntime").build(onnx, tmp_path / "unused") == onnx
    assert not (tmp_path / "unused").exists()


def test_torch_runtime_rejects_missing_files_and_corrupt_saved_models(exported, tmp_path):
    rt = get_runtime("torch")
    with pytest.raises(ArtifactError, match="nowhere: saved model directory not found"):
        rt.load(tmp_path / "nowhere")
    with pytest.raises(ArtifactError, match=r"resnet20\.onnx: the torch runtime loads a directory saved by "
                                            r"compressor\.save_model \(or an nn\.Module\), not a \.onnx file"):
        rt.build(exported["resnet20"].onnx, tmp_path)
    saved = tmp_path / "saved"
    shutil.copytree(exported["resnet20"].saved_dir, saved)
    weights = saved / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError) as info:
        rt.load(saved, SessionConfig())
    assert str(saved) in str(info.value) and "weights.pt" in str(info.value)
    import compressor

    assert isinstance(info.value.__cause__, compressor.ModelFormatError)


def test_torch_runtime_loads_a_copy_of_a_module(exported):
    model = exported["tiny"].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    session = get_runtime("torch").load(model, SessionConfig(precision="fp16"))
    assert session.native is not model
    assert all(v.dtype == before[k].dtype and v.equal(before[k]) for k, v in model.state_dict().items())
    session.close()
