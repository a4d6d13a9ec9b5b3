"""Functional forms of the layers ``_ops`` handles as modules, called with a module's own tensors.

``F.batch_norm``, ``F.group_norm``, ``F.layer_norm``, ``F.conv1d/2d/3d`` and ``F.linear`` couple
channels exactly as ``nn.BatchNorm2d``, ``nn.GroupNorm`` ... do, provided that the tensors they
take are parameters or buffers of a module: surgery can then slice them. timm's norm-act layers
(``BatchNormAct2d``, ``GroupNormAct``, ``LayerNormAct2d``, ``FrozenBatchNormAct2d``) and
hand-written blocks call them this way.

A parameter or buffer read in forward is a ``get_attr`` node. A 1-D one (a norm's scale, a
bias) already carries its own channel ids (``_ops._get_attr`` made it a ``param`` member of its
owner, which surgery slices), so a norm only couples those ids with its input's channels. A
conv or Linear weight becomes the ``conv_out``/``linear_out`` and ``conv_in``/``linear_in``
members of its owner, as for the module form. Anything else (a weight computed in forward, a
``num_groups`` or ``normalized_shape`` that would not shrink with the channels) blocks the
channels, with the reason.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx import Node

from compressor.graph._labels import Labels, from_vector, has_labels, unlabelled
from compressor.graph._ops import (
    _arg,
    _channel_vector_or_block,
    _labelled_inputs,
    _lab,
    _layernorm_common,
    _node_arg,
    _spatial_module,
    conv_layer,
    fresh_labels,
    linear_layer,
)


def owned_state(run, arg: Any) -> tuple[str, str, nn.Module] | None:
    """``(owner path, attribute, owner)`` when ``arg`` is a ``get_attr`` of a module's parameter or buffer."""
    if not (isinstance(arg, Node) and arg.op == "get_attr"):
        return None
    owner, _, name = str(arg.target).rpartition(".")
    module = run.modules.get(owner)
    if module is None or not (name in module._parameters or name in module._buffers):
        return None
    return owner, name, module


def _refuse(run, node: Node, labels: dict, value: Any, why: str) -> Any:
    for lab in _labelled_inputs(node, labels):
        run.coupling.block(lab, f"{why}: {run.where()}")
    return fresh_labels(value)


def _couple_vectors(run, node: Node, labels: dict, ids: torch.Tensor, params: tuple[tuple[int, str], ...],
                    what: str) -> bool:
    """Couple each per-channel tensor argument of ``node`` with the channel ``ids`` it scales.

    A tensor without channel ids of its own (computed in forward, or not a module's) cannot be
    sliced: the channels are blocked and False is returned.
    """
    for index, name in params:
        arg = _node_arg(node, index, name)
        if arg is None:
            continue
        lab = _lab(labels, arg)
        vec = lab.reshape(-1) if lab is not None and lab.numel() == ids.numel() else None
        if vec is None or bool(((vec < 0) & (ids >= 0)).any()):
            run.coupling.block(ids, f"{what} with a {name} that is not a module's parameter or buffer at {run.where()}")
            return False
        run.coupling.union(vec, ids)
    return True


def _input_channels(run, node: Node, labels: dict, value: torch.Tensor, what: str) -> tuple[Labels | None, torch.Tensor]:
    x = _lab(labels, _node_arg(node, 0, "input"))
    cdim = 1 if value.dim() >= 2 else 0
    return x, _channel_vector_or_block(run, x, cdim, value.shape[cdim], what)


