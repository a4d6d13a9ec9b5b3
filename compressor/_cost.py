"""Cost model: parameters, MACs/FLOPs, feature-map elements and theoretical TRM.

Conventions (stated once, used everywhere):

* MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (which counts conv, matmul,
  bmm, attention ...); **FLOPs = 2 x MACs**. Element-wise ops (BN, activations, adds) are not
  counted, as in the literature and in torch's counter.
* All per-sample figures are at the example input's spatial size.
* **FM** is the number of feature-map elements one sample produces: the sum of the output
  sizes of every conv and Linear layer (BatchNorm/activations are folded or in place at
  deployment, so they do not add maps).
* **TRM(BS) = MPS + FM x 4 x BS** bytes (seed 002 eq. 10), with MPS the parameter bytes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass
class LayerCostRow:
    name: str
    type: str
    params: int
    macs: float  # per sample
    fm_elements: int  # output elements per sample


@dataclass
class CostReport:
    params: int
    macs: float  # per sample
    fm_elements: int  # per sample
    mps_bytes: int
    input_shape: list[int]
    layers: list[LayerCostRow]

    @property
    def flops(self) -> float:
        return 2 * self.macs

    def trm_bytes(self, batch_size: int) -> int:
        """Theoretical total runtime memory at ``batch_size`` (seed 002 eq. 10)."""
        return int(self.mps_bytes + self.fm_elements * 4 * batch_size)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flops"] = self.flops
        return out


def count_cost(model: nn.Module, example_inputs: Any) -> CostReport:
    """Measure the cost of ``model`` on ``example_inputs`` (one forward, eval, no grad).

    The model's train/eval mode is restored afterwards.
    """
    from ._graph import _as_tuple
    from ._modes import evaluating

    inputs = _as_tuple(example_inputs)
    first = _first_tensor(inputs)
    batch = int(first.shape[0]) if first is not None and first.dim() else 1
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    outputs: dict[str, int] = {}

    def hook(name):
        def fn(module, args, out):
            if isinstance(out, torch.Tensor):
                outputs[name] = outputs.get(name, 0) + out.numel()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    try:
        with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    rows = []
    for name, module in layers:
        flops = sum(per_module.get(f"{root}.{name}", {}).values())
        rows.append(LayerCostRow(name=name, type=type(module).__name__,
                                 params=sum(p.numel() for p in module.parameters(recurse=False)),
                                 macs=flops / 2 / batch, fm_elements=outputs.get(name, 0) // batch))
    params = sum(p.numel() for p in model.parameters())
    mps = sum(p.numel() * p.element_size() for p in model.parameters())
    return CostReport(params=params, macs=counter.get_total_flops() / 2 / batch,
                      fm_elements=sum(r.fm_elements for r in rows), mps_bytes=mps,
                      input_shape=list(first.shape) if first is not None else [], layers=rows)


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None
