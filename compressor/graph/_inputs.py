"""Example inputs as the graph, cost model and surgery take them: one tensor or a tuple of inputs."""
from __future__ import annotations

from typing import Any

import torch


def as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """``(tensor,)`` for one tensor, the tuple for a list or tuple; anything else is a TypeError."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise TypeError(f"example_inputs must be a Tensor or a tuple of inputs, got {type(example_inputs).__name__}")