def batch_norm_fn(run, node, args, kwargs, labels, value):
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)``: per-channel, like ``nn.BatchNorm2d``."""
    x, ids = _input_channels(run, node, labels, value, "batch_norm")
    if not has_labels(x):
        return x if x is not None else unlabelled(value.shape)
    params = ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
    if _couple_vectors(run, node, labels, ids, params, "batch_norm"):
        owned = owned_state(run, _node_arg(node, 3, "weight"))
        if owned is not None and isinstance(owned[2], nn.modules.batchnorm._BatchNorm):
            # the scale of a BatchNorm subclass (timm's BatchNormAct2d): criteria read it as a BatchNorm's
            member = run.member_index.get((owned[0], f"param:{owned[1]}"))
            if member is not None:
                run.members[member].kind = "bn"
    return x


def group_norm_fn(run, node, args, kwargs, labels, value):
    """``F.group_norm(x, num_groups, weight, bias)``: prunable only with one channel per group, and
    only when ``num_groups`` shrinks with the channels (an ``nn.GroupNorm``'s own, or computed)."""
    x, ids = _input_channels(run, node, labels, value, "group_norm")
    if not has_labels(x):
        return x if x is not None else unlabelled(value.shape)
    groups = _arg(args, kwargs, 1, "num_groups")
    if groups != value.shape[1]:
        run.coupling.block(x, f"group_norm couples channels into {groups} groups at {run.where()}")
        return x
    owned = owned_state(run, _node_arg(node, 2, "weight"))
    if not isinstance(_node_arg(node, 1, "num_groups"), Node) and not (
            owned is not None and isinstance(owned[2], nn.GroupNorm)):
        run.coupling.block(x, f"group_norm whose num_groups is not a GroupNorm attribute at {run.where()}")
        return x
    _couple_vectors(run, node, labels, ids, ((2, "weight"), (3, "bias")), "group_norm")
    return x


def layer_norm_fn(run, node, args, kwargs, labels, value):
    """``F.layer_norm(x, normalized_shape, weight, bias)`` over the last dim (ConvNeXt, timm's
    LayerNorm2d): prunable when ``normalized_shape`` shrinks with the channels (an
    ``nn.LayerNorm``'s own, or computed from the input in forward)."""
    x = _lab(labels, _node_arg(node, 0, "input"))
    shape = _arg(args, kwargs, 1, "normalized_shape")
    nd = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    shape_node = _node_arg(node, 1, "normalized_shape")
    computed = isinstance(shape_node, Node) or (
        isinstance(shape_node, (tuple, list)) and any(isinstance(s, Node) for s in shape_node))
    params, owners = [], []
    for index, name in ((2, "weight"), (3, "bias")):
        arg = _node_arg(node, index, name)
        if arg is not None:
            params.append((_lab(labels, arg), f"layer_norm with a {name} that is not a module's parameter"))
            owners.append(owned_state(run, arg))
    if not computed and not any(o is not None and isinstance(o[2], nn.LayerNorm) for o in owners):
        params.append((None, "layer_norm whose normalized_shape is not a LayerNorm attribute"))
    return _layernorm_common(run, x, nd, value, params)


def _weight_ids(run, path: str) -> torch.Tensor | None:
    """Ids a 1-D-looking weight (a depthwise 1x1 conv's (C, 1, 1, 1)) got as a ``param`` member, along axis 0."""
    member = run.member_index.get((path, "param:weight"))
    return None if member is None else run.members[member].ids


def _owned_layer(run, node, labels, value, what: str) -> tuple[str, nn.Module] | None:
    owned = owned_state(run, _node_arg(node, 1, "weight"))
    if owned is None or owned[1] != "weight":
        _refuse(run, node, labels, value, f"{what} with a weight that is not a module's own `weight` parameter")
        return None
    path, _, module = owned
    param = run.member_index.get((path, "param:weight"))
    if param is not None and run.members[param].tensors[0][1] != 0:
        _refuse(run, node, labels, value, f"{what} with a single-output weight")
        return None
    return path, module


def _bias(run, node, labels, path: str, out_ids: torch.Tensor, what: str) -> tuple[tuple[str, int], ...]:
    """The owner's tensors to slice for the bias (none when the bias is a ``param`` member already)."""
    arg = _node_arg(node, 2, "bias")
    if arg is None:
        return ()
    owned = owned_state(run, arg)
    if owned is not None and owned[0] == path and (path, f"param:{owned[1]}") not in run.member_index:
        return ((owned[1], 0),)  # a single-channel bias: no ids of its own
    _couple_vectors(run, node, labels, out_ids, ((2, "bias"),), what)
    return ()


def conv_fn(run, node, args, kwargs, labels, value):
    """``F.conv1d/2d/3d(x, self.weight, bias, stride, padding, dilation, groups)``: a conv layer of
    the weight's owner. Removing whole groups needs an owner whose ``groups`` surgery updates (a conv)."""
    what = getattr(node.target, "__name__", "conv")
    owner = _owned_layer(run, node, labels, value, what)
    if owner is None:
        return fresh_labels(value)
    path, module = owner
    weight = _arg(args, kwargs, 1, "weight")
    groups = _arg(args, kwargs, 6, "groups", 1)
    if isinstance(_node_arg(node, 6, "groups"), Node) or not isinstance(groups, int):
        return _refuse(run, node, labels, value, f"{what} with computed groups")
    if groups > 1 and groups >= weight.shape[1] and not isinstance(module, nn.modules.conv._ConvNd):
        return _refuse(run, node, labels, value, f"{what} with groups={groups} in a module whose groups surgery cannot update")
    pre = _weight_ids(run, path)
    out_ids = pre if pre is not None else run.module_ids(path, "conv_out", weight.shape[0])
    bias = _bias(run, node, labels, path, out_ids, what)  # a bias with ids of its own is counted as a param member
    tensors = (() if pre is not None else (("weight", 0),)) + bias
    x = _lab(labels, _node_arg(node, 0, "input"))
    out_ids = conv_layer(run, path, x, tuple(weight.shape), groups, value, tensors, bias=bool(bias), out_ids=out_ids)
    return from_vector(out_ids, value.shape, 1 if value.dim() == weight.dim() else 0)


def linear_fn(run, node, args, kwargs, labels, value):
    """``F.linear(x, self.weight, bias)``: a Linear layer of the weight's owner."""
    owner = _owned_layer(run, node, labels, value, "linear")
    if owner is None:
        return fresh_labels(value)
    path, _ = owner
    weight = _arg(args, kwargs, 1, "weight")
    if weight.dim() != 2:
        return _refuse(run, node, labels, value, "linear with a weight that is not 2-D")
    pre = _weight_ids(run, path)
    out_ids = pre if pre is not None else run.module_ids(path, "linear_out", weight.shape[0])
    bias = _bias(run, node, labels, path, out_ids, "linear")
    tensors = (() if pre is not None else (("weight", 0),)) + bias
    x = _lab(labels, _node_arg(node, 0, "input"))
    return linear_layer(run, path, x, tuple(weight.shape), value, tensors, bias=bool(bias), out_ids=out_ids)


def blur_pool_module(run, node, module, args, kwargs, labels, value):
    """timm's ``BlurPool2d``: the same fixed blur filter on every channel, a depthwise conv that
    moves channels like pooling. With ``channels`` set, its filter buffer has a row per channel."""
    out = _spatial_module(run, node, module, args, kwargs, labels, value)
    filt = getattr(module, "filt", None)
    if getattr(module, "channels", None) is not None and isinstance(filt, torch.Tensor) and filt.shape[0] > 1:
        x, ids = _input_channels(run, node, labels, value, "BlurPool2d")
        if has_labels(x):
            run.add_member(str(node.target), "param", ids, (("filt", 0),))
    return out
