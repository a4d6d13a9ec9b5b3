"""Pruning: plan, select (by score or cost-aware), physically remove channels (surgery), channel
alignment for the deployment target, and the training-time strategies of the papers.
"""
from __future__ import annotations

from compressor.pruning._align import alignment_summary, default_runtimes, resolve_alignment
from compressor.pruning._api import LayerChange, PruneReport, PruneResult, PruningPlan, plan_pruning, prune, prune_model
from compressor.pruning._config import DEPLOY_RUNTIMES, PruneConfig, TARGET_KEYS
from compressor.pruning._select import select_removal, smallest_removal
from compressor.pruning._select_cost import RemovalPath, cost_aware_path
from compressor.pruning._strategies import StrategyConfig, StrategyResult, get_strategy, list_strategies, psfp_schedule, recalibrate_batchnorm_, register_strategy, run_strategy
from compressor.pruning._surgery import prune_channels_, zero_channels_

__all__ = [
    "DEPLOY_RUNTIMES", "LayerChange", "PruneConfig", "PruneReport", "PruneResult", "PruningPlan",
    "RemovalPath", "StrategyConfig", "StrategyResult", "TARGET_KEYS", "alignment_summary", "cost_aware_path",
    "default_runtimes", "get_strategy", "list_strategies", "plan_pruning", "prune", "prune_channels_",
    "prune_model", "psfp_schedule", "recalibrate_batchnorm_", "register_strategy", "resolve_alignment", "run_strategy",
    "select_removal", "smallest_removal", "zero_channels_",
]
