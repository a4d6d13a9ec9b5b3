"""The pruning engine: model + example input + PruneConfig -> physically smaller model and its report.

``prune_model`` prunes in one call; ``plan_pruning`` traces and scores once, then applies any target.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.fx import GraphModule

from compressor.pruning._align import resolve_alignment
from compressor.graph import (as_tuple, build_dependency_graph, DependencyGraph, evaluating, LayerMismatch,
                              NetworkView, buffers_kept, network_view, run_shapes, trace_graph, with_boundaries,
                              with_eval_flags)
from compressor.pruning._config import PruneConfig
from compressor.criteria import CriterionContext, get_criterion
from compressor.pruning._select import select_removal
from compressor.pruning._surgery import copy_module_tree, prune_channels_, pruned_copy

from torch._subclasses.fake_tensor import FakeTensorMode
from compressor.common.errors import CompressorError

SCHEMA_VERSION = 1


@dataclass
class LayerChange:
    """One conv/Linear layer before and after pruning (MACs are per sample)."""

    name: str
    kind: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int
    macs_before: float
    macs_after: float


@dataclass
class PruneReport:
    """What pruning did. FLOPs = 2 x MACs; MACs are per sample at the example input's size.

    ``seconds`` holds the wall-clock time of each phase: ``graph`` (trace and channel groups),
    ``select`` (scoring and choosing the channels), ``surgery`` (slicing, and the copy unless in
    place), ``verify`` (the pruned model's shapes checked; 0 with ``verify=False``), ``cost``
    (this report), ``refit`` (only for criteria that refit the kept weights) and ``total``
    (their sum).
    """

    config: dict[str, Any]
    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    channels_removed: int
    channels_removable: int
    layers: list[LayerChange]
    blocked: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def flops_before(self) -> float:
        return 2 * self.macs_before

    @property
    def flops_after(self) -> float:
        return 2 * self.macs_after

    @property
    def flops_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(flops_before=self.flops_before, flops_after=self.flops_after,
                   flops_ratio=self.flops_ratio, params_ratio=self.params_ratio)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PruneReport":
        """The report :meth:`to_dict` wrote (derived ratios are recomputed, not read)."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"prune report schema_version {version!r} is not the supported {SCHEMA_VERSION}")
        names = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in data.items() if k in names}
        fields["layers"] = [LayerChange(**row) for row in data.get("layers", [])]
        return cls(**fields)


@dataclass
class PruneResult:
    model: nn.Module
    report: PruneReport
    graph: DependencyGraph
    removed: np.ndarray


def prune_model(model: nn.Module, example_inputs: Any, config: PruneConfig, *, inplace: bool = False,
                verify: bool = True, data: Any = None, loss_fn: Any = None) -> PruneResult:
    """Prune ``model`` physically according to ``config``.

    Args:
        model: the network; left untouched unless ``inplace=True``.
        example_inputs: a tensor or tuple of inputs used to trace the model; MACs are per
            sample at this input size.
        config: criterion and target.
        inplace: slice ``model`` itself instead of a deep copy.
        verify: run the pruned model once on ``example_inputs`` to check that it executes.
        data: map-style dataset of ``(x, y)`` items for data-based criteria (calibration).
        loss_fn: ``loss_fn(output, y) -> scalar`` for data-based criteria; default cross entropy.

    Raises:
        TraceError, UnprunableModelError, UnreachableTargetError, ValueError (see messages);
        ValueError when a data-based criterion gets no ``data``.
    """
    config = resolve_alignment(config)
    if config.boundary and not isinstance(model, NetworkView):
        return _prune_with_boundaries(model, example_inputs, config, inplace=inplace, verify=verify, data=data,
                                      loss_fn=loss_fn)
    view = None if config.submodule else network_view(model)
    if view is not None and view is not model:
        return _prune_network(model, example_inputs, config, inplace=inplace, verify=verify, data=data,
                              loss_fn=loss_fn)
    if config.submodule:
        _check_data(config, data)
        return _prune_submodule(model, example_inputs, config, inplace=inplace, verify=verify, data=data,
                                loss_fn=loss_fn)
    plan = plan_pruning(model, example_inputs, config, data=data, loss_fn=loss_fn)
    t0 = time.perf_counter()
    removed = select_removal(plan.graph, plan.scores, config)
    plan.seconds["select"] += time.perf_counter() - t0
    return plan.apply(removed, inplace=inplace, verify=verify)


