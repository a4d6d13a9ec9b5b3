"""The masked oracle: a physically pruned model must equal the original with the removed
channels zeroed.

:func:`compressor.pruning.zero_channels_` zeroes the producers of the removed channels, so in
eval mode a removed channel is exactly 0 everywhere downstream (through any f(0) = 0). Surgery
that slices the right rows, columns, BatchNorm entries and channel-wise parameters therefore
gives the same output as that zeroed copy; a mistake anywhere shows up as a parity failure.
:func:`compare_with_oracle` also checks that the comparison means something (channels were
removed, zeroing them changed the output) and that the pruned model is smaller and well formed.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from compressor.graph import DependencyGraph, evaluating
from compressor.pruning import PruneConfig, prune_model, zero_channels_
from compressor.testing._parity import ParityCheck, compare_outputs, parity_error, tensors_of


def _args(inputs: Any) -> tuple[Any, ...]:
    # a list stays one argument: torchvision detectors take a list of images
    return inputs if isinstance(inputs, tuple) else (inputs,)


def run_eval(model: nn.Module, inputs: Any) -> Any:
    """``model(*inputs)`` in eval mode without grad; every submodule's mode is restored after.

    ``inputs``: a tensor, a tuple of positional inputs, or anything else passed as one argument.
    """
    with torch.no_grad(), evaluating(model):
        return model(*_args(inputs))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, inputs: Any) -> int:
    """torch's ``FlopCounterMode`` total of one eval forward (modes restored, as :func:`run_eval`)."""
    with torch.no_grad(), evaluating(model), FlopCounterMode(display=False) as counter:
        model(*_args(inputs))
    return counter.get_total_flops()


@dataclass
class Pruned:
    """A model, its pruned copy, and the original with the same channels zeroed."""

    original: nn.Module
    pruned: nn.Module
    oracle: nn.Module
    graph: DependencyGraph
    removed: np.ndarray  # bool per atom of ``graph``


def prune_with_oracle(model: nn.Module, inputs: Any, config: PruneConfig) -> Pruned:
    """:func:`compressor.pruning.prune_model` (a pruned copy) plus a copy with the same channels zeroed.

    Raises what ``prune_model`` raises (``TraceError``, ``UnprunableModelError``, ...).
    """
    result = prune_model(model, inputs, config)
    oracle = copy.deepcopy(model)
    zero_channels_(oracle, result.graph, result.removed)
    return Pruned(model, result.model, oracle, result.graph, result.removed)


@dataclass(frozen=True)
class OracleCheck:
    """Outcome of :func:`compare_with_oracle`; ``ok`` when ``problems`` is empty."""

    problems: tuple[str, ...]  # parity's included
    parity: ParityCheck  # pruned vs oracle
    params_before: int
    params_after: int
    flops_before: int | None  # None when FLOPs were not counted
    flops_after: int | None

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_with_oracle(p: Pruned, inputs: Any, *, flops: bool = True) -> OracleCheck:
    """Check a pruned model against its masked oracle on ``inputs``; collects every problem.

    Problems: nothing was removed; the pruned output differs from the oracle's
    (:func:`compare_outputs`, default tolerance); zeroing the removed channels did not change the
    original's output (the parity would be vacuous); output shapes changed; not strictly fewer
    parameters, or FLOPs when ``flops``; a layer whose attributes disagree with its tensors, or a
    forward hook left behind (:func:`module_problems`).
    """
    problems: list[str] = []
    if not p.removed.any():
        problems.append("nothing was removed: the check would be vacuous")
    got, want = run_eval(p.pruned, inputs), run_eval(p.oracle, inputs)
    parity = compare_outputs(got, want)
    problems += [f"pruned vs masked oracle: {problem}" for problem in parity.problems]
    full, masked = tensors_of(run_eval(p.original, inputs)), tensors_of(want)
    if not any(o.shape == w.shape and parity_error(o, w) > 1 for o, w in zip(full, masked)):
        problems.append("zeroing the removed channels did not change the output: the parity check would be vacuous")
    shapes, original_shapes = [tuple(t.shape) for t in tensors_of(got)], [tuple(t.shape) for t in full]
    if shapes != original_shapes:
        problems.append(f"output shapes {shapes} != the original's {original_shapes}")
    params_before, params_after = count_params(p.original), count_params(p.pruned)
    if not params_after < params_before:
        problems.append(f"{params_after} parameters after pruning, not fewer than {params_before}")
    flops_before = flops_after = None
    if flops:
        flops_before, flops_after = count_flops(p.original, inputs), count_flops(p.pruned, inputs)
        if not flops_after < flops_before:
            problems.append(f"{flops_after} FLOPs after pruning, not fewer than {flops_before}")
    problems += module_problems(p.pruned)
    return OracleCheck(tuple(problems), parity, params_before, params_after, flops_before, flops_after)


def check_pruned(p: Pruned, inputs: Any, *, flops: bool = True) -> OracleCheck:
    """:func:`compare_with_oracle`, raising ``AssertionError`` with every problem; returns the check."""
    check = compare_with_oracle(p, inputs, flops=flops)
    if not check.ok:
        raise AssertionError("\n".join(check.problems))
    return check


def module_problems(model: nn.Module) -> list[str]:
    """Layers whose attributes disagree with their tensors, and modules with forward hooks left."""
    problems = []
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks:
            problems.append(f"{name or 'the model'} has forward hooks")
        if isinstance(m, nn.modules.conv._ConvNd):
            k = tuple(m.kernel_size)
            # a transposed conv stores its weight as (in, out / groups, *kernel)
            expected = ((m.in_channels, m.out_channels // m.groups, *k) if m.transposed
                        else (m.out_channels, m.in_channels // m.groups, *k))
            ok = (m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0
                  and tuple(m.weight.shape) == expected
                  and (m.bias is None or tuple(m.bias.shape) == (m.out_channels,)))
        elif isinstance(m, nn.Linear):
            ok = (tuple(m.weight.shape) == (m.out_features, m.in_features)
                  and (m.bias is None or tuple(m.bias.shape) == (m.out_features,)))
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ok = all(t is None or tuple(t.shape) == (m.num_features,)
                     for t in (m.weight, m.bias, m.running_mean, m.running_var))
        elif isinstance(m, nn.LayerNorm) and m.weight is not None:
            ok = tuple(m.weight.shape) == tuple(m.normalized_shape)
        else:
            continue
        if not ok:
            problems.append(f"{name}: attributes of {m!r} disagree with its tensors")
    return problems


def assert_consistent_modules(model: nn.Module) -> None:
    """Raise ``AssertionError`` listing :func:`module_problems`."""
    problems = module_problems(model)
    if problems:
        raise AssertionError("\n".join(problems))


def zero_rows(model: nn.Module) -> dict[str, int]:
    """Number of all-zero output filters of every conv/Linear, by module name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            out[name] = int((m.weight.detach().reshape(m.weight.shape[0], -1) == 0).all(dim=1).sum())
    return out
