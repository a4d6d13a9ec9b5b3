"""Deployment of a pruned model: fold BatchNorm, export one ONNX file, and save/load models
without executing pickled code.
"""
from __future__ import annotations

from compressor.deploy._export import ExportConfig, OnnxInfo, export_onnx, flatten_outputs
from compressor.deploy._fold import FoldReport, fold_batchnorm
from compressor.deploy._serialize import SPEC_FILE, load_model, read_spec, save_model

__all__ = [
    "ExportConfig", "FoldReport", "OnnxInfo", "SPEC_FILE", "export_onnx", "flatten_outputs", "fold_batchnorm",
    "load_model", "read_spec", "save_model",
]
