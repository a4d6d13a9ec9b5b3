"""Run a traced graph on meta tensors: shapes and dtypes only, no arithmetic, no copies.

This is how the dependency graph sees a model, and how a pruned model is checked:

* the common ``torch.nn`` layers (exact classes: conv, Linear, BatchNorm, LayerNorm, pooling,
  activations) get their output shape from a formula, after checking their weights against
  the input (the check a pruned model must pass: a conv's weight must fit the channels that
  reach it);
* other modules run on a *meta twin*: a shallow copy whose parameters and buffers are meta
  tensors of the same shapes;
* functions and tensor methods run on meta tensors directly.

Running real or fake tensors costs ~1 ms per op (FakeTensorMode's dispatch, Python meta
kernels for conv/BatchNorm); this costs a few microseconds per layer. Anything that needs
values (``item()``, ``nonzero``, a CPU tensor created inside ``forward``) raises; the caller
then falls back to fake or real tensors.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx import Graph, Node

from compressor.common.errors import CompressorError
from compressor.graph._cost import flop_counter
from compressor.graph._ops import map_values

META = torch.device("meta")


class LayerMismatch(CompressorError, RuntimeError):
    """A layer's own tensors and size attributes disagree (a surgery bug, never a tracing limit)."""


def meta_like(t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "meta":
        return t
    return torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device=META)


def to_meta(obj: Any) -> Any:
    """Tensors (also inside tuples, lists and dicts) as meta tensors; everything else as is."""
    if isinstance(obj, torch.Tensor):
        return meta_like(obj)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_meta(o) for o in obj)
    if isinstance(obj, list):
        return [to_meta(o) for o in obj]
    if isinstance(obj, dict):
        return {k: to_meta(v) for k, v in obj.items()}
    return obj


def meta_twin(module: nn.Module) -> nn.Module:
    """A shallow copy of ``module`` whose parameters and buffers (recursively) are meta tensors."""
    twin = object.__new__(type(module))
    twin.__dict__ = {
        **module.__dict__,
        "_parameters": {k: None if v is None else meta_like(v) for k, v in module._parameters.items()},
        "_buffers": {k: None if v is None else meta_like(v) for k, v in module._buffers.items()},
        "_modules": {k: None if v is None else meta_twin(v) for k, v in module._modules.items()},
    }
    return twin


