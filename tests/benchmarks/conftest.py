"""Shared fixtures of the benchmark tests."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from compressor.testing import export_test_onnx


def _export(model: torch.nn.Module, path: Path, sample_shape: tuple[int, ...]) -> Path:
    return export_test_onnx(model, sample_shape, path)


@pytest.fixture(scope="session")
def export_dynamic_batch() -> Callable[[torch.nn.Module, Path, tuple[int, ...]], Path]:
    """``export(model, path, sample_shape)``: an ONNX file with a dynamic batch dim (legacy exporter,
    which is quick; :func:`compressor.testing.export_test_onnx`)."""
    return _export
