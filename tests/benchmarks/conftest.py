"""Shared fixtures of the benchmark tests."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def _export(model: torch.nn.Module, path: Path, sample_shape: tuple[int, ...]) -> Path:
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(2, *sample_shape),), str(path), dynamo=False, opset_version=18,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


@pytest.fixture(scope="session")
def export_dynamic_batch() -> Callable[[torch.nn.Module, Path, tuple[int, ...]], Path]:
    """``export(model, path, sample_shape)``: an ONNX file with a dynamic batch dim (legacy exporter,
    which is quick)."""
    return _export
