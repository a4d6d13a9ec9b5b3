"""Application layer, on top of the library: the command line, config-driven pipelines, pruning
to a latency budget measured on a runtime, the speed guard, bundle creation and evaluation on
runtimes. It may import every layer below; nothing below imports it.
"""
from __future__ import annotations

from compressor.app._bundle import export_bundle
from compressor.app._evaluate import ClassificationResult, evaluate_classification, evaluate_reid_model
from compressor.app._evaluate_detect import evaluate_detection
from compressor.app._int8 import Int8Config, Int8Data, Int8Error, load_int8_data, quantize_targets, TargetDecision
from compressor.app._latency_prune import LatencyPruneResult, prune_to_latency
from compressor.app._latency_table import open_session
from compressor.app._prune import prune

__all__ = ["ClassificationResult", "Int8Config", "Int8Data", "Int8Error", "LatencyPruneResult", "TargetDecision",
           "load_int8_data", "quantize_targets", "evaluate_classification", "evaluate_detection",
           "evaluate_reid_model",
           "export_bundle", "open_session", "prune", "prune_to_latency"]
