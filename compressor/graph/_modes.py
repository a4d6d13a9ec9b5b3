"""Train and eval modes: run a model in one and give every submodule its own mode back afterwards;
tell which calls of a model's train-mode trace its eval-mode trace also makes.

The dependency graph traces both modes (see ``_graph``). Most models trace the same calls in
both, but for the mode flags their functional calls take (``F.dropout(x, p, training=True)``,
``F.batch_norm(..., training)``): those flags change values, never shapes or channels, so
:func:`call_key` leaves them out and such calls count as the same, and :func:`with_eval_flags`
sets them as in eval mode in a train-mode trace that is run for its shapes (train-mode
BatchNorm refuses one value per channel, and would update running statistics).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Graph, Node


def module_modes(model: nn.Module) -> dict[str, bool]:
    """``{module name: training}`` for every submodule (the root is ``""``)."""
    return {name: module.training for name, module in model.named_modules()}


def restore_modes_(model: nn.Module, modes: dict[str, bool]) -> None:
    """Set each submodule named in ``modes`` back to its recorded mode (others are left as they are)."""
    for name, module in model.named_modules():
        if name in modes:
            module.training = modes[name]


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the duration; restores per-module modes (a frozen BN stays frozen).

    ``model.train(was_training)`` would instead reset every submodule to the root's mode.
    """
    with _in_mode(model, False):
        yield model


@contextlib.contextmanager
def training(model: nn.Module) -> Iterator[nn.Module]:
    """``model.train()`` for the duration (every submodule, frozen ones too); restores per-module modes.

    The dependency graph traces the train-mode forward with it (auxiliary heads that run only
    when ``self.training``)."""
    with _in_mode(model, True):
        yield model


@contextlib.contextmanager
def buffers_kept(model: nn.Module) -> Iterator[nn.Module]:
    """Put every buffer's values back afterwards: running a train-mode trace for its shapes must not
    change the model (fake tensors write through to real ones in place: ``num_batches_tracked.add_(1)``)."""
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def _in_mode(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    modes = [(module, module.training) for module in model.modules()]
    model.train(train)
    try:
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


# ---- comparing the two traces -------------------------------------------------------------------

# functions whose mode flag (and, for batch_norm, the running-average momentum) is only a value:
# name -> (position, keyword) of each such argument
_MODE_ARGUMENTS: dict[Any, tuple[tuple[int, str], ...]] = {
    F.batch_norm: ((5, "training"), (6, "momentum")),
    F.instance_norm: ((5, "use_input_stats"), (6, "momentum")),
    **{fn: ((2, "training"),) for fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                                         F.feature_alpha_dropout)},
    torch.dropout: ((2, "train"),),
}
_MODE_ARGUMENTS_BY_NAME = {"torchvision.ops.stochastic_depth.stochastic_depth": ((3, "training"),)}
_MODE = object()  # what a mode flag reads as in a key
# the flags that read False in eval mode, of the functions above: every one but instance_norm's
# (use_input_stats=False needs running statistics that train mode may not pass)
_NOT_EVAL_FLAGS = ("momentum", "use_input_stats")


def _mode_arguments(target: Any) -> tuple[tuple[int, str], ...]:
    try:
        found = _MODE_ARGUMENTS.get(target)
    except TypeError:  # an unhashable callable
        return ()
    if found is None:
        found = _MODE_ARGUMENTS_BY_NAME.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}")
    return found or ()


def with_eval_flags(graph: Graph) -> Graph:
    """Set, in place, the mode flags of ``graph``'s functional calls to False, as in eval mode:
    the train-mode trace then runs the train-mode code path with eval-mode arithmetic. A
    ``batch_norm`` keeps ``training=True`` when it is given no running statistics (eval mode
    would refuse it). Returns ``graph``."""
    for node in graph.nodes:
        flags = _mode_arguments(node.target) if node.op == "call_function" else ()
        if not flags:
            continue
        args, kwargs = list(node.args), dict(node.kwargs)
        if node.target is F.batch_norm and any(
                (args[i] if i < len(args) else kwargs.get(name)) is None for i, name in ((1, "running_mean"),
                                                                                        (2, "running_var"))):
            continue
        for index, name in flags:
            if name in _NOT_EVAL_FLAGS:
                continue
            if index < len(args):
                args[index] = False
            elif name in kwargs:
                kwargs[name] = False
        node.args, node.kwargs = tuple(args), kwargs
    return graph


def _canonical(obj: Any, nodes: dict[Node, Any]) -> Any:
    """A hashable stand-in for a node argument; a node reads as ``nodes[node]`` (itself if absent)."""
    if isinstance(obj, Node):
        return ("node", nodes.get(obj, obj))
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_canonical(o, nodes) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _canonical(v, nodes)) for k, v in obj.items()))
    if isinstance(obj, slice):
        return ("slice", _canonical(obj.start, nodes), _canonical(obj.stop, nodes), _canonical(obj.step, nodes))
    if isinstance(obj, torch.Tensor):
        return ("tensor", id(obj))
    try:
        hash(obj)
    except TypeError:
        return ("object", id(obj))
    return (type(obj), obj)  # the type too: True, 1 and 1.0 hash alike


def call_key(node: Node, nodes: dict[Node, Any]) -> tuple:
    """What ``node`` computes, as a hashable key: op, target and arguments, the arguments that are
    nodes read through ``nodes`` (a node of another trace -> its counterpart), mode flags left out.
    Two nodes with equal keys compute the same shapes and channels from the same inputs."""
    args, kwargs = node.args, dict(node.kwargs)
    flags = _mode_arguments(node.target) if node.op == "call_function" else ()
    if flags:
        args = list(args)
        for index, name in flags:
            if index < len(args):
                args[index] = _MODE
            if name in kwargs:
                kwargs[name] = _MODE
    return (node.op, _canonical(node.target, nodes), _canonical(tuple(args), nodes), _canonical(kwargs, nodes))


def same_calls(a: Graph, b: Graph) -> bool:
    """Whether two traces of one model make the same calls, in order (mode flags aside)."""
    nodes_a, nodes_b = list(a.nodes), list(b.nodes)
    if len(nodes_a) != len(nodes_b):
        return False
    as_a = dict(zip(nodes_b, nodes_a))
    return all(call_key(x, {}) == call_key(y, as_a) for x, y in zip(nodes_a, nodes_b))
