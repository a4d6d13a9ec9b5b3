"""Dependency graph: trace a model, propagate channel labels through every op, group coupled
channels, and count what the model costs (parameters, MACs/FLOPs, feature maps).

Adding an op handler: write it in ``_ops.py`` (channel ops) or ``_ops_shape.py`` (data movement)
and register it for a module class, function or tensor method in ``_op_table.py``.
"""
from __future__ import annotations

from compressor.graph._cost import CostReport, LayerCostRow, count_cost, flop_counter
from compressor.graph._graph import ChannelGroup, DependencyGraph, Member, PRODUCER_KINDS, RESIDUAL_POLICIES, build_dependency_graph, symbolic_trace, trace_graph
from compressor.graph._detectors import (Boundary, NetworkView, Part, deployable_module, network_view, part_rows,
                                         with_boundaries)
from compressor.graph._inputs import as_tuple
from compressor.graph._modes import buffers_kept, evaluating, module_modes, restore_modes_, training, with_eval_flags
from compressor.graph._shape_exec import LayerMismatch, run_shapes

__all__ = [
    "Boundary", "ChannelGroup", "CostReport", "NetworkView", "Part", "deployable_module", "network_view", "part_rows", "with_boundaries", "DependencyGraph", "LayerCostRow", "LayerMismatch", "Member",
    "PRODUCER_KINDS", "RESIDUAL_POLICIES", "as_tuple", "build_dependency_graph", "count_cost", "evaluating",
    "flop_counter", "module_modes", "restore_modes_", "run_shapes", "symbolic_trace", "trace_graph",
    "buffers_kept", "training", "with_eval_flags",
]
