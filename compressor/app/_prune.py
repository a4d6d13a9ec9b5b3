"""``compressor.prune``: the one way to prune, whatever the target.

A FLOPs, params or ratio target goes to the pruning engine (:func:`compressor.pruning.prune_model`),
a training strategy to :func:`compressor.pruning.run_strategy`, and a latency budget to
:func:`prune_to_latency`, which measures on the deployment runtime. Each path first resolves
``round_to="auto"`` with the runtime probe, so the widths fit the target's vector blocks; the
lower-level functions stay available for finer control.
"""
from __future__ import annotations

from typing import Any

from torch import nn

import compressor.app._alignment as _alignment
from compressor.app._latency_prune import LatencyPruneResult, prune_to_latency
from compressor.graph import as_tuple
from compressor.pruning import (TARGET_KEYS, PruneConfig, PruneResult, StrategyConfig, StrategyResult, prune_model, run_strategy,
                                strategy_config_from_dict)

__all__ = ["prune"]


def prune(model: nn.Module, example_inputs: Any, config: PruneConfig | str | None = None, *, strategy: Any = None,
          latency_budget_ms: float | None = None, data: Any = None, loss_fn: Any = None, train_config: Any = None,
          inplace: bool = False,
          strategy_options: dict[str, Any] | None = None, latency_options: dict[str, Any] | None = None,
          **options: Any) -> PruneResult | StrategyResult | LatencyPruneResult:
    """Prune ``model`` physically; the result's ``.model`` is the smaller network.

    Args:
        model: the trained network (not modified unless ``inplace=True`` on the plain path).
        example_inputs: a tensor or tuple used to trace the model; MACs are per sample at its size.
        config: a :class:`PruneConfig`, or none and its fields as keyword ``options``
            (``criterion="l2"``, ``target_flops=0.5``, ``ratio=0.3``, ``round_to=16``,
            ``runtime="openvino"`` ...), not both; a string is the criterion's name
            (``prune(model, x, "fpgm", ratio=0.3)``).
        strategy: a strategy's config object (e.g. ``PSFPConfig(epochs=5)``) or a registered
            strategy's name; training strategies need ``data``.
        latency_budget_ms: prune as little as possible while a batch runs within this budget on
            ``config.runtime`` (default onnxruntime), measured there; ``latency_options`` are
            :func:`prune_to_latency`'s keyword arguments (``method``, ``batch_size`` ...).
        data: map-style ``(x, y)`` dataset: calibration for data-based criteria, training data
            for strategies.
        loss_fn: ``loss_fn(output, y) -> scalar`` for data-based criteria and training.
        train_config: a strategy's optimiser, lr, batch size ... (:class:`TrainConfig`).

    Returns:
        :class:`PruneResult` (model, report, graph, removed channels); with ``strategy``, a
        :class:`StrategyResult` (model, cost before and after, history); with
        ``latency_budget_ms``, a :class:`LatencyPruneResult` (model and every measurement).

    Example: ``compressor.prune(model, torch.randn(1, 3, 224, 224), target_flops=0.5).model``.
    """
    if isinstance(config, str):
        config, options = None, {"criterion": config, **options}
    if config is not None and options:
        raise ValueError(f"pass a PruneConfig or its fields as keyword arguments, not both "
                         f"(got config and {sorted(options)})")
    if train_config is not None and strategy is None:
        raise ValueError("train_config is for a strategy's training phases; pass strategy= as well")
    if strategy is not None and latency_budget_ms is not None:
        raise ValueError("a strategy and a latency budget cannot be combined; prune to the budget, then fine-tune")
    if latency_budget_ms is not None and config is None and not options.keys() & set(TARGET_KEYS):
        options["target_flops"] = 1.0  # the latency search chooses the target
    config = config if config is not None else PruneConfig(**options)
    if latency_budget_ms is not None:
        if inplace:
            raise ValueError("inplace pruning is not available with a latency budget (candidates are copies)")
        extra = dict(latency_options or {})
        extra.setdefault("runtime", config.runtime or "onnxruntime")
        inputs = as_tuple(example_inputs)
        if len(inputs) != 1:
            raise ValueError("a latency budget needs a model with one input tensor")
        return prune_to_latency(model, tuple(inputs[0].shape[1:]), config, latency_budget_ms, data=data, **extra)
    config = _alignment.resolve_alignment(config)
    if strategy is not None:
        if inplace:
            raise ValueError("inplace pruning is not available with a strategy (the input model is kept)")
        return run_strategy(model, example_inputs, config, _strategy_config(strategy, strategy_options),
                            train_data=data, train_config=train_config, loss_fn=loss_fn)
    return prune_model(model, example_inputs, config, inplace=inplace, data=data, loss_fn=loss_fn)


def _strategy_config(strategy: StrategyConfig | str, options: dict[str, Any] | None) -> StrategyConfig:
    """A strategy's config object from itself, or from a registered name and its options."""
    if not isinstance(strategy, str):
        if options:
            raise ValueError("strategy_options are for a strategy given by name; set them on its config object")
        return strategy
    return strategy_config_from_dict(strategy, options or {})