def _holds_tensors(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


# ---- shape rules ----------------------------------------------------------------------------------
# A rule returns the output (a meta tensor) or raises. ``strict`` also checks the size attributes
# against the tensors (pruned models: surgery must have updated both).

Rule = Callable[[nn.Module, Any, bool], Any]


def _tensor(x: Any, module: nn.Module) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{type(module).__name__} expects a tensor, got {type(x).__name__}")
    return x


def _check_dtype(module: nn.Module, x: torch.Tensor, w: torch.Tensor) -> None:
    if x.dtype != w.dtype:
        raise RuntimeError(f"{type(module).__name__}: input dtype {x.dtype} does not match weight dtype {w.dtype}")


def _check_vector(module: nn.Module, name: str, size: int, what: str) -> None:
    t = getattr(module, name, None)
    if t is not None and tuple(t.shape) != (size,):
        raise LayerMismatch(f"{type(module).__name__}.{name} has shape {tuple(t.shape)}, expected ({size},) "
                            f"for {what}")


def _same(module: nn.Module, x: Any, strict: bool) -> Any:
    return _tensor(x, module)


def _identity(module: nn.Module, x: Any, strict: bool) -> Any:
    return x


def _conv(module: nn.modules.conv._ConvNd, x: Any, strict: bool) -> torch.Tensor:
    x = _tensor(x, module)
    w = module.weight
    nd = w.dim() - 2
    if x.dim() not in (nd + 1, nd + 2):
        raise RuntimeError(f"{type(module).__name__} expects a {nd + 1}D or {nd + 2}D input, got {x.dim()}D")
    cdim = x.dim() - nd - 1
    groups = module.groups
    if w.shape[0] % groups:
        raise LayerMismatch(f"{type(module).__name__} weight {tuple(w.shape)}: {w.shape[0]} output channels "
                            f"are not divisible by groups={groups}")
    if x.shape[cdim] != w.shape[1] * groups:
        raise RuntimeError(f"{type(module).__name__} weight {tuple(w.shape)} with groups={groups} expects "
                           f"{w.shape[1] * groups} input channels, got {x.shape[cdim]}")
    _check_vector(module, "bias", w.shape[0], "the weight's output channels")
    _check_dtype(module, x, w)
    if strict and (module.out_channels != w.shape[0] or module.in_channels != w.shape[1] * groups):
        raise LayerMismatch(f"{type(module).__name__} says in_channels={module.in_channels}, "
                            f"out_channels={module.out_channels}, its weight is {tuple(w.shape)} (groups={groups})")
    spatial = x.shape[cdim + 1:]
    if module.padding == "same":
        out = list(spatial)
    else:
        pad = (0,) * nd if module.padding == "valid" else module.padding
        out = [(s + 2 * p - d * (k - 1) - 1) // st + 1
               for s, p, d, k, st in zip(spatial, pad, module.dilation, w.shape[2:], module.stride)]
    if any(o <= 0 for o in out):
        raise RuntimeError(f"{type(module).__name__}: input {tuple(spatial)} is smaller than the kernel "
                           f"{tuple(w.shape[2:])} (output {tuple(out)})")
    return torch.empty((*x.shape[:cdim], w.shape[0], *out), dtype=x.dtype, device=META)


def _linear(module: nn.Linear, x: Any, strict: bool) -> torch.Tensor:
    x = _tensor(x, module)
    w = module.weight
    if x.dim() == 0 or x.shape[-1] != w.shape[1]:
        raise RuntimeError(f"Linear weight {tuple(w.shape)} expects {w.shape[1]} input features, "
                           f"got input {tuple(x.shape)}")
    _check_vector(module, "bias", w.shape[0], "the weight's output features")
    _check_dtype(module, x, w)
    if strict and (module.in_features, module.out_features) != (w.shape[1], w.shape[0]):
        raise LayerMismatch(f"Linear says in_features={module.in_features}, out_features={module.out_features}, "
                            f"its weight is {tuple(w.shape)}")
    return torch.empty((*x.shape[:-1], w.shape[0]), dtype=x.dtype, device=META)


def _batchnorm(module: nn.modules.batchnorm._BatchNorm, x: Any, strict: bool) -> torch.Tensor:
    x = _tensor(x, module)
    module._check_input_dim(x)
    channels = x.shape[1]
    for name in ("weight", "bias", "running_mean", "running_var"):
        _check_vector(module, name, channels, f"an input of {channels} channels")
    if strict and module.num_features != channels:
        raise LayerMismatch(f"{type(module).__name__} says num_features={module.num_features}, "
                            f"its input has {channels} channels")
    return x


def _layernorm(module: nn.LayerNorm, x: Any, strict: bool) -> torch.Tensor:
    x = _tensor(x, module)
    shape = tuple(module.normalized_shape)
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise RuntimeError(f"LayerNorm over {shape} got input {tuple(x.shape)}")
    for name in ("weight", "bias"):
        t = getattr(module, name, None)
        if t is not None and tuple(t.shape) != shape:
            raise LayerMismatch(f"LayerNorm.{name} has shape {tuple(t.shape)}, normalized_shape is {shape}")
    return x


def _pool_size(size: int, k: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape."""
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _tuple(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _pool_input(module: nn.Module, x: Any, nd: int) -> torch.Tensor:
    """The input of an ``nd``-D pooling layer, checked as the layer checks it (with or without batch)."""
    x = _tensor(x, module)
    if getattr(module, "return_indices", False):
        raise _NoRule
    if x.dim() not in (nd + 1, nd + 2):
        raise RuntimeError(f"{type(module).__name__} expects a {nd + 1}D or {nd + 2}D input, got {x.dim()}D")
    return x


def _pool(nd: int) -> Rule:
    def rule(module: nn.Module, x: Any, strict: bool) -> torch.Tensor:
        x = _pool_input(module, x, nd)
        k = _tuple(module.kernel_size, nd)
        stride = _tuple(module.stride if module.stride is not None else module.kernel_size, nd)
        pad = _tuple(module.padding, nd)
        dil = _tuple(getattr(module, "dilation", 1), nd)
        if any(p > kk // 2 for p, kk in zip(pad, k)):
            raise RuntimeError(f"{type(module).__name__}: padding {pad} is more than half the kernel {k}")
        spatial = x.shape[x.dim() - nd:]
        out = [_pool_size(s, kk, p, st, d, module.ceil_mode) for s, kk, p, st, d in zip(spatial, k, pad, stride, dil)]
        if any(o <= 0 for o in out):
            raise RuntimeError(f"{type(module).__name__}: input {tuple(spatial)} is too small (output {tuple(out)})")
        return torch.empty((*x.shape[:x.dim() - nd], *out), dtype=x.dtype, device=META)

    return rule


def _adaptive_pool(nd: int) -> Rule:
    def rule(module: nn.Module, x: Any, strict: bool) -> torch.Tensor:
        x = _pool_input(module, x, nd)
        spatial = x.shape[x.dim() - nd:]
        out = [s if o is None else o for o, s in zip(_tuple(module.output_size, nd), spatial)]
        return torch.empty((*x.shape[:x.dim() - nd], *out), dtype=x.dtype, device=META)

    return rule


class _NoRule(Exception):
    """The rule does not cover this call; run the module on a meta twin instead."""


SHAPE_RULES: dict[type, Rule] = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.Conv3d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batchnorm, nn.BatchNorm2d: _batchnorm, nn.BatchNorm3d: _batchnorm,
    nn.LayerNorm: _layernorm,
    nn.MaxPool1d: _pool(1), nn.MaxPool2d: _pool(2), nn.MaxPool3d: _pool(3),
    nn.AvgPool1d: _pool(1), nn.AvgPool2d: _pool(2), nn.AvgPool3d: _pool(3),
    nn.AdaptiveAvgPool1d: _adaptive_pool(1), nn.AdaptiveAvgPool2d: _adaptive_pool(2),
    nn.AdaptiveAvgPool3d: _adaptive_pool(3), nn.AdaptiveMaxPool1d: _adaptive_pool(1),
    nn.AdaptiveMaxPool2d: _adaptive_pool(2), nn.AdaptiveMaxPool3d: _adaptive_pool(3),
    nn.Identity: _identity,
    **{cls: _same for cls in (
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
        nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
        nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)},
}


# ---- functions: torch's meta kernels for element-wise ops are Python references (~0.5 ms a call)

def _binary(a: Any, b: Any, **kwargs: Any) -> torch.Tensor:
    if kwargs or not isinstance(a, torch.Tensor) or not isinstance(b, (torch.Tensor, int, float, bool)):
        raise _NoRule
    if isinstance(b, torch.Tensor) and b.device != a.device and b.dim():  # torch refuses; let it say so
        raise _NoRule
    dtype = torch.result_type(a, b)
    if not dtype.is_floating_point:  # integer division, promotion corner cases: torch decides
        raise _NoRule
    shape = torch.broadcast_shapes(a.shape, b.shape) if isinstance(b, torch.Tensor) else a.shape
    if shape == a.shape and dtype == a.dtype:  # the layout (strides) of the first operand, as TensorIterator does
        return torch.empty_strided(a.shape, a.stride(), dtype=dtype, device=META)
    return torch.empty(shape, dtype=dtype, device=META)


def _binary_inplace(a: Any, b: Any, **kwargs: Any) -> torch.Tensor:
    out = _binary(a, b, **kwargs)
    if out.shape != a.shape or out.dtype != a.dtype:
        raise _NoRule
    return a


def _unary(x: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or any(isinstance(v, torch.Tensor) for v in (*args, *kwargs.values())):
        raise _NoRule
    return x


FUNCTION_RULES: dict[Any, Callable[..., torch.Tensor]] = {
    **{fn: _binary for fn in (operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
                              torch.mul, torch.div)},
    **{fn: _binary_inplace for fn in (operator.iadd, operator.isub, operator.imul, operator.itruediv)},
    **{fn: _unary for fn in (F.relu, F.relu6, F.hardswish, F.hardsigmoid, F.silu, F.gelu, F.sigmoid, F.tanh,
                             F.hardtanh, F.leaky_relu, F.elu, F.mish, F.dropout, torch.relu, torch.sigmoid,
                             torch.tanh)},
}
METHOD_RULES: dict[str, Callable[..., torch.Tensor]] = {
    "add": _binary, "sub": _binary, "mul": _binary, "div": _binary,
    "relu": _unary, "sigmoid": _unary, "tanh": _unary,
}


class MetaExecutor:
    """Executes the fx nodes of a graph traced from ``model`` (or from a model of its structure).

    ``execute`` returns ``(value, flops)``. ``flops`` is None when nothing was counted: a call
    that took a shape rule (no FLOPs, or FLOPs the cost model has exactly: conv, Linear), or a
    function for which ``flop_free(node)`` is true. Other calls run under ``FlopCounterMode``
    when ``count_flops`` is set.
    """

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module] | None = None, *, strict: bool = False,
                 count_flops: bool = False, flop_free: Callable[[Node], bool] | None = None):
        self.model = model
        self.modules = modules if modules is not None else dict(model.named_modules())
        self.strict = strict
        self.count_flops = count_flops
        self.flop_free = flop_free
        self._twins: dict[str, nn.Module] = {}

    def placeholder(self, value: Any) -> Any:
        return to_meta(value)

    def execute(self, node: Node, args: tuple, kwargs: dict) -> tuple[Any, float | None]:
        op = node.op
        if op == "get_attr":
            obj: Any = self.model
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            return to_meta(obj), None
        if op == "call_module":
            target = str(node.target)
            module = self.modules[target]
            rule = SHAPE_RULES.get(type(module))
            if rule is not None and len(args) == 1 and not kwargs:
                try:
                    return rule(module, args[0], self.strict), None
                except _NoRule:
                    pass
            return self._counted(self._twin(target, module), args, kwargs)
        operands = args
        if op == "call_function":
            fn = node.target
            rule = FUNCTION_RULES.get(fn) if _hashable(fn) else None
        elif op == "call_method":
            rule = METHOD_RULES.get(str(node.target))
            fn = getattr(args[0], str(node.target))
            args = args[1:]
        else:
            raise ValueError(f"unexpected fx node op {op!r}")
        if rule is not None:
            try:
                return rule(*operands, **kwargs), None  # element-wise: no FLOPs
            except _NoRule:
                pass
        if self.flop_free is not None and self.flop_free(node):
            return fn(*args, **kwargs), None
        return self._counted(fn, args, kwargs)

    def _counted(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, float | None]:
        if not self.count_flops:
            return fn(*args, **kwargs), None
        counter = flop_counter()
        with counter:
            value = fn(*args, **kwargs)
        return value, float(counter.get_total_flops())

    def _twin(self, target: str, module: nn.Module) -> nn.Module:
        twin = self._twins.get(target)
        if twin is None:
            twin = meta_twin(module) if _holds_tensors(module) else module
            self._twins[target] = twin
        return twin


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def run_shapes(graph: Graph, model: nn.Module, inputs: tuple[Any, ...], strict: bool = True) -> None:
    """Execute ``graph`` on meta tensors with ``model``'s layers; raises whatever a layer raises.

    With ``strict``, a layer whose size attributes disagree with its tensors raises
    :class:`LayerMismatch`.
    """
    executor = MetaExecutor(model, strict=strict)
    last_use: dict[Node, Node] = {}
    for node in graph.nodes:
        for arg in node.all_input_nodes:
            last_use[arg] = node
    values: dict[Node, Any] = {}
    placeholders = iter(inputs)
    with torch.no_grad():
        for node in graph.nodes:
            if node.op == "placeholder":
                try:
                    value = next(placeholders)
                except StopIteration:
                    value = node.args[0] if node.args else None
                values[node] = executor.placeholder(value)
            elif node.op == "output":
                return
            else:
                values[node] = executor.execute(node, map_values(node.args, values), map_values(node.kwargs, values))[0]
            for arg in node.all_input_nodes:
                if last_use.get(arg) is node:
                    values.pop(arg, None)
