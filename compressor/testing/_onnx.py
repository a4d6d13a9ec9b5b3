"""Small models exported to ONNX for the runtime and benchmark tests.

Exports use torch's legacy exporter (quick: a fraction of a second per model), opset 18, input
"input" and output "output", and a dynamic batch dim named "batch". This is a fixture format for
tests, not :func:`compressor.deploy.export_onnx`, which is the product's exporter.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Exported:
    """A model, its ONNX file and, for zoo models, its ``compressor.save_model`` directory."""

    name: str
    model: nn.Module  # eval mode, float32, CPU
    onnx: Path
    input_size: tuple[int, int, int]
    saved_dir: Path | None  # compressor.save_model directory, for models built by the zoo

    def batch(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` standard-normal float32 inputs."""
        return np.random.default_rng(seed).standard_normal((n, *self.input_size)).astype(np.float32)

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The torch model's output on ``x``."""
        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()

    def source_for(self, runtime: object) -> object:
        """What a runtime builds from: the ONNX file, or the saved directory / module for torch."""
        if getattr(runtime, "source_format", "onnx") == "torch":
            return self.saved_dir if self.saved_dir is not None else self.model
        return self.onnx


def tiny_cnn() -> nn.Module:
    """conv-bn-relu-pool, conv-bn-relu, global pool, linear: 3x16x16 -> 10."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def export_test_onnx(model: nn.Module, input_size: tuple[int, ...], path: Path, dynamic_batch: bool = True) -> Path:
    """Export ``model`` traced on a batch of 2 of ``input_size`` (no batch dim) to ``path``; returns it.

    Dim 0 of "input" and "output" is dynamic ("batch") unless ``dynamic_batch=False``.
    """
    x = torch.zeros(2, *input_size)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices; it is the quick one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes)
    return Path(path)