def _check_data(config: PruneConfig, data: Any) -> None:
    if get_criterion(config.criterion).needs_data and data is None:
        raise ValueError(f"criterion {config.criterion!r} is data-based and needs calibration data "
                         "(prune_model(..., data=dataset); CLI: --data digits)")


@dataclass
class PruningPlan:
    """A model's dependency graph and channel scores, before any channel is chosen.

    :func:`prune_model` chooses the channels for the config's target; a caller with another way
    to choose them (a latency table, see ``benchmarks``) scores once and applies many choices.
    """

    model: nn.Module
    example_inputs: Any
    config: PruneConfig
    graph: DependencyGraph
    scores: np.ndarray  # per atom; low = remove first
    context: CriterionContext
    seconds: dict[str, float]

    def apply(self, removed: np.ndarray, *, inplace: bool = False, verify: bool = True,
              record: dict[str, Any] | None = None) -> PruneResult:
        """Remove the atoms flagged in ``removed`` (and run the criterion's refit, if it has one)."""
        spec = get_criterion(self.config.criterion)
        original = copy_module_tree(self.model)[0] if inplace and spec.after_removal else self.model
        result = apply_removal(self.model, self.example_inputs, self.graph, removed, self.config, inplace=inplace,
                               verify=verify, record=record)
        seconds = {**self.seconds, **result.report.seconds}
        if spec.after_removal:
            t0 = time.perf_counter()
            after = spec.after_removal(original, result.model, self.graph, removed, self.context)
            if after:
                result.report.config["after_removal"] = after
            seconds["refit"] = time.perf_counter() - t0
        seconds.pop("total", None)
        result.report.seconds = {**seconds, "total": sum(seconds.values())}
        return result


def plan_pruning(model: nn.Module, example_inputs: Any, config: PruneConfig, *, data: Any = None,
                 loss_fn: Any = None) -> PruningPlan:
    """Trace ``model`` and score its channels with ``config``'s criterion (see :func:`prune_model`)."""
    _check_data(config, data)
    if config.submodule:
        raise ValueError("plan_pruning takes the whole model; a submodule is pruned by prune_model")
    config = resolve_alignment(config)
    spec = get_criterion(config.criterion)
    t0 = time.perf_counter()
    graph = graph_for(model, example_inputs, config)
    t1 = time.perf_counter()
    ctx = CriterionContext(example_inputs=as_tuple(example_inputs), data=data, loss_fn=loss_fn,
                           batch_size=config.calib_batch_size, num_batches=config.calib_batches,
                           options=spec.resolve_options(config.criterion_options), seed=config.seed)
    scores = spec(model, graph, ctx)
    return PruningPlan(model, example_inputs, config, graph, scores, ctx,
                       {"graph": t1 - t0, "select": time.perf_counter() - t1})


def graph_for(model: nn.Module, example_inputs: Any, config: PruneConfig) -> DependencyGraph:
    """The dependency graph ``config`` prunes (its exclusions, LayerNorm and residual policies)."""
    return build_dependency_graph(model, example_inputs, exclude=config.exclude,
                                  allow_renormalization=config.allow_renormalization, residual=config.residual)


def apply_removal(model: nn.Module, example_inputs: Any, graph: DependencyGraph, removed: np.ndarray,
                  config: PruneConfig, *, inplace: bool = False, verify: bool = True,
                  record: dict[str, Any] | None = None) -> PruneResult:
    """Physically remove the atoms flagged in ``removed`` (bool per atom of ``graph``).

    This is the last step of :func:`prune_model`, and of the strategies that choose their
    channels themselves (PSFP, Auto-Balance, Play-and-Prune). ``record`` replaces the history
    entry written into the model's metadata (default: the prune config and cost ratios).
    """
    t0 = time.perf_counter()
    if inplace:
        target = model
        prune_channels_(target, graph, removed)
    else:
        target = pruned_copy(model, graph, removed)
    t1 = time.perf_counter()
    if verify:
        _verify_runs(target, example_inputs, graph)
    t2 = time.perf_counter()
    # the graph has the unpruned cost; the pruned one follows from the kept channel counts
    kept = graph.kept_counts(removed)
    macs_after, params_after = graph.cost(kept)
    report = PruneReport(
        config=config.to_dict(), macs_before=graph.macs, macs_after=macs_after,
        params_before=graph.params, params_after=int(round(params_after)),
        channels_removed=int(removed.sum()), channels_removable=int(graph.removable.size),
        layers=layer_changes(graph, kept), blocked=dict(graph.unsupported),
        seconds={"surgery": t1 - t0, "verify": t2 - t1},
    )
    metadata = dict(getattr(model, "compressor_metadata", {}) or {})
    entry = record if record is not None else {"step": "prune", "config": config.to_dict()}
    metadata["history"] = [*metadata.get("history", []),
                           {**entry, "flops_ratio": report.flops_ratio, "params_ratio": report.params_ratio}]
    target.compressor_metadata = metadata
    report.seconds["cost"] = time.perf_counter() - t2
    report.seconds["total"] = sum(report.seconds.values())
    return PruneResult(target, report, graph, removed)


