"""Pruning: plan, select (by score or cost-aware), physically remove channels (surgery), channel
alignment for the deployment target, and the training-time strategies of the papers.
"""
from __future__ import annotations

# the engine: plan, select, remove
from compressor.pruning._api import SCHEMA_VERSION as PRUNE_SCHEMA_VERSION
from compressor.pruning._api import LayerChange, PruneReport, PruneResult, PruningPlan, plan_pruning, prune_model
from compressor.pruning._config import DEPLOY_RUNTIMES, TARGET_KEYS, PruneConfig
from compressor.pruning._select import select_removal, smallest_removal
from compressor.pruning._select_cost import RemovalPath, cost_aware_path
from compressor.pruning._surgery import prune_channels_, zero_channels_
# channel alignment (round_to="auto"): what the engine applies; compressor.app measures the runtimes
from compressor.pruning._align import (ISA_TABLE, KINDS, NOT_MEASURED, alignment_summary, cpu_isa, resolve_alignment,
                                       table_alignment)
# strategies, each with its own config
from compressor.pruning._strategies import StrategyResult, psfp_schedule, recalibrate_batchnorm_, run_strategy
from compressor.pruning._strategy_configs import (AutoBalanceConfig, IterativeConfig, OneShotConfig, PlayAndPruneConfig,
                                                  PSFPConfig, StrategyConfig, get_strategy, list_strategies,
                                                  register_strategy, strategy_config_from_dict)

__all__ = [
    "DEPLOY_RUNTIMES", "PRUNE_SCHEMA_VERSION", "TARGET_KEYS", "LayerChange", "PruneConfig", "PruneReport",
    "PruneResult", "PruningPlan", "RemovalPath", "cost_aware_path", "plan_pruning", "prune_channels_", "prune_model",
    "select_removal", "smallest_removal", "zero_channels_",
    "ISA_TABLE", "KINDS", "NOT_MEASURED", "alignment_summary", "cpu_isa", "resolve_alignment", "table_alignment",
    "AutoBalanceConfig", "IterativeConfig", "OneShotConfig", "PSFPConfig", "PlayAndPruneConfig", "StrategyConfig",
    "StrategyResult", "get_strategy", "list_strategies", "psfp_schedule", "recalibrate_batchnorm_", "register_strategy",
    "run_strategy", "strategy_config_from_dict",
]
