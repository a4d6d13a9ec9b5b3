"""Model -> verified deployment bundle: fold BatchNorm, export ONNX, build and check each runtime's artifact.

The folding and the ONNX export are ours (:mod:`compressor.deploy._fold`, :mod:`compressor.deploy._export`); the
runtime artifacts, their parity checks and the manifest are :func:`runtimes.write_bundle`'s.
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from compressor.graph import count_cost
from compressor.deploy import export_onnx, ExportConfig, flatten_outputs, fold_batchnorm, FoldReport, save_model
from runtimes import get_runtime, TARGET_RUNTIME, write_bundle


@dataclass
class ExportedBundle:
    bundle: Any  # runtimes.Bundle
    fold: FoldReport | None


def missing_runtimes(targets: tuple[str, ...]) -> dict[str, str]:
    """``{target: reason}`` for every export target whose runtime cannot be used here."""

    out = {}
    for target in targets:
        reason = get_runtime(TARGET_RUNTIME[target]).is_available(device="cuda" if target == "tensorrt" else "cpu")
        if reason:
            out[target] = reason
    return out


def export_bundle(model: nn.Module, output: str | Path, input_size: tuple[int, ...], bundle_config: Any,
                  export_config: ExportConfig | None = None, *, fold: bool = True, source: str = "",
                  weights: dict[str, Any] | None = None,
                  progress: Callable[[str], None] | None = None) -> ExportedBundle:
    """Fold ``model``'s BatchNorms, export it to ONNX and write a verified bundle at ``output``.

    A model returning several tensors (a tuple, list or dict: a detector's raw heads) gets one ONNX
    output each; the manifest records them all and every one is checked for parity.

    Args:
        model: the (pruned) network; it is not modified.
        output: bundle directory, replaced atomically.
        input_size: one sample's shape, e.g. ``(3, 32, 32)``; the batch dim is dynamic.
        bundle_config: :class:`runtimes._bundle.BundleConfig` (targets, precision, parity batches).
        export_config: ONNX opset and exporter.
        fold: fold BatchNorm into the convolutions first (the deployed form).
        source, weights: provenance recorded in the manifest.

    Raises:
        runtimes.RuntimeUnavailable, runtimes.ArtifactError, runtimes.BundleError; and
        runtimes._parity.ParityError after writing the bundle with the failure recorded.
    """

    example = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    model = copy.deepcopy(model).eval()  # the caller's model keeps its mode and BatchNorms
    fold_report = None
    if fold:
        model, fold_report = fold_batchnorm(model, example)
    cost = count_cost(model, example)

    def reference(batch: np.ndarray) -> list[np.ndarray]:
        """Every output, in the ONNX graph's order (flatten_outputs is the order the export names)."""
        with torch.no_grad():
            return [t.numpy() for _, t in flatten_outputs(model(torch.from_numpy(batch)))]

    with tempfile.TemporaryDirectory() as tmp:
        info = export_onnx(model, example, Path(tmp) / "model.onnx", export_config or ExportConfig())
        torch_dir = None
        if "torch" in bundle_config.targets:  # the folded model itself, for the eager reference runtime
            torch_dir = save_model(model, Path(tmp) / "torch", arch=getattr(model, "zoo_spec", None))
        extra = {
            "source": source,
            "weights": weights,
            "onnx": {k: v for k, v in info.to_dict().items() if k != "path"},
            "cost": {**{k: v for k, v in cost.to_dict().items() if k != "layers"},
                     "trm_bytes": {bs: cost.trm_bytes(bs) for bs in (1, 8, 32, 64)},
                     "flops_convention": "FLOPs = 2 x MACs per sample; "
                                         "TRM = MPS + FM*4*BS (FALF ConvNets eq. 10)"},
            "fold": fold_report.to_dict() if fold_report else None,
            "recipe": getattr(model, "compressor_metadata", None),
            "alignment": pruning_alignment(getattr(model, "compressor_metadata", None)),
        }
        bundle = write_bundle(info.path, output, reference, tuple(input_size), bundle_config, extra,
                              progress=progress, torch_model_dir=torch_dir)
    return ExportedBundle(bundle, fold_report)


def pruning_alignment(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The channel alignment of the last pruning in a model's history (None: never pruned).

    ``{"round_to": 16}`` for an explicit multiple; for ``"auto"`` also the alignment per layer
    kind and where each runtime's came from (probe, cache or the ISA table).
    """
    for entry in reversed((metadata or {}).get("history", [])):
        config = entry.get("config") or entry.get("prune") or {}
        if "round_to" in config:
            return {"round_to": config["round_to"], **({"auto": config["alignment"]} if config.get("alignment") else {})}
    return None
