"""Pruning: plan, select (by score or cost-aware), physically remove channels (surgery), channel
alignment for the deployment target, and the training-time strategies of the papers.
"""
from __future__ import annotations

from compressor.pruning._align import alignment_summary, cpu_isa, ISA_TABLE, KINDS, resolve_alignment, table_alignment
from compressor.pruning._api import (LayerChange, plan_pruning, prune_model, PruneReport, PruneResult, PruningPlan,
                                     SCHEMA_VERSION as PRUNE_SCHEMA_VERSION)
from compressor.pruning._config import DEPLOY_RUNTIMES, PruneConfig, TARGET_KEYS
from compressor.pruning._select import select_removal, smallest_removal
from compressor.pruning._select_cost import cost_aware_path, RemovalPath
from compressor.pruning._strategies import psfp_schedule, recalibrate_batchnorm_, run_strategy, StrategyResult
from compressor.pruning._strategy_configs import (AutoBalanceConfig, get_strategy, IterativeConfig, list_strategies,
                                                  OneShotConfig, PlayAndPruneConfig, PSFPConfig, register_strategy,
                                                  strategy_config_from_dict, StrategyConfig)
from compressor.pruning._surgery import prune_channels_, zero_channels_

__all__ = [
    "DEPLOY_RUNTIMES", "LayerChange", "PruneConfig", "PruneReport", "PruneResult", "PruningPlan",
    "RemovalPath", "StrategyConfig", "OneShotConfig", "IterativeConfig", "PSFPConfig", "AutoBalanceConfig",
    "PlayAndPruneConfig", "strategy_config_from_dict", "StrategyResult", "TARGET_KEYS", "alignment_summary", "cost_aware_path",
    "ISA_TABLE", "KINDS", "cpu_isa", "table_alignment", "get_strategy", "list_strategies", "plan_pruning", "prune_channels_",
    "prune_model", "psfp_schedule", "recalibrate_batchnorm_", "register_strategy", "resolve_alignment", "run_strategy",
    "select_removal", "smallest_removal", "zero_channels_",
]
__all__ += ["PRUNE_SCHEMA_VERSION"]
