"""Physical structured pruning for CNNs, from a trained model to a verified, measured deployment.

One obvious way to prune::

    result = compressor.prune(model, example_inputs, target_flops=0.5)          # a PruneResult
    result = compressor.prune(model, x, criterion="fpgm", ratio=0.3, round_to=1)
    result = compressor.prune(model, x, latency_budget_ms=4.0, runtime="onnxruntime")
    result = compressor.prune(model, x, strategy="psfp", strategy_config=compressor.PSFPConfig(epochs=5),
                              train_data=data)
    compressor.save_model(result.model, "out_dir"); model = compressor.load_model("out_dir")

The layers underneath, each a subpackage with its own ``__all__``: ``compressor.graph``
(trace, channel groups, cost), ``compressor.criteria``, ``compressor.pruning`` (``plan_pruning``,
the lower-level selection API, and the strategies), ``compressor.deploy`` (fold, ONNX, save/load),
``compressor.training`` and ``compressor.app`` (command line, pipelines, latency budgets).

The names below are imported on first use, so ``import compressor.common`` (the torch-free
foundation that ``runtimes`` and ``benchmarks`` share) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it, grouped as the README presents them
_EXPORTS: dict[str, str] = {}


def _export(module: str, names: str) -> None:
    for name in names.split():
        _EXPORTS[name] = module


# pruning
_export("compressor.app", "prune prune_to_latency LatencyPruneResult")
_export("compressor.pruning", "PruneConfig PruneResult PruneReport LayerChange PruningPlan plan_pruning "
                              "StrategyResult list_strategies register_strategy get_strategy StrategyConfig "
                              "OneShotConfig IterativeConfig PSFPConfig AutoBalanceConfig PlayAndPruneConfig "
                              "strategy_config_from_dict")
_export("compressor.criteria", "CriterionContext CriterionSpec get_criterion list_criteria register_criterion")
# graph and cost
_export("compressor.graph", "build_dependency_graph DependencyGraph ChannelGroup Member count_cost CostReport "
                            "LayerCostRow")
# deployment
_export("compressor.deploy", "fold_batchnorm FoldReport export_onnx ExportConfig OnnxInfo save_model load_model")
# training and evaluation
_export("compressor.training", "train TrainConfig TrainCallbacks TrainResult digits_dataset image_folder_dataset "
                               "topk_accuracy")
_export("compressor.app", "export_bundle evaluate_classification ClassificationResult evaluate_reid_model")
# errors
_export("compressor.common.errors", "CompressorError TraceError UnprunableModelError UnreachableTargetError "
                                    "ModelFormatError ModelEntryError")
_export("compressor.training", "DatasetError CheckpointError")

__all__ = list(_EXPORTS)


_SUBPACKAGES = ("app", "common", "criteria", "deploy", "graph", "pruning", "testing", "training")


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"compressor.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'compressor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
