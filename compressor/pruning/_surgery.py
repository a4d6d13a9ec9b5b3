"""Channel surgery: physically slice parameters and buffers, then fix module attributes.

The result is the same Python model with smaller ``Conv2d``/``BatchNorm2d``/``Linear``/...
layers: no masks, no hooks, no zeroed filters. Device, dtype and train/eval mode are kept.
"""
from __future__ import annotations

import copy
import functools
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.graph import DependencyGraph, Member
from compressor.common.errors import CompressorError


def _group_layout(member: Member, kept: np.ndarray) -> np.ndarray:
    """For a grouped conv's input member: which weight input slots (axis 1) survive."""
    g = member.groups
    grid = kept.reshape(g, -1)
    if member.group_mode == "group":
        whole = grid.all(axis=1)
        if not np.array_equal(whole, grid.any(axis=1)):
            raise CompressorError(f"internal: partial conv group removal in '{member.module}'")
        return np.ones(grid.shape[1], dtype=bool)
    slots = grid.all(axis=0)
    if not np.array_equal(slots, grid.any(axis=0)):
        raise CompressorError(f"internal: uneven slot removal across groups in '{member.module}'")
    return slots


def _replace(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    if name in module._parameters:
        module._parameters[name] = _wrap(module._parameters[name], tensor)
    elif name in module._buffers:
        module._buffers[name] = tensor.contiguous()
    else:
        raise CompressorError(f"'{name}' is neither a parameter nor a buffer of {type(module).__name__}")


def _slice_plan(modules: dict[str, nn.Module], graph: DependencyGraph, removed: np.ndarray
                ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int]]:
    """New (sliced) tensors per module and attribute, and new conv group counts."""
    if bool((removed & ~(graph.producer & ~graph.blocked)).any()):
        bad = np.flatnonzero(removed & ~(graph.producer & ~graph.blocked))[:5]
        raise CompressorError(f"atoms {bad.tolist()} are blocked and cannot be removed")
    slices: dict[str, list[tuple[str, int, torch.Tensor]]] = defaultdict(list)
    groups: dict[str, int] = {}
    for m, member in enumerate(graph.members):
        kept = graph.kept_mask(m, removed)
        if member.kind == "conv_in" and member.groups > 1:
            if member.group_mode == "group":
                groups[member.module] = int(kept.reshape(member.groups, -1).all(axis=1).sum())
            kept = _group_layout(member, kept)
        if not kept.all():
            index = torch.from_numpy(np.flatnonzero(kept))  # one index for every tensor of the member
            for name, axis in member.tensors:
                slices[member.module].append((name, axis, index))
    plan: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    with torch.no_grad():
        for path, items in slices.items():
            module, sliced = modules[path], plan[path]
            for name, axis, index in items:
                tensor = sliced.get(name, getattr(module, name))
                if tensor is None:
                    continue
                if index.device != tensor.device:
                    index = index.to(tensor.device)
                sliced[name] = tensor.index_select(axis, index)
    return plan, groups


def _wrap(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    if isinstance(old, nn.Parameter):
        return nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)
    return new.contiguous()


def prune_channels_(model: nn.Module, graph: DependencyGraph, removed: np.ndarray) -> dict[str, dict[str, int]]:
    """Remove the atoms flagged in ``removed`` from ``model`` in place.

    Args:
        model: the model the graph was built from.
        graph: its dependency graph.
        removed: bool per atom; removable atoms only.

    Returns:
        ``{module name: {attribute: new value}}`` for every resized module.
    """
    modules = dict(model.named_modules())
    plan, groups = _slice_plan(modules, graph, removed)
    for path, tensors in plan.items():
        for name, tensor in tensors.items():
            _replace(modules[path], name, tensor)
    return {path: _fix_attributes(modules[path], groups.get(path)) for path in set(plan) | set(groups)}


def pruned_copy(model: nn.Module, graph: DependencyGraph, removed: np.ndarray) -> nn.Module:
    """A pruned copy of ``model``; the original is untouched and shares no tensor with the copy.

    The copy is built module by module (:func:`copy_module_tree`): sliced tensors are the new
    ones, every other parameter and buffer is cloned, and nothing is copied twice.
    """
    modules = dict(model.named_modules())
    plan, groups = _slice_plan(modules, graph, removed)
    replacements: dict[int, torch.Tensor] = {}
    for path, tensors in plan.items():
        for name, tensor in tensors.items():
            old = getattr(modules[path], name)
            replacements[id(old)] = _wrap(old, tensor)
    copy_, copies = copy_module_tree(model, replacements, modules)
    for path in set(plan) | set(groups):
        _fix_attributes(copies[path], groups.get(path))
    return copy_


_COPY_PROTOCOL = ("__deepcopy__", "__reduce_ex__", "__reduce__", "__getstate__")
_ATOMIC = frozenset((type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device,
                     torch.memory_format, torch.layout))
_EMPTY_CONTAINERS = frozenset((dict, OrderedDict, list, set))
_TENSOR_DICTS = ("_parameters", "_buffers", "_modules")


@functools.lru_cache(maxsize=None)
def _copies_like_a_module(cls: type) -> bool:
    """Whether ``copy.deepcopy`` would copy an instance of ``cls`` as it copies any nn.Module."""
    return all(getattr(cls, name, None) is getattr(nn.Module, name, None) for name in _COPY_PROTOCOL)


