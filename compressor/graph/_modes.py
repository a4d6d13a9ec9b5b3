"""Run a model in eval mode and give every submodule its own train/eval mode back afterwards."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


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
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
