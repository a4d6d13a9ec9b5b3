"""benchmarks._memory: measured runtime memory of an ONNX model in a fresh subprocess.

Only relative comparisons (batch 64 vs batch 1, child vs parent); never absolute sizes.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks._memory import MemoryResult, measure_memory, read_proc_status_bytes
from models import create_model
from runtimes import get_runtime

pytestmark = [
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="memory measurement needs Linux /proc"),
    pytest.mark.skipif(get_runtime("onnxruntime").is_available() is not None,
                       reason=f"onnxruntime unavailable: {get_runtime('onnxruntime').is_available()}"),
]
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def resnet20_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet20 from the zoo, exported with a dynamic batch dim."""
    path = tmp_path_factory.mktemp("memory") / "resnet20.onnx"
    model = create_model("resnet20").eval()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(2, *SHAPE),), str(path), dynamo=False, opset_version=18,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def by_batch(resnet20_onnx: Path) -> dict[int, MemoryResult]:
    return {bs: measure_memory("onnxruntime", resnet20_onnx, ["batch", *SHAPE], bs, threads=1, runs=2)
            for bs in (1, 64)}


def test_larger_batch_uses_more_memory(by_batch: dict[int, MemoryResult]):
    one, many = by_batch[1], by_batch[64]
    assert many.increase_bytes > one.increase_bytes > 0


def test_result_fields(by_batch: dict[int, MemoryResult], resnet20_onnx: Path):
    r = by_batch[64]
    assert r.runtime == "onnxruntime" and r.device == "cpu"
    assert r.artifact == str(resnet20_onnx.resolve())
    assert (r.batch_size, r.threads, r.runs) == (64, 1, 2)
    assert r.input_shape == SHAPE  # the manifest's leading "batch" is dropped
    assert r.increase_bytes == r.peak_rss_bytes - r.baseline_rss_bytes
    assert r.baseline_rss_bytes < r.loaded_rss_bytes <= r.peak_rss_bytes
    assert r.peak_reset
    assert r.settings["runtime"] == "onnxruntime" and r.settings["threads"] == 1
    assert MemoryResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


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
                                           r"child stderr \(tail\):\n.*ArtifactError"):
        measure_memory("onnxruntime", corrupt, SHAPE, 1)


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
    (dict(runtime="no-such-runtime"), ValueError, "unknown runtime 'no-such-runtime'; known runtimes: .*onnxruntime"),
    (dict(device="cuda"), ValueError, "only CPU memory measurement is implemented"),
    (dict(input_shape=(3, 0, 32)), ValueError, "input_shape"),
    (dict(input_shape=("batch",)), ValueError, "input_shape"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(threads=1.5), ValueError, "threads"),
    (dict(runs=0), ValueError, "runs"),
    (dict(timeout_s=0), ValueError, "timeout_s"),
])
def test_argument_validation(resnet20_onnx: Path, kwargs, error, message):
    args = dict(runtime="onnxruntime", artifact=resnet20_onnx, input_shape=SHAPE, batch_size=1) | kwargs
    with pytest.raises(error, match=message):
        measure_memory(**args)


def test_read_proc_status_bytes():
    fields = read_proc_status_bytes("VmRSS", "VmHWM")
    assert 0 < fields["VmRSS"] <= fields["VmHWM"]
    with pytest.raises(RuntimeError, match="NoSuchField"):
        read_proc_status_bytes("NoSuchField")