@functools.lru_cache(maxsize=None)
def _restores_only_missing_defaults(cls: type) -> bool:
    """torch.nn's own ``__setstate__`` methods only add attributes an old pickle lacks."""
    return getattr(cls.__setstate__, "__module__", "").startswith("torch.nn.")


def copy_module_tree(model: nn.Module, replacements: dict[int, torch.Tensor] | None = None,
                     modules: dict[str, nn.Module] | None = None) -> tuple[nn.Module, dict[str, nn.Module]]:
    """``copy.deepcopy(model, memo)``, without deepcopy's per-object overhead for modules.

    ``replacements`` maps ``id(tensor)`` to the tensor the copy gets instead (a sliced one).
    Every other parameter and buffer is cloned; module attributes that are not numbers,
    strings or empty containers are deep-copied with the same memo, so that references between
    modules and tensors land on the copies. A model with a class that customises copying
    (``__deepcopy__``, ``__getstate__`` ...) is copied by ``copy.deepcopy`` itself.

    ``modules`` is ``dict(model.named_modules())`` when the caller has it. Returns the copy and
    its modules by the same names.
    """
    memo: dict[int, Any] = dict(replacements or {})
    modules = modules if modules is not None else dict(model.named_modules())
    if not all(_copies_like_a_module(type(m)) for m in modules.values()):
        copy_ = copy.deepcopy(model, memo)
        return copy_, dict(copy_.named_modules())
    for module in modules.values():
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None and id(tensor) not in memo:
                memo[id(tensor)] = _clone(tensor, memo)
    for module in modules.values():
        memo[id(module)] = object.__new__(type(module))
    for module in modules.values():
        state = dict(module.__dict__)
        for key, value in state.items():
            kind = type(value)
            if kind in _ATOMIC:
                continue
            if key in _TENSOR_DICTS:
                state[key] = {k: None if v is None else memo[id(v)] for k, v in value.items()}
            elif kind in _EMPTY_CONTAINERS and not value:
                state[key] = kind()
            elif not (kind is tuple and all(type(v) in _ATOMIC for v in value)):
                state[key] = copy.deepcopy(value, memo)
        shell = memo[id(module)]
        if _restores_only_missing_defaults(type(module)):
            shell.__dict__ = state  # a live module's state lacks nothing
        else:
            shell.__setstate__(state)  # as deepcopy does
    return memo[id(model)], {name: memo[id(module)] for name, module in modules.items()}


def _clone(tensor: torch.Tensor, memo: dict[int, Any]) -> torch.Tensor:
    if type(tensor) is nn.Parameter and tensor.layout == torch.strided and not tensor.__dict__:
        return nn.Parameter(tensor.detach().clone(memory_format=torch.preserve_format), tensor.requires_grad)
    if type(tensor) is torch.Tensor and tensor.layout == torch.strided and not tensor.__dict__ and tensor.is_leaf:
        out = tensor.detach().clone(memory_format=torch.preserve_format)
        return out.requires_grad_(tensor.requires_grad)
    return copy.deepcopy(tensor, memo)  # subclasses, sparse, quantized ...: torch's own rules


def _fix_attributes(module: nn.Module, groups: int | None) -> dict[str, int]:
    """Make a module's size attributes agree with its (sliced) tensors."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if groups is not None:
            module.groups = groups
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
        return {"in_features": module.in_features, "out_features": module.out_features}
    if isinstance(module, (nn.modules.batchnorm._NormBase,)):
        ref = module.weight if module.weight is not None else module.running_mean
        if ref is not None:
            module.num_features = ref.shape[0]
        return {"num_features": module.num_features}
    if isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            module.normalized_shape = (module.weight.shape[0],)
        return {"normalized_shape": module.normalized_shape[0]}
    if isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()
        return {"num_parameters": module.num_parameters}
    if isinstance(module, nn.GroupNorm) and module.weight is not None:
        # only GroupNorms with one channel per group are pruned (the graph blocks the others)
        module.num_channels = module.num_groups = module.weight.shape[0]
        return {"num_channels": module.num_channels}
    if type(module).__name__ == "BlurPool2d" and getattr(module, "channels", None) is not None:
        module.channels = module.filt.shape[0]  # timm's: one filter row per channel
        return {"channels": module.channels}
    return {}


def zero_channels_(model: nn.Module, graph: DependencyGraph, removed: np.ndarray) -> None:
    """Zero, in place, the producers of the atoms flagged in ``removed`` (soft pruning).

    Conv/Linear output rows and biases, BatchNorm scales, shifts and running means, and channel-wise
    parameters are zeroed, so the channels are exactly 0 downstream through any activation
    with f(0) = 0. This is the masked oracle that physical pruning must equal, and the
    "soft" step of PSFP.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for m, member in enumerate(graph.members):
            drop = ~graph.kept_mask(m, removed)
            if not drop.any() or member.kind in ("conv_in", "linear_in"):
                continue
            module = modules[member.module]
            index = torch.from_numpy(np.flatnonzero(drop))
            # a BatchNorm's scale is zeroed too: in train mode BN would blow a small regrowing filter
            # back up to unit variance (PSFP), so the channel is held at 0 by gamma = beta = 0
            names = {"bn": ("weight", "bias", "running_mean")}.get(member.kind, tuple(n for n, _ in member.tensors))
            for name, axis in member.tensors:
                tensor = getattr(module, name)
                if name in names and tensor is not None:
                    tensor.index_fill_(axis, index.to(tensor.device), 0.0)
