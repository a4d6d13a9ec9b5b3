"""Physical structured pruning for CNNs: dependency graph, criteria, surgery, cost model.

Public API::

    pruned = compressor.prune(model, example_inputs, "l2", target_flops=0.5)
    compressor.save_model(pruned, "out_dir"); model = compressor.load_model("out_dir")
    compressor.train(model, compressor.digits_dataset("train"), compressor.TrainConfig(epochs=10))
    compressor.evaluate_classification("bundle/", compressor.digits_dataset("test"), runtime="openvino")
"""
from compressor.pruning._api import LayerChange, PruneReport, PruneResult, PruningPlan, plan_pruning, prune, prune_model
from compressor.pruning._config import PruneConfig
from compressor.graph._cost import CostReport, LayerCostRow, count_cost
from compressor.criteria._base import (CriterionContext, CriterionSpec, aggregate_member_scores, get_criterion, list_criteria,
                        register_criterion)
import compressor.criteria._data as _criteria_data  # noqa: F401  (register the built-in criteria)
import compressor.criteria._weight as _criteria_weight
import compressor.criteria._reconstruct as _reconstruct
from compressor.training._data import DatasetError, MarketDataset, PKSampler, digits_dataset, image_folder_dataset, make_synthetic_market
from compressor.app._evaluate import ClassificationResult, evaluate_classification, evaluate_reid_model
from compressor.training._losses import ReIDLoss, batch_hard_triplet_loss
from compressor.training._metrics import ReIDResult, evaluate_reid, topk_accuracy
from compressor.training._loop import CheckpointError, TrainCallbacks, TrainConfig, TrainResult, load_checkpoint_weights_, train
from compressor.deploy._export import ExportConfig, OnnxInfo, export_onnx
from compressor.deploy._fold import FoldReport, fold_batchnorm
from compressor.graph._graph import ChannelGroup, DependencyGraph, Member, build_dependency_graph
from compressor.pruning._select import select_removal
from compressor.pruning._select_cost import RemovalPath, cost_aware_path
from compressor.pruning._strategies import StrategyConfig, StrategyResult, get_strategy, list_strategies, psfp_schedule, recalibrate_batchnorm_, register_strategy, run_strategy
from compressor.deploy._serialize import load_model, save_model
from compressor.pruning._surgery import prune_channels_, zero_channels_
from compressor.common.errors import CompressorError, ModelEntryError, ModelFormatError, TraceError, UnprunableModelError, UnreachableTargetError

__all__ = [
    "StrategyConfig", "StrategyResult", "get_strategy", "list_strategies", "psfp_schedule", "recalibrate_batchnorm_", "register_strategy",
    "run_strategy", "ChannelGroup", "CompressorError", "CriterionContext", "CriterionSpec", "ExportConfig", "FoldReport", "OnnxInfo", "export_onnx", "fold_batchnorm", "CostReport", "LayerCostRow", "count_cost", "load_model", "save_model", "DependencyGraph", "LayerChange", "Member", "ModelEntryError", "ModelFormatError",
    "PruneConfig", "PruneReport", "PruneResult", "TraceError", "UnprunableModelError", "UnreachableTargetError",
    "aggregate_member_scores", "build_dependency_graph", "get_criterion", "list_criteria", "prune", "prune_channels_",
    "prune_model", "register_criterion", "select_removal", "zero_channels_", "PruningPlan", "plan_pruning",
    "RemovalPath", "cost_aware_path",
    "CheckpointError", "ClassificationResult", "DatasetError", "MarketDataset", "PKSampler", "ReIDLoss", "ReIDResult",
    "TrainCallbacks", "TrainConfig", "TrainResult", "batch_hard_triplet_loss", "digits_dataset", "evaluate_classification",
    "evaluate_reid", "evaluate_reid_model", "image_folder_dataset", "load_checkpoint_weights_", "make_synthetic_market",
    "topk_accuracy", "train",
]
