"""Every registered runtime x model x device: build, load, run at batch 1 and 5, match PyTorch eager.

Cases whose runtime or device is missing are skipped with ``is_available()``'s reason.
"""
from __future__ import annotations

import numpy as np
import pytest

from runtimes import SessionConfig, get_runtime, list_runtimes

MARKS = {"openvino": [pytest.mark.openvino], "tensorrt": [pytest.mark.tensorrt, pytest.mark.gpu]}
ACCELERATOR = {"openvino": "gpu"}  # OpenVINO's GPU plugin (Intel GPUs); the others run on CUDA
DEVICE_MARKS = {"cpu": [], "cuda": [pytest.mark.gpu], "gpu": []}
CASES = [pytest.param(name, device, id=f"{name}-{device}", marks=MARKS.get(name, []) + DEVICE_MARKS[device])
         for name in list_runtimes() for device in ("cpu", ACCELERATOR.get(name, "cuda"))]


@pytest.fixture(scope="module")
def built(exported, tmp_path_factory):
    """Artifacts built once per (runtime, model, precision); keyed the same way."""
    cache: dict[tuple[str, str, str], object] = {}

    def get(runtime_name: str, model: str, precision: str = "fp32"):
        key = (runtime_name, model, precision)
        if key not in cache:
            rt = get_runtime(runtime_name)
            out = tmp_path_factory.mktemp(f"{runtime_name}-{model}-{precision}")
            cache[key] = rt.build(exported[model].source_for(rt), out, precision=precision,
                                  min_batch=1, opt_batch=4, max_batch=8)
        return cache[key]

    return get


def test_registry_lists_the_four_runtimes():
    assert {"torch", "onnxruntime", "openvino", "tensorrt"} <= set(list_runtimes())
    assert list_runtimes() == sorted(list_runtimes())


@pytest.mark.parametrize("model", ["tiny", "resnet20"])
@pytest.mark.parametrize("runtime_name,device", CASES)
def test_fp32_parity_at_batch_1_and_5(runtime_name, device, model, exported, built, parity):
    rt = get_runtime(runtime_name)
    reason = rt.is_available(device)
    if reason:
        pytest.skip(reason)
    assert device in rt.devices()
    case = exported[model]
    artifact = built(runtime_name, model)
    with rt.load(artifact, SessionConfig(device=device, threads=2)) as session:
        for batch in (1, 5, 1):  # the batch size may change between calls
            x = case.batch(batch, seed=batch)
            out = session.run(x)
            parity(out, case.reference(x))
        settings = session.settings
    assert settings["runtime"] == runtime_name
    assert settings["precision"] == "fp32"
    assert {"version", "device", "threads", "hint"} <= set(settings)
    if device == "cpu":
        assert settings["threads"] == 2  # set explicitly and read back from the runtime


@pytest.mark.parametrize("runtime_name,device", CASES)
def test_run_returns_a_fresh_float32_array_and_checks_its_input(runtime_name, device, exported, built):
    rt = get_runtime(runtime_name)
    reason = rt.is_available(device)
    if reason:
        pytest.skip(reason)
    case = exported["tiny"]
    session = rt.load(built(runtime_name, "tiny"), SessionConfig(device=device))
    x = case.batch(2)
    first = session.run(x)
    second = session.run(x.astype(np.float64))  # cast to the model's input dtype
    assert first is not second and not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, second)
    assert isinstance(session.input_name, str) and session.input_name
    with pytest.raises(TypeError, match="floating-point numpy array"):
        session.run(x.tolist())
    if session.input_shape is not None:
        with pytest.raises(ValueError, match="expects shape"):
            session.run(case.batch(2)[:, :2])  # wrong channel count
    session.close()
    session.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        session.run(x)
