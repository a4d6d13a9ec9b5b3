"""Models for the runtime tests and the parity check they share.

Models are exported with the fast legacy exporter, a dynamic batch dim named "batch", opset
18, input "input" and output "output". Their BatchNorms get non-trivial statistics so that
the exporter's BN folding is exercised.
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
    name: str
    model: nn.Module  # eval mode, float32, CPU
    onnx: Path
    input_size: tuple[int, int, int]
    saved_dir: Path | None  # compressor.save_model directory, for models built by the zoo

    def batch(self, n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((n, *self.input_size)).astype(np.float32)

    def reference(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).numpy()

    def source_for(self, runtime: object) -> object:
        """What a runtime builds from: the ONNX file, or the saved directory / module for torch."""
        if getattr(runtime, "source_format", "onnx") == "torch":
            return self.saved_dir if self.saved_dir is not None else self.model
        return self.onnx


def randomize_batchnorms_(model: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)


def tiny_cnn() -> nn.Module:
    """conv-bn-relu-pool, conv-bn-relu, global pool, linear: 3x16x16 -> 10."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def export_onnx(model: nn.Module, input_size: tuple[int, ...], path: Path, dynamic_batch: bool = True) -> Path:
    """Export with a batch of 2; dim 0 is dynamic ("batch") unless ``dynamic_batch=False``."""
    x = torch.zeros(2, *input_size)
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices; it is the fast one
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes)
    return path


def check_parity(out: np.ndarray, ref: np.ndarray, rtol: float = 1e-4, atol_scale: float = 1e-5) -> None:
    """``out`` matches ``ref`` with relative tolerance ``rtol`` and an absolute tolerance of
    ``atol_scale`` times the reference's largest magnitude."""
    assert out.dtype == np.float32, out.dtype
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol_scale * float(np.abs(ref).max()))
