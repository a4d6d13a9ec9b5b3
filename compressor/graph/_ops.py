"""How each traced op moves, couples or blocks channel labels.

Handlers are registered by module class, by function object or by tensor-method name. An op
that touches labelled channels and has no handler blocks those channels with its name: the
graph never guesses "element-wise".
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn
from torch.fx import Node

from compressor.graph._labels import (
    Labels,
    binary_union,
    channel_vector,
    core,
    from_vector,
    has_labels,
    normalize,
    unlabelled,
    varying_dims,
)
from torch._subclasses.fake_tensor import FakeTensor

Handler = Callable[..., Any]
MODULE_HANDLERS: dict[type, Handler] = {}
FUNCTION_HANDLERS: dict[Any, Handler] = {}
METHOD_HANDLERS: dict[str, Handler] = {}
# functions and module classes known by qualified name, so that optional packages need not be
# imported (filled by _op_table); a module class named here is a leaf of the trace
NAMED_FUNCTION_HANDLERS: dict[str, Handler] = {}
NAMED_MODULE_HANDLERS: dict[str, Handler] = {}


def _register(table: dict, keys: list, handler: Handler) -> None:
    for key in keys:
        if key in table:
            raise ValueError(f"op handler for {key!r} registered twice")
        table[key] = handler
    _MODULE_HANDLER_CACHE.clear()


# ---- structure helpers -----------------------------------------------------------------------


def map_values(obj: Any, values: dict[Node, Any]) -> Any:
    if isinstance(obj, Node):
        return values[obj]
    if isinstance(obj, tuple):
        return tuple(map_values(o, values) for o in obj)
    if isinstance(obj, list):
        return [map_values(o, values) for o in obj]
    if isinstance(obj, dict):
        return {k: map_values(v, values) for k, v in obj.items()}
    if isinstance(obj, slice):
        return slice(map_values(obj.start, values), map_values(obj.stop, values), map_values(obj.step, values))
    return obj


def map_labels(obj: Any, labels: dict[Node, Any]) -> Any:
    if isinstance(obj, Node):
        return labels.get(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_labels(o, labels) for o in obj)
    if isinstance(obj, dict):
        return {k: map_labels(v, labels) for k, v in obj.items()}
    return None


def fresh_labels(value: Any) -> Any:
    """Labels of a value that carries no prunable channel (inputs, constants)."""
    if isinstance(value, torch.Tensor):
        return unlabelled(value.shape)
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        inner = [fresh_labels(v) for v in value]
        return tuple(inner) if any(i is not None for i in inner) else None
    if isinstance(value, dict):
        return {k: fresh_labels(v) for k, v in value.items()}
    return None


def shape_only(obj: Any) -> bool:
    """Whether ``obj`` holds a tensor without values (meta or fake): an op applied to labels with
    it as an argument (an index, a shift) would read values that do not exist."""

    return any(t.device.type == "meta" or isinstance(t, FakeTensor) for t in _flatten(obj))


def _flatten(obj: Any) -> list[Labels]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _flatten(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _flatten(o)]
    return []


def block_structure(run, labs: Any, reason: str) -> None:
    for lab in _flatten(labs):
        run.coupling.block(lab, reason)


def _labelled_inputs(node: Node, labels: dict[Node, Any]) -> list[Labels]:
    return [lab for arg in node.all_input_nodes for lab in _flatten(labels.get(arg)) if has_labels(lab)]


# ---- dispatch ---------------------------------------------------------------------------------


def propagate(run, node: Node, args: tuple, kwargs: dict, labels: dict[Node, Any], value: Any) -> Any:
    """Labels of ``node``'s output; records coupling and blocks on ``run``."""
    if node.op == "get_attr":
        return _get_attr(run, node, value)
    handler = None
    if node.op == "call_module":
        module = run.modules[str(node.target)]
        handler = module_handler(type(module))
        if handler is not None:
            return handler(run, node, module, args, kwargs, labels, value)
    elif node.op == "call_function":
        handler = _namedtuple if _is_namedtuple_class(node.target) else function_handler(node.target)
    elif node.op == "call_method":
        handler = METHOD_HANDLERS.get(str(node.target))
    if handler is not None:
        return handler(run, node, args, kwargs, labels, value)
    return _unknown(run, node, labels, value)


