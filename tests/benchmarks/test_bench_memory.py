"""benchmarks._memory: measured runtime memory of an ONNX model in a fresh subprocess.

Only relative comparisons (batch 32 vs batch 1, child vs parent); never absolute sizes.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import benchmarks._memory as _memory
from benchmarks._memory import (
    MemoryOOM,
    MemoryResult,
    is_out_of_memory,
    measure_memory,
    read_proc_status_bytes,
)
from models import create_model
from runtimes import get_runtime

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="memory measurement needs Linux /proc"),
    pytest.mark.skipif(get_runtime("onnxruntime").is_available() is not None,
                       reason=f"onnxruntime unavailable: {get_runtime('onnxruntime').is_available()}"),
]
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet20_onnx(tmp_path_factory: pytest.TempPathFactory, export_dynamic_batch) -> Path:
    """resnet20 from the zoo, exported with a dynamic batch dim."""
    path = tmp_path_factory.mktemp("memory") / "resnet20.onnx"
    model = create_model("resnet20").eval()
    return export_dynamic_batch(model, path, SHAPE)


@pytest.fixture(scope="module")
def by_batch(resnet20_onnx: Path) -> dict[int, MemoryResult]:
    return {bs: measure_memory("onnxruntime", resnet20_onnx, ["batch", *SHAPE], bs, threads=1, runs=2)
            for bs in (1, 32)}


def test_larger_batch_uses_more_memory(by_batch: dict[int, MemoryResult]):
    one, many = by_batch[1], by_batch[32]
    assert many.increase_bytes > one.increase_bytes > 0
    extra_input = 31 * int(np.prod(SHAPE)) * 4  # 31 more float32 samples, at the least
    assert many.increase_bytes - one.increase_bytes >= extra_input


def test_result_fields(by_batch: dict[int, MemoryResult], resnet20_onnx: Path):
    r = by_batch[32]
    assert r.runtime == "onnxruntime" and r.device == "cpu"
    assert r.artifact == str(resnet20_onnx.resolve())
    assert (r.batch_size, r.threads, r.runs) == (32, 1, 2)
    assert r.input_shape == SHAPE  # the manifest's leading "batch" is dropped
    assert r.increase_bytes == r.peak_rss_bytes - r.baseline_rss_bytes
    assert r.baseline_rss_bytes < r.loaded_rss_bytes <= r.peak_rss_bytes
    assert r.peak_reset
    assert r.settings["runtime"] == "onnxruntime" and r.settings["threads"] == 1
    assert r.device_method is None and r.device_peak_bytes is None and r.engine_device_memory_bytes is None
    assert MemoryResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_results_saved_before_the_device_fields_still_load(by_batch: dict[int, MemoryResult]):
    old = {k: v for k, v in by_batch[1].to_dict().items() if not k.startswith(("device_", "engine_"))}
    assert MemoryResult.from_dict(old) == by_batch[1]
    with pytest.raises(ValueError, match=r"unknown MemoryResult key\(s\) \['vram'\]"):
        MemoryResult.from_dict({**old, "vram": 1})


def test_child_process_is_isolated_from_parent(resnet20_onnx: Path):
    ballast = np.ones(256 * 2**20 // 8)  # 256 MiB held (and touched) by this process only
    parent_rss = read_proc_status_bytes("VmRSS")["VmRSS"]
    r = measure_memory("onnxruntime", resnet20_onnx, SHAPE, 1, runs=1)
    assert r.baseline_rss_bytes < ballast.nbytes < parent_rss
    assert r.peak_rss_bytes < parent_rss
    del ballast


def test_missing_artifact_names_the_file(tmp_path: Path):
    missing = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(FileNotFoundError, match=r"nowhere/model\.onnx"):
        measure_memory("onnxruntime", missing, SHAPE, 1)


def test_child_failure_carries_stderr_and_names_the_artifact(tmp_path: Path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not an onnx model")
    with pytest.raises(RuntimeError, match=r"(?s)corrupt\.onnx .*exit status 1.: ArtifactError: .*corrupt\.onnx.*"
                                           r"child stderr \(tail\):\n.*ArtifactError") as info:
        measure_memory("onnxruntime", corrupt, SHAPE, 1)
    assert not isinstance(info.value, MemoryOOM)


def _fake_child(monkeypatch: pytest.MonkeyPatch, returncode: int, stderr: str) -> None:
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=stderr)

    monkeypatch.setattr(_memory.subprocess, "run", run)


@pytest.mark.parametrize("returncode", [-9, 137])
def test_child_killed_by_the_oom_killer_raises_memory_oom(monkeypatch, resnet20_onnx: Path, returncode: int):
    _fake_child(monkeypatch, returncode, "")
    with pytest.raises(MemoryOOM, match=rf"resnet20\.onnx \(batch 64\) ran out of memory: .*SIGKILL "
                                        rf"\(exit status {returncode}\).*out-of-memory killer") as info:
        measure_memory("onnxruntime", resnet20_onnx, SHAPE, 64)
    assert (info.value.runtime, info.value.device, info.value.batch_size) == ("onnxruntime", "cpu", 64)


@pytest.mark.parametrize("stderr", [
    "Traceback ...\n@@benchmarks._memory error@@ _ArrayMemoryError: Unable to allocate 96.0 GiB for an array\n",
    "terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n",  # no error line
])
def test_out_of_memory_error_in_the_child_raises_memory_oom(monkeypatch, resnet20_onnx: Path, stderr: str):
    _fake_child(monkeypatch, 1 if "@@" in stderr else -6, stderr)
    with pytest.raises(MemoryOOM, match=r"(?s)ran out of memory \(exit status -?\d\).*child stderr \(tail\)"):
        measure_memory("onnxruntime", resnet20_onnx, SHAPE, 1)


@pytest.mark.parametrize("line", [
    "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)",
    "_ArrayMemoryError: Unable to allocate 12.0 GiB for an array with shape (1000000, 3, 32, 32)",
    "MemoryError: std::bad_alloc",
    ("RuntimeException: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running "
     "Conv node. Status Message: BFCArena::AllocateRawInternal Failed to allocate memory for requested buffer"),
    "Fail: [ONNXRuntimeError] : 1 : FAIL : CUDA failure 2: out of memory ; GPU=0",
    "RuntimeError: CUDA driver error: CUDA_ERROR_OUT_OF_MEMORY",
    "RuntimeError: cudaErrorMemoryAllocation",
    "RuntimeError: cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "RuntimeError: TensorRT execution failed: Error Code 2: OutOfMemory (Requested size was 4294967296 bytes.)",
    "RuntimeError: Requested amount of GPU memory (4294967296 bytes) could not be allocated.",
    "OSError: [Errno 12] Cannot allocate memory",
])
def test_out_of_memory_lines_are_recognised(line: str):
    assert is_out_of_memory(line)


@pytest.mark.parametrize("line", [
    "ArtifactError: /tmp/corrupt.onnx: onnxruntime cannot load this model; the file may be truncated",
    "RuntimeUnavailable: onnxruntime runtime cannot use device 'cuda': no CUDA device",
    "ValueError: batch 128 is outside the engine's profile [1, 64]",
    "RuntimeError: TensorRT execution failed: Error Code 1: Cuda Runtime (invalid argument)",
])
def test_other_errors_are_not_out_of_memory(line: str):
    assert not is_out_of_memory(line)


def test_timeout_names_the_artifact(resnet20_onnx: Path):
    with pytest.raises(RuntimeError, match=r"resnet20\.onnx .*timed out after 0\.01 s"):
        measure_memory("onnxruntime", resnet20_onnx, SHAPE, 1, timeout_s=0.01)


@pytest.mark.openvino
def test_other_runtimes_measure_too(resnet20_onnx: Path):
    reason = get_runtime("openvino").is_available()
    if reason is not None:
        pytest.skip(reason)
    r = measure_memory("openvino", resnet20_onnx, SHAPE, 4, threads=1, runs=1)
    assert r.settings["runtime"] == "openvino"
    assert r.increase_bytes > 0


@pytest.mark.parametrize("kwargs, error, message", [
    ({"runtime": "no-such-runtime"}, ValueError, "unknown runtime 'no-such-runtime'; known runtimes: .*onnxruntime"),
    ({"device": "gpu"}, ValueError, "device must be one of 'cpu', 'cuda', got 'gpu': OpenVINO's GPU plugin"),
    ({"device": "tpu"}, ValueError, "device must be one of 'cpu', 'cuda', got 'tpu'$"),
    ({"input_shape": (3, 0, 32)}, ValueError, "input_shape"),
    ({"input_shape": ("batch",)}, ValueError, "input_shape"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"threads": 1.5}, ValueError, "threads"),
    ({"runs": 0}, ValueError, "runs"),
    ({"timeout_s": 0}, ValueError, "timeout_s"),
])
def test_argument_validation(resnet20_onnx: Path, kwargs, error, message):
    args = {"runtime": "onnxruntime", "artifact": resnet20_onnx, "input_shape": SHAPE, "batch_size": 1} | kwargs
    with pytest.raises(error, match=message):
        measure_memory(**args)


def test_read_proc_status_bytes():
    fields = read_proc_status_bytes("VmRSS", "VmHWM")
    assert 0 < fields["VmRSS"] <= fields["VmHWM"]
    with pytest.raises(RuntimeError, match="NoSuchField"):
        read_proc_status_bytes("NoSuchField")