def _prune_network(model: nn.Module, example_inputs: Any, config: PruneConfig, *, inplace: bool, verify: bool,
                   data: Any = None, loss_fn: Any = None) -> PruneResult:
    """Prune a whole detector through its network view (see ``compressor.graph.network_view``):
    backbone, neck and heads are traced and pruned together, every raw head output is protected,
    and the parts the view leaves out (transform, anchors, NMS) run unchanged after it."""
    target = model if inplace else copy.deepcopy(model)
    view = network_view(target)
    result = prune_model(view, view.network_input(example_inputs), config, inplace=True, verify=verify, data=data,
                         loss_fn=loss_fn)
    target.compressor_metadata = {**result.model.__dict__.get("compressor_metadata", {}),
                                  "network": {"family": view.family, "outputs": view.output_names()}}
    return PruneResult(target, result.report, result.graph, result.removed)


def _prune_with_boundaries(model: nn.Module, example_inputs: Any, config: PruneConfig, *, inplace: bool,
                           verify: bool, data: Any = None, loss_fn: Any = None) -> PruneResult:
    """Prune ``model`` with ``config.boundary``'s submodules run as opaque leaves (never traced or
    pruned; the channels they read are protected)."""
    target = model if inplace else copy.deepcopy(model)
    inner = PruneConfig.from_dict({**config.to_dict(), "boundary": ()})
    with with_boundaries(target, config.boundary):
        result = prune_model(target, example_inputs, inner, inplace=True, verify=verify, data=data, loss_fn=loss_fn)
    result.report.config = config.to_dict()
    return PruneResult(target, result.report, result.graph, result.removed)


def _prune_submodule(model: nn.Module, example_inputs: Any, config: PruneConfig, *, inplace: bool,
                     verify: bool, data: Any = None, loss_fn: Any = None) -> PruneResult:
    """Prune ``model.get_submodule(config.submodule)`` with the inputs it sees in a real forward."""
    name = config.submodule
    try:
        sub = model.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in model.named_children()]
        raise ValueError(f"submodule {name!r} does not exist in {type(model).__name__}; "
                         f"its children are {children}") from None
    captured = capture_inputs(model, sub, example_inputs)
    inner = PruneConfig.from_dict({**config.to_dict(), "submodule": None})
    if data is not None:
        raise ValueError("data-based criteria cannot prune a submodule yet: the calibration data feeds the "
                         "whole model; use a weight-based criterion with submodule")
    result = prune_model(sub, captured, inner, inplace=inplace, verify=verify)
    target = model if inplace else copy.deepcopy(model)
    if not inplace:
        parent, _, attr = name.rpartition(".")
        setattr(target.get_submodule(parent) if parent else target, attr, result.model)
    result.report.config = config.to_dict()
    target.compressor_metadata = {**result.model.__dict__.get("compressor_metadata", {})}
    return PruneResult(target, result.report, result.graph, result.removed)


def capture_inputs(model: nn.Module, submodule: nn.Module, example_inputs: Any) -> tuple[Any, ...]:
    """The positional inputs ``submodule`` receives when ``model`` runs on ``example_inputs``."""

    seen: list[tuple[Any, ...]] = []

    def hook(module, args, kwargs):
        if not seen:
            if kwargs:
                raise ValueError(f"the submodule is called with keyword arguments {sorted(kwargs)}; only "
                                 "positional inputs can be traced")
            seen.append(args)

    handle = submodule.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with evaluating(model), torch.no_grad():
            model(*as_tuple(example_inputs))
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"{type(submodule).__name__} was not called when running the model on the example input")
    return seen[0]