_MODULE_HANDLER_CACHE: dict[type, Handler | None] = {}


def module_handler(cls: type) -> Handler | None:
    """The handler of the nearest class in ``cls``'s MRO that has one (cached per class)."""
    try:
        return _MODULE_HANDLER_CACHE[cls]
    except KeyError:
        pass
    handler = named_module_handler(cls)
    if handler is None:
        handler = next((MODULE_HANDLERS[c] for c in cls.__mro__ if c in MODULE_HANDLERS), None)
    _MODULE_HANDLER_CACHE[cls] = handler
    return handler


def named_module_handler(cls: type) -> Handler | None:
    """The handler registered for ``cls`` by qualified name (an optional package's layer), if any."""
    return NAMED_MODULE_HANDLERS.get(f"{cls.__module__}.{cls.__qualname__}")


def function_handler(target: Any) -> Handler | None:
    """The handler of a called function: by object, else by qualified name (optional packages)."""
    try:
        handler = FUNCTION_HANDLERS.get(target)
    except TypeError:  # an unhashable callable
        return None
    if handler is None:

        handler = NAMED_FUNCTION_HANDLERS.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}")
    return handler


def _is_namedtuple_class(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


def _namedtuple(run, node, args, kwargs, labels, value):
    """``Outputs(logits, aux2, aux1)``: a namedtuple built in forward (GoogLeNet's train-mode
    outputs) holds its fields' tensors as they are."""
    fields = [*node.args, *(node.kwargs[k] for k in node.target._fields[len(node.args):] if k in node.kwargs)]
    return tuple(map_labels(field, labels) for field in fields)


def _unknown(run, node: Node, labels: dict[Node, Any], value: Any) -> Any:
    for lab in _labelled_inputs(node, labels):
        run.coupling.block(lab, f"unsupported op: {run.where()}")
    return fresh_labels(value)


def _lab(labels: dict[Node, Any], arg: Any, value: Any = None) -> Labels | None:
    """Label tensor of a node argument (None for non-tensors)."""
    if isinstance(arg, Node):
        lab = labels.get(arg)
        return lab if isinstance(lab, torch.Tensor) else None
    return None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _node_arg(node: Node, index: int, name: str) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name)


# ---- parameters -------------------------------------------------------------------------------


def _get_attr(run, node: Node, value: Any) -> Any:
    """A parameter or buffer read in forward (ConvNeXt's layer scale, a class token ...).

    A tensor with exactly one dim longer than 1 becomes a channel producer along that dim, so
    that it can be sliced with whatever channels it meets; anything else is unlabelled.
    """
    if not isinstance(value, torch.Tensor):
        return None
    owner, _, name = str(node.target).rpartition(".")
    module = run.modules.get(owner)
    big = [d for d in range(value.dim()) if value.size(d) > 1]
    is_state = module is not None and (name in module._parameters or name in module._buffers)
    if not is_state or len(big) != 1:
        return unlabelled(value.shape)
    ids = run.module_ids(owner, f"param:{name}", value.size(big[0]))
    run.add_member(owner, "param", ids, ((name, big[0]),), key=f"param:{name}")
    return from_vector(ids, value.shape, big[0])


# ---- modules with weights ---------------------------------------------------------------------


def _vector_along(lab: Labels, dim: int) -> torch.Tensor | None:
    """The labels along ``dim`` when ``lab`` is a vector broadcast along every other dim (what
    ``from_vector`` makes, and most labels are), read from its strides; None otherwise."""
    stride, shape = lab.stride(), lab.shape
    for d in range(lab.dim()):
        if d != dim and stride[d] and shape[d] != 1:
            return None
    return lab.as_strided((shape[dim],), (stride[dim],), lab.storage_offset()).contiguous()


