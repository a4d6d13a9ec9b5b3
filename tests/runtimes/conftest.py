"""Fixtures for the runtime tests: models exported once per session, and the parity check."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

import compressor
from models import create_model

sys.path.insert(0, str(Path(__file__).parent))
from runtime_models import Exported, check_parity, export_onnx, randomize_batchnorms_, tiny_cnn  # noqa: E402


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """{"tiny": ..., "resnet20": ...}: eval-mode models, their ONNX files and saved directories."""
    root = tmp_path_factory.mktemp("exported")
    generator = torch.Generator().manual_seed(1234)
    out = {}
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        tiny = tiny_cnn()
        resnet = create_model("resnet20")
    for name, model, size in (("tiny", tiny, (3, 16, 16)), ("resnet20", resnet, (3, 32, 32))):
        randomize_batchnorms_(model, generator)
        model.eval()
        saved = None
        if getattr(model, "zoo_spec", None):
            saved = compressor.save_model(model, root / f"{name}_saved")
        out[name] = Exported(name, model, export_onnx(model, size, root / f"{name}.onnx"), size, saved)
    return out


@pytest.fixture(autouse=True)
def _no_flush_denormal_leak():
    """The torch runtime turns on flush-to-zero (process-wide); keep it out of other tests."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def parity() -> Callable[..., None]:
    return check_parity
