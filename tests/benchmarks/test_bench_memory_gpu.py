"""benchmarks._memory on CUDA: device memory (torch allocator, NVML per process, TensorRT's engine size).

The pure parts (NVML lookup, results, argument checks) run everywhere; the measurements are
marked ``gpu`` and skip, with the reason, where no CUDA device (or runtime) is present.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import benchmarks._memory as _memory
from benchmarks._memory import MemoryResult, measure_memory, nvml_process_memory_bytes
from compressor import save_model
from models import create_model
from runtimes import RuntimeUnavailable, get_runtime

SHAPE = (3, 96, 96)  # resnet20 pools adaptively; 96x96 makes batch 32's activations dwarf batch 1's
NO_CUDA = None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"


def _fake_nvml(devices: list[list[tuple[int, int | None]]]) -> SimpleNamespace:
    """A pynvml stand-in: one list of (pid, usedGpuMemory) per device."""
    return SimpleNamespace(
        nvmlDeviceGetCount=lambda: len(devices),
        nvmlDeviceGetHandleByIndex=lambda i: devices[i],
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [SimpleNamespace(pid=p, usedGpuMemory=m)
                                                              for p, m in handle])


def test_nvml_process_memory_sums_this_pid_over_devices():
    nvml = _fake_nvml([[(7, 100 << 20), (42, 500 << 20)], [], [(42, 20 << 20), (42, None)]])
    assert nvml_process_memory_bytes(nvml, 42) == 520 << 20
    assert nvml_process_memory_bytes(nvml, 7) == 100 << 20


@pytest.mark.parametrize("devices", [[], [[(7, 1 << 20)]], [[(42, None)]]], ids=["no-device", "other-pid", "unknown"])
def test_nvml_process_memory_is_none_when_not_listed(devices):
    assert nvml_process_memory_bytes(_fake_nvml(devices), 42) is None


def test_cuda_result_round_trip():
    r = MemoryResult(runtime="tensorrt", artifact="/m/model.engine", device="cuda", batch_size=32, threads=1,
                     runs=2, input_shape=SHAPE, baseline_rss_bytes=1, loaded_rss_bytes=2, peak_rss_bytes=3,
                     increase_bytes=300, peak_reset=True, settings={"runtime": "tensorrt"},
                     device_baseline_bytes=500, device_loaded_bytes=700, device_peak_bytes=800,
                     device_increase_bytes=300, device_method="nvml-process", engine_device_memory_bytes=4096)
    assert MemoryResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_engine_device_memory_from_settings_or_engine():
    session = SimpleNamespace(settings={"engine_device_memory_bytes": 4096}, native=None)
    assert _memory._engine_device_memory_bytes(session) == 4096
    for engine, expected in ((SimpleNamespace(device_memory_size_v2=8192), 8192),
                             (SimpleNamespace(device_memory_size=1024), 1024), (None, None)):
        session = SimpleNamespace(settings={}, native=SimpleNamespace(engine=engine))
        assert _memory._engine_device_memory_bytes(session) == expected


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime", "openvino"])
def test_cuda_unavailable_fails_before_a_subprocess(monkeypatch, tmp_path: Path, runtime: str):
    reason = get_runtime(runtime).is_available("cuda")
    if reason is None:
        pytest.skip(f"{runtime} can use CUDA here")

    def no_child(*args, **kwargs):
        raise AssertionError("a child process was started")

    monkeypatch.setattr(_memory.subprocess, "run", no_child)
    with pytest.raises(RuntimeUnavailable, match=f"cannot measure {runtime} memory on device 'cuda': "
                                                 f"{re.escape(reason)}"):
        measure_memory(runtime, tmp_path, SHAPE, 1, device="cuda")


# --- measurements on a CUDA device ------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return create_model("resnet20").eval()


@pytest.fixture(scope="module")
def saved_dir(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(model, tmp_path_factory.mktemp("memory-gpu") / "resnet20")


@pytest.fixture(scope="module")
def onnx_path(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory, export_dynamic_batch) -> Path:
    path = tmp_path_factory.mktemp("memory-gpu") / "resnet20.onnx"
    return export_dynamic_batch(model, path, SHAPE)


def _require_cuda(runtime: str) -> None:
    reason = NO_CUDA or get_runtime(runtime).is_available("cuda")
    if reason is not None:
        pytest.skip(reason)


def _check_cuda_result(r: MemoryResult, method: set[str]) -> None:
    assert r.device == "cuda" and r.device_method in method
    assert r.device_increase_bytes == r.device_peak_bytes - r.device_baseline_bytes == r.increase_bytes
    assert r.device_baseline_bytes <= r.device_loaded_bytes <= r.device_peak_bytes
    assert r.baseline_rss_bytes <= r.peak_rss_bytes  # the host side is measured too
    assert MemoryResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


@pytest.mark.gpu
def test_torch_allocator_peak_grows_with_batch(saved_dir: Path, model: torch.nn.Module):
    _require_cuda("torch")
    one, many = (measure_memory("torch", saved_dir, SHAPE, bs, runs=2, device="cuda") for bs in (1, 32))
    for r in (one, many):
        _check_cuda_result(r, {"torch-allocator"})
        assert r.device_reserved_peak_bytes >= r.device_peak_bytes
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    assert weights <= one.device_loaded_bytes - one.device_baseline_bytes  # the weights are on the device
    assert many.device_increase_bytes > one.device_increase_bytes > weights


@pytest.mark.gpu
def test_onnxruntime_process_memory_grows_with_batch(onnx_path: Path):
    _require_cuda("onnxruntime")
    one, many = (measure_memory("onnxruntime", onnx_path, SHAPE, bs, runs=2, device="cuda") for bs in (1, 32))
    for r in (one, many):
        _check_cuda_result(r, {"nvml-process", "cuda-mem-get-info"})
        assert r.settings["device"] == "cuda" and r.engine_device_memory_bytes is None
    assert many.device_increase_bytes > one.device_increase_bytes > 0


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_records_the_engine_device_memory(onnx_path: Path, tmp_path: Path):
    _require_cuda("tensorrt")
    engine = get_runtime("tensorrt").build(onnx_path, tmp_path, min_batch=1, opt_batch=8, max_batch=32)
    r = measure_memory("tensorrt", engine, SHAPE, 32, runs=2, device="cuda")
    _check_cuda_result(r, {"nvml-process", "cuda-mem-get-info"})
    assert r.engine_device_memory_bytes == r.settings["engine_device_memory_bytes"] > 0
    assert r.device_increase_bytes > 0


# --- the child's CUDA path, with torch.cuda, NVML and the runtime faked (runs without a GPU) ----

class _FakeDevice:
    """Device memory that grows by 100 MiB on load and by 10 MiB * batch on the first run."""

    def __init__(self):
        self.used, self.peak, self.runs = 500 << 20, 500 << 20, 0

    def grow(self, nbytes: int) -> None:
        self.used += nbytes
        self.peak = max(self.peak, self.used)

    def runtime(self, settings: dict) -> SimpleNamespace:
        def run(x):
            self.runs += 1
            if self.runs == 1:
                self.grow(10 * len(x) << 20)

        def load(artifact, config):
            assert config.device == "cuda"
            self.grow(100 << 20)
            return SimpleNamespace(settings=settings, native=None, run=run, run_all=run, close=lambda: None)

        return SimpleNamespace(require=lambda device: None, load=load, loader_modules=())


@pytest.fixture
def fake_device(monkeypatch, patch_everywhere) -> _FakeDevice:
    import runtimes

    device = _FakeDevice()
    for name, value in {"init": lambda: None, "synchronize": lambda: None,
                        "memory_allocated": lambda: device.used - (500 << 20),
                        "max_memory_allocated": lambda: device.peak - (500 << 20),
                        "max_memory_reserved": lambda: device.peak - (400 << 20),
                        "reset_peak_memory_stats": lambda: None,
                        "mem_get_info": lambda: ((80 << 30) - device.used - (1 << 30), 80 << 30)}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    settings = {"runtime": "fake", "engine_device_memory_bytes": 4096}
    patch_everywhere(runtimes, "get_runtime", lambda name: device.runtime(settings))
    return device


def _fake_pynvml(device: _FakeDevice, pid: int) -> SimpleNamespace:
    return SimpleNamespace(nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
                           nvmlDeviceGetHandleByIndex=lambda i: i, NVMLError=RuntimeError,
                           nvmlDeviceGetComputeRunningProcesses=lambda handle: [
                               SimpleNamespace(pid=pid, usedGpuMemory=device.used)])


@pytest.mark.parametrize("runtime, pynvml, method, note", [
    ("torch", "absent", "torch-allocator", None),
    ("onnxruntime", "lists-us", "nvml-process", None),
    ("onnxruntime", "absent", "cuda-mem-get-info", "pynvml is not installed"),
    ("onnxruntime", "other-pid", "cuda-mem-get-info", "NVML lists no device memory for pid"),
])
def test_child_on_cuda(monkeypatch, fake_device: _FakeDevice, runtime: str, pynvml: str, method: str, note):
    import os
    import sys

    fake = {"absent": None, "lists-us": _fake_pynvml(fake_device, os.getpid()),
            "other-pid": _fake_pynvml(fake_device, os.getpid() + 1)}[pynvml]
    monkeypatch.setitem(sys.modules, "pynvml", fake)  # None makes `import pynvml` raise ImportError
    report = _memory._child(runtime, Path("model"), (3, 8, 8), 4, 1, 2, 0, "cuda")
    assert report["device_method"] == method
    assert (report["device_note"] is None) if note is None else report["device_note"].startswith(note)
    offset = {"torch-allocator": 0, "nvml-process": 500 << 20, "cuda-mem-get-info": (1 << 30) + (500 << 20)}[method]
    assert report["device_baseline_bytes"] == offset
    assert report["device_loaded_bytes"] == offset + (100 << 20)
    assert report["device_peak_bytes"] == offset + (140 << 20)  # weights + 10 MiB * batch 4
    assert report["device_reserved_peak_bytes"] == ((240 << 20) if method == "torch-allocator" else None)
    assert report["engine_device_memory_bytes"] == 4096
    assert report["baseline_rss_bytes"] <= report["peak_rss_bytes"]


def test_parent_reports_the_device_increase_on_cuda(monkeypatch, patch_everywhere, tmp_path: Path):
    import subprocess

    import runtimes

    report = {"baseline_rss_bytes": 1000, "loaded_rss_bytes": 3000, "peak_rss_bytes": 4000, "peak_reset": True,
              "settings": {"runtime": "tensorrt"}, "engine_device_memory_bytes": 4096,
              "device_baseline_bytes": 500, "device_loaded_bytes": 700, "device_peak_bytes": 900,
              "device_reserved_peak_bytes": None, "device_method": "nvml-process", "device_note": None}
    commands = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=_memory._RESULT_MARKER + json.dumps(report), stderr="")

    patch_everywhere(runtimes, "get_runtime", lambda name: SimpleNamespace(is_available=lambda device: None))
    monkeypatch.setattr(_memory.subprocess, "run", run)
    r = measure_memory("tensorrt", tmp_path, SHAPE, 8, device="cuda")
    assert commands[0][-4:] == ["--device", "cuda", "--precision", "fp32"]
    assert (r.device, r.device_increase_bytes, r.increase_bytes) == ("cuda", 400, 400)
    assert (r.peak_rss_bytes - r.baseline_rss_bytes, r.engine_device_memory_bytes) == (3000, 4096)
    assert (r.device_method, r.device_loaded_bytes) == ("nvml-process", 700)
