"""Which handler each module class, function and tensor method uses (see ``_ops``)."""
from __future__ import annotations

import builtins
import operator

import torch
import torch.nn.functional as F
from torch import nn

import compressor.graph._ops as o
import compressor.graph._ops_functional as f
import compressor.graph._ops_shape as s
from compressor.graph._ops import (
    FUNCTION_HANDLERS,
    METHOD_HANDLERS,
    MODULE_HANDLERS,
    NAMED_FUNCTION_HANDLERS,
    NAMED_MODULE_HANDLERS,
    _register,
)


def _refuse_module(what: str):
    def handler(run, node, module, args, kwargs, labels, value):
        for lab in o._labelled_inputs(node, labels):
            run.coupling.block(lab, f"{what} is not supported: {run.where()}")
        return o.fresh_labels(value)

    return handler


def _fn_list(*names: str, module=F) -> list:
    return [getattr(module, n) for n in names if hasattr(module, n)]


# ---- modules -----------------------------------------------------------------------------------
_register(MODULE_HANDLERS, [nn.modules.conv._ConvTransposeNd], _refuse_module("transposed convolution"))
_register(MODULE_HANDLERS, [nn.modules.conv._ConvNd], o._conv)
_register(MODULE_HANDLERS, [nn.Linear], o._linear)
_register(MODULE_HANDLERS, [nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm], o._batchnorm)
_register(MODULE_HANDLERS, [nn.LayerNorm], o._layernorm_module)
_register(MODULE_HANDLERS, [nn.GroupNorm], o._groupnorm)
_register(MODULE_HANDLERS, [nn.PReLU], o._per_channel_param_module)
_register(MODULE_HANDLERS, [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Threshold, nn.Hardshrink, nn.Softshrink,
], o._elementwise_module)
_register(MODULE_HANDLERS, [
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d, nn.Upsample,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
], o._spatial_module)
_register(MODULE_HANDLERS, [nn.Softmax, nn.LogSoftmax, nn.Softmin], o._softmax_module)
_register(MODULE_HANDLERS, [nn.Flatten], s.flatten_module)
_register(MODULE_HANDLERS, [nn.Unflatten], s.unflatten_module)

# modules known by qualified class name, so that optional packages need not be imported here;
# they are leaves of the trace
NAMED_MODULE_HANDLERS.update({
    "timm.layers.blur_pool.BlurPool2d": f.blur_pool_module,
    # TF "SAME" padding computed from the input size in forward (the tf_* models): fx cannot trace
    # that arithmetic, the executors run it; the layers are a conv and pooling like torch.nn's
    "timm.layers.conv2d_same.Conv2dSame": o._conv,
    "timm.layers.conv2d_same.Conv2dSameExport": o._conv,
    "timm.layers.pool2d_same.MaxPool2dSame": o._spatial_module,
    "timm.layers.pool2d_same.AvgPool2dSame": o._spatial_module,
})

# ---- functions ---------------------------------------------------------------------------------
ELEMENTWISE_FUNCTIONS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.neg, operator.pow, operator.gt, operator.lt, operator.ge, operator.le,
    operator.eq, operator.ne,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.maximum, torch.minimum, torch.where,
    torch.clamp, torch.clip, torch.abs, torch.neg, torch.exp, torch.sqrt, torch.rsqrt, torch.sigmoid, torch.tanh,
    torch.relu, torch.relu_, torch.pow, torch.square, torch.erf, torch.log, torch.clamp_min,
    *_fn_list("relu", "relu_", "relu6", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "hardtanh",
              "sigmoid", "tanh", "leaky_relu", "elu", "selu", "celu", "softplus", "dropout", "dropout1d",
              "dropout2d", "dropout3d", "alpha_dropout", "threshold", "logsigmoid", "softsign"),
]
_register(FUNCTION_HANDLERS, list(dict.fromkeys(ELEMENTWISE_FUNCTIONS)), o._elementwise)
_register(FUNCTION_HANDLERS, _fn_list(
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "interpolate", "upsample", "lp_pool2d"), o._spatial_fn)
_register(FUNCTION_HANDLERS, [F.pad], o._pad)
_register(FUNCTION_HANDLERS, [F.softmax, F.log_softmax, torch.softmax, torch.log_softmax], o._softmax)
_register(FUNCTION_HANDLERS, [torch.mean, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp], o._reduction)
_register(FUNCTION_HANDLERS, [torch.sum], o._sum)
# the functional forms of the layers above, with a module's own weights (timm's norm-act layers)
_register(FUNCTION_HANDLERS, [F.layer_norm], f.layer_norm_fn)
_register(FUNCTION_HANDLERS, [F.batch_norm], f.batch_norm_fn)
_register(FUNCTION_HANDLERS, [F.group_norm], f.group_norm_fn)
FLOP_FUNCTIONS = frozenset([F.conv1d, F.conv2d, F.conv3d, F.linear])
_register(FUNCTION_HANDLERS, [F.conv1d, F.conv2d, F.conv3d], f.conv_fn)
_register(FUNCTION_HANDLERS, [F.linear], f.linear_fn)
_register(FUNCTION_HANDLERS, [builtins.getattr, builtins.len], o._metadata)
_register(FUNCTION_HANDLERS, [operator.getitem], s.getitem)
_register(FUNCTION_HANDLERS, [torch.reshape], s.torch_reshape)
_register(FUNCTION_HANDLERS, [torch.flatten, torch.permute, torch.transpose, torch.swapaxes, torch.movedim,
                              torch.squeeze, torch.unsqueeze, torch.t], s.same_op)
