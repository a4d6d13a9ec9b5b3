"""Registry, lazy SDK imports, missing runtimes and config validation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import runtimes
from runtimes import (BuildConfig, Runtime, RuntimeUnavailable, SessionConfig, get_runtime, list_runtimes,
                      register_runtime)
import runtimes._base as _base

REPO = Path(__file__).resolve().parents[2]
SDKS = {"onnxruntime", "openvino", "tensorrt"}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_import_runtimes_imports_no_sdk():
    # in a fresh interpreter: pytest (and other tests) may already have imported the SDKs here
    proc = _python(
        "import sys, runtimes\n"
        f"sdks = {sorted(SDKS)!r}\n"
        "assert not set(sdks) & set(sys.modules), sorted(set(sdks) & set(sys.modules))\n"
        "rts = {n: runtimes.get_runtime(n) for n in runtimes.list_runtimes()}\n"
        "assert not set(sdks) & set(sys.modules), 'get_runtime imported an SDK'\n"
        "rts['onnxruntime'].is_available()\n"
        "assert 'onnxruntime' in sys.modules and 'openvino' not in sys.modules and 'tensorrt' not in sys.modules\n")
    assert proc.returncode == 0, proc.stderr


def test_import_runtimes_works_without_openvino():
    proc = _python("import sys\nsys.modules['openvino'] = None\nimport runtimes\n"
                   "print(runtimes.get_runtime('openvino').is_available())")
    assert proc.returncode == 0, proc.stderr
    assert "openvino is not installed" in proc.stdout


def test_missing_tensorrt_gives_the_reason_and_build_load_raise_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ModuleNotFoundError
    rt = get_runtime("tensorrt")
    reason = rt.is_available()
    assert reason is not None and reason.startswith("tensorrt is not installed (ModuleNotFoundError:")
    assert rt.is_available("cpu") == reason  # the package is checked before the device
    assert rt.devices() == []
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"unused")
    for call in (lambda: rt.build(onnx, tmp_path / "out"), lambda: rt.load(tmp_path / "model.engine",
                                                                         SessionConfig(device="cuda"))):
        with pytest.raises(RuntimeUnavailable) as info:
            call()
        assert info.value.reason == reason and info.value.runtime == "tensorrt"
        assert "pip install tensorrt" in str(info.value) and reason in str(info.value)
        assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert not (tmp_path / "out").exists()


def test_missing_openvino_gives_the_reason(monkeypatch, exported, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)
    rt = get_runtime("openvino")
    reason = rt.is_available()
    assert reason is not None and "openvino is not installed" in reason
    assert rt.devices() == []
    with pytest.raises(RuntimeUnavailable, match="pip install openvino") as info:
        rt.build(exported["tiny"].onnx, tmp_path)
    assert info.value.reason == reason
    with pytest.raises(RuntimeUnavailable, match="openvino is not installed"):
        rt.load(tmp_path / "model.xml")
    assert list(tmp_path.iterdir()) == []


def test_a_broken_sdk_reports_its_import_error(monkeypatch):
    real_import = _base.importlib.import_module

    def fake_import(name, *args):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file")
        return real_import(name, *args)

    monkeypatch.setattr(_base.importlib, "import_module", fake_import)
    reason = get_runtime("tensorrt").is_available()
    assert reason == "tensorrt failed to import (OSError: libnvinfer.so.10: cannot open shared object file)"


def test_device_reasons_name_the_device():
    reason = get_runtime("openvino").is_available("cuda")
    assert reason == "openvino has no 'cuda' device; its GPU plugin is device='gpu'"
    assert get_runtime("torch").is_available("cpu") is None
    with pytest.raises(ValueError, match="device must be one of 'cpu', 'cuda', 'gpu', got 'tpu'"):
        get_runtime("torch").is_available("tpu")


def test_cuda_requests_fail_with_the_reason_when_there_is_no_cuda(exported):
    rt = get_runtime("onnxruntime")
    reason = rt.is_available("cuda")
    if reason is None:
        pytest.skip("onnxruntime can use CUDA here")
    with pytest.raises(RuntimeUnavailable) as info:
        rt.load(exported["tiny"].onnx, SessionConfig(device="cuda"))
    assert info.value.reason == reason


def test_unknown_runtime_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        get_runtime("tflite")
    assert "'tflite'" in str(info.value)
    for name in list_runtimes():
        assert name in str(info.value)


def test_registering_a_name_twice_raises(monkeypatch):
    monkeypatch.setattr(_base, "_RUNTIMES", _base._RUNTIMES.copy())

    @register_runtime("dummy")
    class Dummy(runtimes.Runtime):
        _sdk = _device_reason = devices = _build = _load = lambda *a: None

    assert "dummy" in list_runtimes() and isinstance(get_runtime("dummy"), Dummy) and Dummy.name == "dummy"
    with pytest.raises(ValueError, match="runtime 'dummy' is already registered"):
        register_runtime("dummy")
    with pytest.raises(ValueError, match="runtime 'onnxruntime' is already registered"):
        register_runtime("onnxruntime")(Dummy)
    with pytest.raises(TypeError, match="Runtime subclasses"):
        register_runtime("not-a-runtime")(object)
    with pytest.raises(ValueError, match="non-empty"):
        register_runtime("")


def test_get_runtime_returns_a_new_configured_instance():
    a, b = get_runtime("onnxruntime"), get_runtime("onnxruntime")
    assert isinstance(a, Runtime) and a is not b and a.name == "onnxruntime"
    assert get_runtime("tensorrt", workspace_bytes=1 << 20).workspace_bytes == 1 << 20
    with pytest.raises(ValueError, match="workspace_bytes must be a positive int, got -1"):
        get_runtime("tensorrt", workspace_bytes=-1)
    with pytest.raises(TypeError):
        get_runtime("onnxruntime", threads=2)


@pytest.mark.parametrize("kwargs,message", [
    ({"device": "npu"}, "device must be one of 'cpu', 'cuda', 'gpu', got 'npu'"),
    ({"threads": 0}, "threads must be a positive int, got 0"),
    ({"threads": True}, "threads must be a positive int, got True"),
    ({"threads": 2.0}, "threads must be a positive int, got 2.0"),
    ({"hint": "fast"}, "hint must be one of 'latency', 'throughput', got 'fast'"),
    ({"precision": "int4"}, "precision must be one of 'fp32', 'fp16', 'int8', got 'int4'"),
])
def test_session_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SessionConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "bf16"}, "precision must be one of 'fp32', 'fp16', 'int8', got 'bf16'"),
    ({"min_batch": 0}, "min_batch must be a positive int, got 0"),
    ({"min_batch": 4, "opt_batch": 2}, "need min_batch <= opt_batch <= max_batch, got 4, 2, 64"),
    ({"opt_batch": 128}, "need min_batch <= opt_batch <= max_batch, got 1, 128, 64"),
])
def test_build_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BuildConfig(**kwargs)


def test_build_validates_its_arguments_before_touching_files(tmp_path):
    rt = get_runtime("onnxruntime")
    with pytest.raises(ValueError, match="need min_batch <= opt_batch <= max_batch"):
        rt.build(tmp_path / "missing.onnx", tmp_path / "out", min_batch=8, opt_batch=1)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", [SessionConfig(), SessionConfig("cuda", 4, "throughput", "fp16"),
                                    BuildConfig(), BuildConfig("fp16", 2, 4, 16)])
def test_configs_round_trip_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert type(config).from_dict(data) == config
    with pytest.raises(ValueError, match="unknown .* key\\(s\\) \\['bogus'\\]"):
        type(config).from_dict({**data, "bogus": 1})


def test_session_config_is_frozen():
    with pytest.raises(AttributeError):
        SessionConfig().threads = 3  # type: ignore[misc]
