"""Cost model: parameters, MACs/FLOPs, feature-map elements and theoretical TRM.

Conventions (stated once, used everywhere):

* MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (which counts conv, matmul,
  bmm, attention ...); **FLOPs = 2 x MACs**. Element-wise ops (BN, activations, adds) are not
  counted, as in the literature and in torch's counter.
* All per-sample figures are at the example input's spatial size.
* **FM** is the number of feature-map elements one sample produces: the sum of the output
  sizes of every conv and Linear layer (BatchNorm/activations are folded or in place at
  deployment, so they do not add maps).
* **TRM(BS) = MPS + FM x 4 x BS** bytes, with MPS the parameter bytes (eq. 10 of "FALF ConvNets:
  Fatuous auxiliary loss based filter-pruning for efficient deep CNNs", Singh et al. 2020).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from compressor.graph._modes import evaluating
from compressor.graph._inputs import as_tuple


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
        """Theoretical total runtime memory at ``batch_size`` (FALF ConvNets eq. 10)."""
        return int(self.mps_bytes + self.fm_elements * 4 * batch_size)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flops"] = self.flops
        return out


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# CPU attention kernels torch's counter does not know (it knows the CUDA ones)
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, also counting CPU attention (``scaled_dot_product_attention``)."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)


@contextlib.contextmanager
def attention_counted() -> Iterator[None]:
    """Turn off ``nn.MultiheadAttention``'s inference fast path for the duration.

    The fast path is one fused op that no counter knows; the regular path's projections and
    attention are counted like any matmul. The global flag is put back afterwards.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_cost(model: nn.Module, example_inputs: Any) -> CostReport:
    """Measure the cost of ``model`` on ``example_inputs`` (one forward, eval, no grad).

    The model's train/eval mode is restored afterwards.
    """

    inputs = as_tuple(example_inputs)
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
        with evaluating(model), torch.no_grad(), attention_counted(), flop_counter() as counter:
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