def layer_changes(graph: DependencyGraph, kept: np.ndarray) -> list[LayerChange]:
    """Per conv/Linear layer: channels and MACs before and after (repeated calls summed)."""
    rows: dict[str, LayerChange] = {}
    for layer in graph.layers:
        out_after, in_after = layer.kept_widths(kept)
        before = layer.macs(layer.out_size, layer.in_size)
        after = layer.macs(out_after, in_after)
        row = rows.get(layer.module)
        if row is None:
            rows[layer.module] = LayerChange(layer.module, layer.kind, layer.in_size, in_after, layer.out_size,
                                             out_after, before, after)
        else:
            row.macs_before += before
            row.macs_after += after
    return list(rows.values())


def _verify_runs(model: nn.Module, example_inputs: Any, graph: DependencyGraph | None = None) -> None:
    """Check that the pruned ``model`` runs on ``example_inputs``; shapes are what surgery can get wrong.

    With the ``graph`` it was pruned by (traced on meta tensors), the traced forward runs again on
    meta tensors with the pruned layers: every layer's weights are checked against the shapes that
    reach it, and its size attributes against its tensors (a few ms). If that fails, the pruned
    model is traced afresh and checked the same way; if that fails too, the model's own forward
    runs on fake tensors, which decides.

    When the graph holds a train-mode trace (it differs from the eval one), the train-mode forward
    is checked the same way, with every layer in eval mode as the graph ran it; unless that trace
    failed on the example input already (``graph.train_cut``: there is nothing to check it against).

    Raises:
        CompressorError: the pruned model does not run (in eval or train mode), or a layer disagrees
            with its own tensors.
    """

    inputs = as_tuple(example_inputs)
    _verify_mode(model, inputs, graph, train=False)
    if graph is not None and graph.traced_train is not None and not graph.train_cut:
        _verify_mode(model, inputs, graph, train=True)


def _verify_mode(model: nn.Module, inputs: tuple[Any, ...], graph: DependencyGraph | None, train: bool) -> None:
    """:func:`_verify_runs` for the eval-mode forward, or for the train-mode one (``train``)."""
    traced = None if graph is None else (graph.traced_train if train else graph.traced)
    if traced is not None and graph.execution == "meta":
        # the unpruned model's trace first; a fresh trace when that one holds sizes read from
        # module attributes surgery has changed (ConvNeXt's LayerNorm2d passes normalized_shape)
        for candidate in (lambda: traced, lambda: _fresh_trace(model, train)):
            try:
                with evaluating(model):
                    run_shapes(candidate(), model, inputs)
                return
            except LayerMismatch as exc:
                raise CompressorError(f"internal error: a pruned layer disagrees with its tensors: {exc}") from exc
            except Exception:  # noqa: BLE001  (the model's own forward below decides)
                pass
    # train mode: the traced train-mode forward with eval-mode layers, as the graph ran it; fake
    # tensors write through to real buffers in place (num_batches_tracked.add_(1)): they are put back
    forward = _train_forward(model, traced) if train else model
    kept = (lambda: buffers_kept(model)) if train else contextlib.nullcontext
    try:  # fake tensors check the shapes without arithmetic
        with evaluating(model), kept(), torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            forward(*inputs)
        return
    except Exception as exc:  # noqa: BLE001
        failure = exc
    if graph is not None and graph.execution == "real":
        # the graph itself needed real values (RoI pooling picks boxes with nonzero(): its output
        # size depends on the data), so real tensors decide here too
        try:
            with evaluating(model), kept(), torch.no_grad():
                forward(*inputs)
            return
        except Exception as exc:  # noqa: BLE001
            failure = exc
    in_mode = " in train mode" if train else ""
    raise CompressorError(f"internal error: the pruned model does not run{in_mode}: {type(failure).__name__}: "
                          f"{failure}") from failure


def _fresh_trace(model: nn.Module, train: bool) -> Any:
    """The model's eval-mode trace, or its train-mode one run as the graph runs it (flags as in eval)."""
    return with_eval_flags(trace_graph(model, "train")) if train else trace_graph(model, "eval")


def _train_forward(model: nn.Module, traced: Any) -> nn.Module:
    """The train-mode forward of ``model`` as a module (its trace, run with the model's layers)."""
    try:
        return GraphModule(model, traced if traced is not None else _fresh_trace(model, True))
    except Exception as exc:  # noqa: BLE001
        raise CompressorError(f"internal error: the pruned model's train-mode forward cannot be rebuilt: "
                              f"{type(exc).__name__}: {exc}") from exc
