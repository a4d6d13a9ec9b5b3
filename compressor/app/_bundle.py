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
from compressor.app._int8 import Int8Config, Int8Data, quantize_targets, TargetDecision
from runtimes import get_runtime, TARGET_RUNTIME, write_bundle


@dataclass
class ExportedBundle:
    bundle: Any  # runtimes.Bundle
    fold: FoldReport | None
    int8: dict[str, TargetDecision] | None = None  # per target, where an INT8 export decided


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
                  progress: Callable[[str], None] | None = None,
                  int8: tuple[Int8Config, Int8Data] | None = None) -> ExportedBundle:
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
        int8: for ``bundle_config.precision == "int8"``: the INT8 options and the calibration and
            evaluation data (:func:`compressor.app._int8.load_int8_data`). Each target ships INT8
            or FP32 as the accuracy budget and the speed guard decide; the manifest records it.

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
        decisions, int8_args = None, {}
        if bundle_config.precision == "int8":
            if int8 is None:
                raise ValueError("an int8 bundle needs calibration data: pass int8=(Int8Config, Int8Data)")
            decisions, int8_args = _quantize(info.path, bundle_config, int8, Path(tmp) / "int8", extra, progress)
        bundle = write_bundle(info.path, output, reference, tuple(input_size), bundle_config, extra,
                              progress=progress, torch_model_dir=torch_dir, **int8_args)
    return ExportedBundle(bundle, fold_report, decisions)


def _quantize(onnx_path: Path, bundle_config: Any, int8: tuple[Int8Config, Int8Data], work: Path,
              extra: dict[str, Any], progress: Callable[[str], None] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Decide INT8 or FP32 per target; the manifest entries (``int8``, ``accuracy``) go into
    ``extra``; returns the decisions and write_bundle's INT8 arguments."""
    config, data = int8
    build = {"min_batch": bundle_config.min_batch, "opt_batch": bundle_config.opt_batch,
             "max_batch": bundle_config.max_batch}
    decisions = quantize_targets(onnx_path, bundle_config.targets, data, config, work,
                                 threads=bundle_config.threads, build=build, progress=progress)
    calibration = {k: v for k, v in data.calibration.to_dict().items() if k != "fp32_layers"}
    extra["int8"] = {"calibration": calibration, "config": config.to_dict(),
                     "targets": {t: d.to_dict() for t, d in decisions.items()}}
    measured = {TARGET_RUNTIME[t]: d for t, d in decisions.items() if d.accuracy}
    if measured:
        extra["accuracy"] = {
            "metric": "top1", "split": f"{config.calib_data} evaluation split",
            "samples": next(iter(measured.values())).accuracy["samples"],
            "fp32": {rt: d.accuracy["fp32"] for rt, d in measured.items()},
            "shipped": {rt: d.accuracy["int8"] if d.precision == "int8" else d.accuracy["fp32"]
                        for rt, d in measured.items()}}
    prebuilt = {t: (d.artifact, d.precision) for t, d in decisions.items()}
    return decisions, {"prebuilt": prebuilt, "held_out": data.eval_x[:config.held_out_samples],
                       "floors": config.floors}


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
