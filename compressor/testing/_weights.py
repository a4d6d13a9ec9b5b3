"""Random-but-meaningful weights: every channel of a randomly initialised model contributes.

A freshly initialised model hides pruning mistakes: BatchNorm statistics are 0/1, heads and
biases start at zero, layer scales at 1e-6, so a wrongly removed or wrongly kept channel
changes nothing. :func:`randomize_` removes those constants.
"""
from __future__ import annotations

import math

import torch
from torch import nn


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give ``model`` weights under which every channel matters (in place; returns it).

    * BatchNorm (any ``_NormBase``): running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5),
      weight ~ U(0.5, 1.5), bias ~ N(0, 0.2): a removed channel's shift is then visible if
      surgery forgets it.
    * any other floating-point parameter whose elements are all equal (zero-initialised heads
      and biases, LayerNorm ones, ConvNeXt's 1e-6 layer scale, ViT's zero class token): a zero
      matrix gets a fan-in scaled normal, a zero vector N(0, 0.1), a non-zero constant U(0.5, 1.5).

    Values are drawn in float64 from a generator seeded with ``seed`` and cast to each tensor's
    dtype and device, so the same seed gives the same model on any device.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        return torch.rand(shape, generator=gen, dtype=torch.float64).to(like)

    def randn(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(like)

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    for module in norms:
        if module.running_mean is not None:
            module.running_mean.copy_(0.2 * randn(module.running_mean.shape, module.running_mean))
            module.running_var.copy_(0.5 + rand(module.running_var.shape, module.running_var))
        if module.weight is not None:
            module.weight.copy_(0.5 + rand(module.weight.shape, module.weight))
            module.bias.copy_(0.2 * randn(module.bias.shape, module.bias))
    norm_params = {id(p) for m in norms for p in m.parameters(recurse=False)}
    for p in model.parameters():
        if id(p) in norm_params or not p.is_floating_point() or p.numel() < 2:
            continue
        flat = p.reshape(-1)
        if not bool((flat == flat[0]).all()):
            continue
        if float(flat[0]) != 0.0:
            p.copy_(0.5 + rand(p.shape, p))
        elif p.dim() >= 2:
            p.copy_(randn(p.shape, p) / math.sqrt(p[0].numel()))
        else:
            p.copy_(0.1 * randn(p.shape, p))
    return model
