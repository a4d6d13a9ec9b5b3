"""Shared helpers of the pruning tests: random-but-meaningful weights and the masked-oracle check.

Physical pruning must equal *zeroing* the removed channels' producers (``zero_channels_``):
in eval mode a removed channel is then exactly 0 everywhere downstream. Randomly initialised
models hide mistakes, so :func:`randomize_` first gives every BatchNorm non-trivial statistics
and affine terms and replaces constant initialisations (zero heads, zero biases, 1e-6 layer
scales), so that every channel really contributes to the output.

The test files import this module after putting their own directory on ``sys.path``
(``tests/`` has no ``__init__.py``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import compressor as C

SIZED_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm)


# ---- weights -----------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give ``model`` weights under which every channel matters (in place; returns it).

    * BatchNorm: running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5), weight ~ U(0.5, 1.5),
      bias ~ N(0, 0.2): a removed channel's shift is then visible if surgery forgets it.
    * any parameter whose elements are all equal (zero-initialised heads and biases,
      LayerNorm ones, ConvNeXt's 1e-6 layer scale, ViT's zero class token): a zero matrix gets
      a fan-in scaled normal, a zero vector N(0, 0.1), a non-zero constant U(0.5, 1.5).
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(shape, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=gen, dtype=torch.float64).to(like)

    def randn(shape, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(like)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            if module.running_mean is not None:
                module.running_mean.copy_(0.2 * randn(module.running_mean.shape, module.running_mean))
                module.running_var.copy_(0.5 + rand(module.running_var.shape, module.running_var))
            if module.weight is not None:
                module.weight.copy_(0.5 + rand(module.weight.shape, module.weight))
                module.bias.copy_(0.2 * randn(module.bias.shape, module.bias))
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                 for p in m.parameters(recurse=False)}
    for p in model.parameters():
        if id(p) in bn_params or not p.is_floating_point() or p.numel() < 2:
            continue
        flat = p.reshape(-1)
        if not bool((flat == flat[0]).all()):
            continue
        if float(flat[0]) != 0.0:
            p.copy_(0.5 + rand(p.shape, p))
        elif p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(randn(p.shape, p) / math.sqrt(fan_in))
        else:
            p.copy_(0.1 * randn(p.shape, p))
    return model


# ---- measurement -------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, inputs: Any) -> int:
    """FlopCounterMode total of one eval forward (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*as_tuple(inputs))
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def as_tuple(inputs: Any) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


@torch.no_grad()
def run_eval(model: nn.Module, inputs: Any) -> Any:
    was_training = model.training
    model.eval()
    try:
        return model(*as_tuple(inputs))
    finally:
        model.train(was_training)


def tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple/list, dict, namedtuple), in a fixed order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for k in sorted(output) for t in tensors_of(output[k])]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in tensors_of(o)]
    return []


def parity_error(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, atol_rel: float = 1e-4) -> float:
    """Largest violation of ``|a - e| <= atol + rtol |e|`` (atol = atol_rel * max|e|), as a
    multiple of the allowed error: <= 1 means allclose."""
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != oracle shape {tuple(expected.shape)}")
    a, e = actual.double(), expected.double()
    atol = atol_rel * float(e.abs().max()) if e.numel() else 0.0
    allowed = atol + rtol * e.abs()
    excess = (a - e).abs() / allowed.clamp_min(1e-30)
    return float(excess.max()) if excess.numel() else 0.0


def assert_parity(actual: Any, expected: Any, rtol: float = 1e-4, atol_rel: float = 1e-4) -> None:
    got, want = tensors_of(actual), tensors_of(expected)
    assert len(got) == len(want) and got, f"{len(got)} output tensors, oracle has {len(want)}"
    for i, (a, e) in enumerate(zip(got, want)):
        assert float(e.abs().max()) > 0, f"oracle output {i} is all zero: the parity check would be vacuous"
        err = parity_error(a, e, rtol, atol_rel)
        worst = float((a.double() - e.double()).abs().max())
        assert err <= 1.0, (f"output {i}: pruned differs from the masked oracle by up to {worst:.3g} "
                            f"(max |oracle| {float(e.abs().max()):.3g}; {err:.2f}x the tolerance)")


# ---- the pipeline under test -------------------------------------------------------------------


@dataclass
class Pruned:
    original: nn.Module
    pruned: nn.Module
    oracle: nn.Module
    graph: C.DependencyGraph
    removed: np.ndarray


def prune_with_oracle(model: nn.Module, inputs: Any, config: C.PruneConfig) -> Pruned:
    """``compressor.prune_model`` (a pruned copy), plus a copy with the same channels zeroed."""
    result = C.prune_model(model, inputs, config)
    oracle = copy.deepcopy(model)
    C.zero_channels_(oracle, result.graph, result.removed)
    return Pruned(model, result.model, oracle, result.graph, result.removed)


def check_pruned(p: Pruned, inputs: Any, *, flops: bool = True) -> None:
    """Parity with the oracle, same output shapes, strictly fewer params/FLOPs, sane modules."""
    assert p.removed.any(), "nothing was removed: the check would be vacuous"
    want = run_eval(p.oracle, inputs)
    assert_parity(run_eval(p.pruned, inputs), want)
    full = tensors_of(run_eval(p.original, inputs))
    assert any(parity_error(o, w) > 1 for o, w in zip(full, tensors_of(want))), \
        "zeroing the removed channels did not change the output: the parity check would be vacuous"
    shapes = [t.shape for t in full]
    assert [t.shape for t in tensors_of(run_eval(p.pruned, inputs))] == shapes
    assert count_params(p.pruned) < count_params(p.original)
    if flops:
        assert count_flops(p.pruned, inputs) < count_flops(p.original, inputs)
    assert_consistent_modules(p.pruned)


def assert_consistent_modules(model: nn.Module) -> None:
    """Every sized layer's attributes agree with its tensors, and no hook was left behind."""
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"{name} has forward hooks"
        if isinstance(m, nn.modules.conv._ConvNd):
            k = tuple(m.kernel_size)
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name
            assert tuple(m.weight.shape) == (m.out_channels, m.in_channels // m.groups, *k), name
            assert m.bias is None or tuple(m.bias.shape) == (m.out_channels,), name
        elif isinstance(m, nn.Linear):
            assert tuple(m.weight.shape) == (m.out_features, m.in_features), name
            assert m.bias is None or tuple(m.bias.shape) == (m.out_features,), name
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                assert t is None or tuple(t.shape) == (m.num_features,), name
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            assert tuple(m.weight.shape) == tuple(m.normalized_shape), name


def zero_rows(model: nn.Module) -> dict[str, int]:
    """Number of all-zero output filters of every conv/Linear."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            out[name] = int((m.weight.detach().reshape(m.weight.shape[0], -1) == 0).all(dim=1).sum())
    return out