def _channel_vector_or_block(run, lab: Labels | None, dim: int, size: int, what: str) -> torch.Tensor:
    """Labels along ``dim`` (length ``size``); blocks and returns -1s if they vary elsewhere."""
    if lab is None:
        return torch.full((size,), -1, dtype=torch.long)
    vec = _vector_along(lab, dim)
    if vec is not None:
        return vec
    lab = normalize(lab)
    others = [d for d in varying_dims(lab) if d != dim]
    if others:
        run.coupling.block(lab, f"{what} at {run.where()} sees channels along dims {others}")
        return torch.full((size,), -1, dtype=torch.long)
    return channel_vector(lab, dim)


def _conv(run, node, module: nn.modules.conv._ConvNd, args, kwargs, labels, value):
    tensors = (("weight", 0),) + ((("bias", 0),) if module.bias is not None else ())
    out_ids = conv_layer(run, str(node.target), _lab(labels, _node_arg(node, 0, "input")), tuple(module.weight.shape),
                         module.groups, value, tensors, bias=module.bias is not None)
    return from_vector(out_ids, value.shape, 1 if value.dim() == module.weight.dim() else 0)


def conv_layer(run, path: str, x: Labels | None, weight_shape: tuple[int, ...], g: int, value,
               out_tensors: tuple[tuple[str, int], ...], bias: bool, in_tensors: tuple[tuple[str, int], ...] = (("weight", 1),),
               out_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Members, coupling and cost of one conv call with weight ``weight_shape`` and ``g`` groups
    (the module form and ``F.conv*d`` with a module's weight); returns the output channel ids."""
    weight_dim = len(weight_shape)
    cdim = 1 if value.dim() == weight_dim else 0
    out_channels, in_channels = weight_shape[0], weight_shape[1] * g
    in_ids = _channel_vector_or_block(run, x, cdim, in_channels, "conv input")
    if out_ids is None:
        out_ids = run.module_ids(path, "conv_out", out_channels)
    in_pg, out_pg = in_channels // g, out_channels // g
    mode = "" if g == 1 else ("group" if g >= in_pg else "width")
    out_m = run.add_member(path, "conv_out", out_ids, out_tensors, g, mode)
    in_m = None
    if bool((in_ids >= 0).any()) or mode == "group":
        in_m = run.add_member(path, "conv_in", in_ids, in_tensors, g, mode)
    c = run.coupling
    if mode == "group":
        # a whole conv group (its inputs and outputs) is one unit: depthwise, ResNeXt
        ins, outs = in_ids.view(g, in_pg), out_ids.view(g, out_pg)
        unprunable_in = (ins < 0).any(dim=1)
        if bool(unprunable_in.any()):
            c.block(outs[unprunable_in], f"conv groups fed by unprunable channels at {run.where()}")
        _couple_rows(c, torch.cat([outs, torch.where(ins >= 0, ins, outs[:, :1])], dim=1))
    elif mode == "width":
        # every group keeps the same slots: slot i is removed from all groups at once
        ins, outs = in_ids.view(g, in_pg), out_ids.view(g, out_pg)
        bad = (ins < 0).any(dim=0)
        if bool(bad.any()):
            c.block(ins[:, bad], f"grouped conv slots fed by unprunable channels at {run.where()}")
        _couple_rows(c, ins.t())
        _couple_rows(c, outs.t())
    spatial = math.prod(value.shape[cdim + 1:])
    kernel = math.prod(weight_shape[2:])
    batch = value.shape[0] if cdim == 1 else 1
    run.add_layer(module=path, kind="conv", out_member=out_m, in_member=in_m, out_size=out_channels,
                  in_size=in_channels, groups=g, group_mode=mode,
                  macs_per_unit=kernel * spatial * batch / max(run.batch, 1) if cdim == 1 else kernel * spatial,
                  params_per_unit=kernel, bias=bias)
    return out_ids


def _couple_rows(coupling, ids: torch.Tensor) -> None:
    """Couple every label of each row of a 2-D ``ids`` with the row's first one.

    ``Coupling.union_within_rows`` without its de-duplication: a conv's own ids pair up at most
    once, and the atoms (connected components) do not mind repeated edges.
    """
    if ids.numel() and ids.size(1) > 1:
        a = ids[:, :1].expand_as(ids).reshape(-1)
        b = ids.reshape(-1)
        keep = (a >= 0) & (b >= 0) & (a != b)
        if bool(keep.any()):
            coupling.edges.append(torch.stack([a[keep], b[keep]]))


def _linear(run, node, module: nn.Linear, args, kwargs, labels, value):
    tensors = (("weight", 0),) + ((("bias", 0),) if module.bias is not None else ())
    return linear_layer(run, str(node.target), _lab(labels, _node_arg(node, 0, "input")), tuple(module.weight.shape),
                        value, tensors, bias=module.bias is not None)


def linear_layer(run, path: str, x: Labels | None, weight_shape: tuple[int, ...], value,
                 out_tensors: tuple[tuple[str, int], ...], bias: bool,
                 in_tensors: tuple[tuple[str, int], ...] = (("weight", 1),), out_ids: torch.Tensor | None = None):
    """Members, coupling and cost of one Linear call (module or ``F.linear`` with a module's
    weight); returns the output labels."""
    out_features, in_features = weight_shape
    last = value.dim() - 1
    x_n = normalize(x) if x is not None else None
    vary = varying_dims(x_n) if x_n is not None else []
    if x_n is not None and vary and last not in vary:
        # Linear over a non-channel axis (e.g. spatial): channels pass through untouched
        out = core(x_n)
        out = out.narrow(last, 0, 1) if out.size(last) > 1 else out
        return out.expand(value.shape)
    in_ids = _channel_vector_or_block(run, x_n, last, in_features, "Linear input")
    if out_ids is None:
        out_ids = run.module_ids(path, "linear_out", out_features)
    out_m = run.add_member(path, "linear_out", out_ids, out_tensors)
    in_m = run.add_member(path, "linear_in", in_ids, in_tensors) if bool((in_ids >= 0).any()) else None
    rows = value.numel() // out_features
    run.add_layer(module=path, kind="linear", out_member=out_m, in_member=in_m, out_size=out_features,
                  in_size=in_features, groups=1, group_mode="", macs_per_unit=rows / max(run.batch, 1),
                  params_per_unit=1, bias=bias)
    return from_vector(out_ids, value.shape, last)


def _batchnorm(run, node, module, args, kwargs, labels, value):
    x = _lab(labels, _node_arg(node, 0, "input"))
    cdim = 1 if value.dim() >= 2 else 0
    ids = _channel_vector_or_block(run, x, cdim, value.shape[cdim], type(module).__name__)
    names = [n for n in ("weight", "bias", "running_mean", "running_var") if getattr(module, n, None) is not None]
    if names and bool((ids >= 0).any()):
        run.add_member(str(node.target), "bn", ids, tuple((n, 0) for n in names))
    return x if x is not None else unlabelled(value.shape)


def _layernorm_common(run, x: Labels | None, normalized_dims: int, value, params: list[tuple[Labels | None, str]]):
    """LayerNorm over the trailing ``normalized_dims`` dims; returns the output labels."""
    if x is None:
        return unlabelled(value.shape)
    x = normalize(x)
    vary = varying_dims(x)
    inner = [d for d in vary if d >= value.dim() - normalized_dims]
    if not inner:
        return x
    if normalized_dims != 1 or len(vary) != 1:
        run.coupling.block(x, f"normalisation over several channel dims at {run.where()}")
        return x
    vec = channel_vector(x, value.dim() - 1)
    for lab, what in params:
        if lab is None:
            run.coupling.block(x, f"{what} at {run.where()}")
            return x
        run.coupling.union(channel_vector(normalize(lab), lab.dim() - 1), vec)
    run.coupling.renormalized.append(vec[vec >= 0])
    return x


def _layernorm_module(run, node, module: nn.LayerNorm, args, kwargs, labels, value):
    x = _lab(labels, _node_arg(node, 0, "input"))
    nd = len(module.normalized_shape)
    out = _layernorm_common(run, x, nd, value, [])
    if module.elementwise_affine and nd == 1 and x is not None and last_varies(x, value):
        vec = channel_vector(normalize(x), value.dim() - 1)
        names = [n for n in ("weight", "bias") if getattr(module, n, None) is not None]
        run.add_member(str(node.target), "norm", vec, tuple((n, 0) for n in names))
    return out


def last_varies(x: Labels, value: torch.Tensor) -> bool:
    return varying_dims(normalize(x)) == [value.dim() - 1]


def _per_channel_param_module(run, node, module, args, kwargs, labels, value):
    """PReLU with one slope per channel."""
    x = _lab(labels, _node_arg(node, 0, "input"))
    if module.weight.numel() > 1 and x is not None:
        cdim = 1 if value.dim() >= 2 else 0
        ids = _channel_vector_or_block(run, x, cdim, value.shape[cdim], "PReLU")
        run.add_member(str(node.target), "param", ids, (("weight", 0),))
    return x if x is not None else unlabelled(value.shape)


def _groupnorm(run, node, module, args, kwargs, labels, value):
    x = _lab(labels, _node_arg(node, 0, "input"))
    if has_labels(x) and module.num_groups not in (module.num_channels,):
        run.coupling.block(x, f"GroupNorm couples channels into {module.num_groups} groups at {run.where()}")
        return x
    if has_labels(x) and module.weight is None:  # surgery resizes a GroupNorm from its affine parameters
        run.coupling.block(x, f"GroupNorm without affine parameters at {run.where()}")
        return x
    return _batchnorm(run, node, module, args, kwargs, labels, value)


# ---- element-wise and spatial ops --------------------------------------------------------------


def _elementwise(run, node, args, kwargs, labels, value, module=None):
    """Every tensor argument meets the output element by element (with broadcasting)."""
    if not isinstance(value, torch.Tensor):
        return fresh_labels(value)
    if len(node.all_input_nodes) == 1:  # an activation: nothing meets, the labels pass through
        lab = _lab(labels, node.all_input_nodes[0])
        if lab is not None and lab.shape == value.shape:
            return lab
    labs = [_lab(labels, a) for a in node.all_input_nodes]
    return binary_union(run.coupling, [l for l in labs if l is not None], value.shape, run.where())


def _elementwise_module(run, node, module, args, kwargs, labels, value):
    return _elementwise(run, node, args, kwargs, labels, value)


def _passthrough(run, lab: Labels | None, value, touched: set[int]) -> Labels:
    """Output whose channels are the input's, with ``touched`` dims resized or mixed."""
    if lab is None or not isinstance(value, torch.Tensor):
        return fresh_labels(value)
    lab = normalize(lab)
    hit = [d for d in varying_dims(lab) if d in touched]
    if hit:
        run.coupling.block(lab, f"channels mixed along dims {hit} at {run.where()}")
        return unlabelled(value.shape)
    c = core(lab)
    for d in touched:
        if d < c.dim() and c.size(d) > 1:
            c = c.narrow(d, 0, 1)
    if c.dim() != value.dim():
        return unlabelled(value.shape) if not has_labels(c) else _reshape_fail(run, lab, value)
    return c.expand(value.shape)


def _reshape_fail(run, lab, value):
    run.coupling.block(lab, f"rank-changing op at {run.where()}")
    return unlabelled(value.shape)


def _spatial_fn(run, node, args, kwargs, labels, value):
    """Pooling, interpolation: dims 2.. are resized or mixed, the channel dim passes through."""
    x = _lab(labels, _node_arg(node, 0, "input"))
    return _passthrough(run, x, value, set(range(2, value.dim())) if isinstance(value, torch.Tensor) else set())


def _spatial_module(run, node, module, args, kwargs, labels, value):
    return _spatial_fn(run, node, args, kwargs, labels, value)


def _pad(run, node, args, kwargs, labels, value):
    x = _lab(labels, _node_arg(node, 0, "input"))
    pad = _arg(args, kwargs, 1, "pad")
    nd = value.dim()
    touched = {nd - 1 - i // 2 for i, p in enumerate(pad) if p}
    return _passthrough(run, x, value, touched)


def _dim_args(dim: Any, ndim: int) -> set[int]:
    if dim is None:
        return set(range(ndim))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return {d % ndim for d in dims}


def _softmax(run, node, args, kwargs, labels, value, module=None):
    x = _lab(labels, _node_arg(node, 0, "input"))
    dim = module.dim if module is not None else _arg(args, kwargs, 1, "dim")
    return _passthrough(run, x, value, _dim_args(dim, value.dim()) if dim is not None else set(range(value.dim())))


def _softmax_module(run, node, module, args, kwargs, labels, value):
    return _softmax(run, node, args, kwargs, labels, value, module=module)


def _reduction(run, node, args, kwargs, labels, value, summing: bool = False):
    x = _lab(labels, _node_arg(node, 0, "input"))
    if x is None:
        return fresh_labels(value)
    src = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    keepdim = bool(_arg(args, kwargs, 2, "keepdim", False))
    reduced = _dim_args(dim, src.dim())
    out_value = value[0] if isinstance(value, tuple) else value  # max(dim) returns (values, indices)
    lab = normalize(x)
    hit = [d for d in varying_dims(lab) if d in reduced]
    c = core(lab)
    if hit and not summing:
        run.coupling.block(lab, f"reduction over channels at {run.where()}")
    for d in reduced:
        c = c.narrow(d, 0, 1) if c.size(d) > 1 else c
    if hit:
        c = torch.full_like(c, -1)
    if not keepdim:
        c = c.reshape([s for d, s in enumerate(c.shape) if d not in reduced])
    out = c.expand(out_value.shape)
    return (out, unlabelled(out_value.shape)) if isinstance(value, tuple) else out


def _sum(run, node, args, kwargs, labels, value):
    return _reduction(run, node, args, kwargs, labels, value, summing=True)


def _creation(run, node, args, kwargs, labels, value):
    """``x.new_empty(shape)``, ``x.new_zeros`` ...: a new tensor that takes only ``x``'s dtype and
    device (timm's ``drop_path`` draws its train-mode mask so); no channel flows."""
    return fresh_labels(value)


class SizeOf:
    """The "labels" of a size read from a tensor (``x.shape[i]``, ``x.size(i)``): the labels of the
    dim it was read from (None when they vary along another dim too). A reshape to that size
    shrinks with those channels, whatever tensor it reshapes (``_ops_shape.reshape``)."""

    __slots__ = ("ids",)

    def __init__(self, ids: torch.Tensor | None):
        self.ids = ids


def _size_of(lab: Labels | None, dim: int) -> SizeOf:
    if lab is None:
        return SizeOf(None)
    vec = _vector_along(lab, dim)
    if vec is None:
        lab = normalize(lab)
        vec = channel_vector(lab, dim) if set(varying_dims(lab)) <= {dim} else None
    return SizeOf(vec)


def _metadata(run, node, args, kwargs, labels, value):
    """size(), shape, dim() ...: no tensor flows, nothing is coupled. A size remembers the labels
    of the dim it was read from (:class:`SizeOf`)."""
    if isinstance(value, torch.Tensor):  # getattr(x, "mT") and friends move data: not metadata
        return _unknown(run, node, labels, value)
    source = args[0] if args else None
    shape = node.target == "size" or (node.target is getattr and len(args) > 1 and args[1] == "shape")
    if shape and isinstance(source, torch.Tensor):
        lab = _lab(labels, node.args[0])
        dim = _arg(args, kwargs, 1, "dim") if node.target == "size" else None
        if isinstance(dim, int):
            return _size_of(lab, dim % max(source.dim(), 1))
        if isinstance(value, tuple):
            return tuple(_size_of(lab, d) for d in range(len(value)))
    return fresh_labels(value)
