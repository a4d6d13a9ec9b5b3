"""Fixtures for the runtime tests: models exported once per session, and the parity check."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

import compressor
from compressor.testing import Exported, assert_array_parity, export_test_onnx, randomize_, tiny_cnn
from models import create_model


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """{"tiny": ..., "resnet20": ...}: eval-mode models, their ONNX files and saved directories.

    Their BatchNorms get non-trivial statistics (``randomize_``), so that the exporters' and
    runtimes' BN folding is exercised.
    """
    root = tmp_path_factory.mktemp("exported")
    out = {}
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        tiny = tiny_cnn()
        resnet = create_model("resnet20")
    for name, model, size in (("tiny", tiny, (3, 16, 16)), ("resnet20", resnet, (3, 32, 32))):
        randomize_(model, seed=1234)
        model.eval()
        saved = None
        if getattr(model, "zoo_spec", None):
            saved = compressor.save_model(model, root / f"{name}_saved")
        out[name] = Exported(name, model, export_test_onnx(model, size, root / f"{name}.onnx"), size, saved)
    return out


@pytest.fixture(autouse=True)
def _no_flush_denormal_leak():
    """The torch runtime turns on flush-to-zero (process-wide); keep it out of other tests."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def parity() -> Callable[..., None]:
    """``parity(out, ref, rtol=1e-4, atol_scale=1e-5)``: :func:`compressor.testing.assert_array_parity`."""
    return assert_array_parity