_register(FUNCTION_HANDLERS, list(dict.fromkeys([torch.cat, torch.concat, torch.concatenate])), s.cat)
_register(FUNCTION_HANDLERS, [torch.stack], s.stack)
_register(FUNCTION_HANDLERS, [torch.chunk], s.chunk)
_register(FUNCTION_HANDLERS, [torch.split], s.split)
_register(FUNCTION_HANDLERS, [torch.roll], s.roll)
_register(FUNCTION_HANDLERS, [torch.flip], s.flip)
_register(FUNCTION_HANDLERS, [torch.narrow, torch.select, torch.unbind], s.unbind_like)

# functions known by qualified name, so that optional packages need not be imported here
NAMED_FUNCTION_HANDLERS.update({
    "torchvision.ops.stochastic_depth.stochastic_depth": o._elementwise,  # eval: identity; train: per-sample scale
})

# ---- tensor methods ----------------------------------------------------------------------------
_register(METHOD_HANDLERS, [
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "clamp", "clamp_", "clamp_min", "abs", "neg", "exp", "sqrt", "rsqrt", "pow", "masked_fill",
    "square", "hardswish", "gelu",
], o._elementwise)
_register(METHOD_HANDLERS, ["to", "float", "half", "double", "type_as", "contiguous", "clone", "detach",
                            "requires_grad_", "bfloat16"], s.cast)
_register(METHOD_HANDLERS, ["size", "dim", "numel", "type", "get_device"], o._metadata)
_register(METHOD_HANDLERS, ["new_empty", "new_zeros", "new_ones", "new_full", "new_tensor"], o._creation)
_register(METHOD_HANDLERS, ["bernoulli", "bernoulli_"], o._elementwise)  # a train-mode drop mask, drawn in place
_register(METHOD_HANDLERS, ["view", "reshape"], s.reshape)
_register(METHOD_HANDLERS, ["unflatten"], s.unflatten)
_register(METHOD_HANDLERS, ["flatten", "permute", "transpose", "swapaxes", "movedim", "squeeze", "unsqueeze", "t"],
          s.same_op)
_register(METHOD_HANDLERS, ["expand", "expand_as"], s.expand)
_register(METHOD_HANDLERS, ["chunk"], s.chunk)
_register(METHOD_HANDLERS, ["split"], s.split)
_register(METHOD_HANDLERS, ["roll"], s.roll)
_register(METHOD_HANDLERS, ["flip"], s.flip)
_register(METHOD_HANDLERS, ["narrow", "select", "unbind"], s.unbind_like)
_register(METHOD_HANDLERS, ["repeat"], s.repeat)
_register(METHOD_HANDLERS, ["mean", "amax", "amin", "std", "var", "logsumexp"], o._reduction)
_register(METHOD_HANDLERS, ["sum"], o._sum)
_register(METHOD_HANDLERS, ["softmax", "log_softmax"], o._softmax)


def is_flop_free(node) -> bool:
    """A call of a function or tensor method of this table that neither multiplies matrices nor
    convolves (``FLOP_FUNCTIONS`` do), so ``FlopCounterMode`` would count 0 for it (modules are
    decided by ``_shape_exec``'s rules)."""
    if node.op == "call_function":
        return o.function_handler(node.target) is not None and node.target not in FLOP_FUNCTIONS
    if node.op == "call_method":
        return node.target in METHOD_HANDLERS
    return False
