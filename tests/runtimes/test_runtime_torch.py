"""The torch runtime: saved directories and modules, threads, denormals, inference mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from runtimes import SessionConfig, get_runtime
from runtimes._torch import ieee_fp32


class _Probe(nn.Module):
    """Records whether it ran under inference mode; returns a (tensor, dict) tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.saw_inference_mode: list[bool] = []

    def forward(self, x: torch.Tensor):
        self.saw_inference_mode.append(torch.is_inference_mode_enabled())
        y = self.linear(x)
        return y * 2, {"aux": y}


def test_saved_directory_loads_through_compressor(exported, parity):
    case = exported["resnet20"]
    rt = get_runtime("torch")
    assert rt.build(case.saved_dir, "/nonexistent-unused") == case.saved_dir  # nothing to build
    x = case.batch(4)
    with rt.load(case.saved_dir, SessionConfig(threads=3)) as session:
        parity(session.run(x), case.reference(x))
        assert session.settings["artifact"] == str(case.saved_dir)
        assert not session.native.training


def test_threads_are_applied_at_every_run(exported):
    session = get_runtime("torch").load(exported["tiny"].model, SessionConfig(threads=3))
    assert session.settings["threads"] == 3 and torch.get_num_threads() == 3
    torch.set_num_threads(1)  # someone else changes the process-wide setting
    session.run(exported["tiny"].batch(1))
    assert torch.get_num_threads() == 3


def test_flush_denormal_is_recorded():
    session = get_runtime("torch").load(nn.Linear(4, 3), SessionConfig())
    # True where the CPU supports flushing (x86 with SSE3), which torch reports
    assert session.settings["flush_denormal"] is torch.set_flush_denormal(True)
    torch.set_flush_denormal(False)
    session.run(np.full((1, 4), 1e-40, dtype=np.float32))  # sets it again, for this thread
    if session.settings["flush_denormal"]:
        assert float(torch.tensor([1e-40]) * 1.0) == 0.0  # a float32 denormal is flushed to zero


def test_runs_under_inference_mode_and_returns_the_first_output():
    probe = _Probe().eval()
    session = get_runtime("torch").load(probe)
    x = np.ones((2, 4), np.float32)
    out = session.run(x)
    ran = session.native
    assert ran is not probe and ran.saw_inference_mode == [True] and probe.saw_inference_mode == []
    with torch.no_grad():
        expected = probe.linear(torch.from_numpy(x)).numpy() * 2
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_fp16_module_stays_close(exported, parity):
    case = exported["tiny"]
    x = case.batch(3)
    with get_runtime("torch").load(case.model, SessionConfig(precision="fp16")) as session:
        assert next(session.native.parameters()).dtype == torch.float16
        parity(session.run(x), case.reference(x), rtol=1e-2, atol_scale=1e-2)


def test_rejects_what_it_cannot_run(tmp_path):
    rt = get_runtime("torch")
    with pytest.raises(TypeError, match="saved model directory or an nn.Module, got dict"):
        rt.load({"not": "a model"})
    with pytest.raises(TypeError, match="got int"):
        rt.build(3, tmp_path)


def test_cuda_fp32_runs_without_tf32_and_restores_the_flags():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    new_api = hasattr(getattr(cudnn, "conv", None), "fp32_precision")
    read = (lambda: (cudnn.conv.fp32_precision, matmul.fp32_precision)) if new_api else \
        (lambda: (cudnn.allow_tf32, matmul.allow_tf32))
    before = read()
    with ieee_fp32():
        assert read() == (("ieee", "ieee") if new_api else (False, False))
    assert read() == before
