"""Fold BatchNorm into the conv or Linear layer that feeds it (eval-mode statistics).

``fold_batchnorm(model, example_inputs)`` traces the model, finds every BatchNorm whose input
is the output of a conv (plain, grouped, depthwise, with or without bias) or a Linear used
nowhere else, folds it with PyTorch's own ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval``, and
replaces the BatchNorm by ``nn.Identity``. The model keeps its class and forward. Every
BatchNorm left over is reported with the reason it was kept (it follows an add, a concat, a
conv whose output is also used elsewhere ...). The folded model is checked against the
original on the example input.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import Node
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from compressor.graph import (as_tuple, count_cost, evaluating, module_modes, network_view, restore_modes_,
                              symbolic_trace)
from compressor.common.errors import CompressorError

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class FoldReport:
    folded: list[tuple[str, str]]  # (producer, batchnorm)
    kept: dict[str, str]  # batchnorm -> why it was not folded
    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    max_abs_error: float
    max_rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(node: Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[str(node.target)]).__name__} '{node.target}'"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target}"


def _candidates(model: nn.Module) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(producer, bn) pairs that can be folded, and the reasons for the others."""
    gm = symbolic_trace(model)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs, kept = [], {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], nn.modules.batchnorm._BatchNorm):
            continue
        name, bn = str(node.target), modules[str(node.target)]
        source = node.args[0] if node.args else None
        reason = None
        if bn.running_mean is None:
            reason = "no running statistics (track_running_stats=False)"
        elif calls[name] > 1:
            reason = "the BatchNorm module is called more than once"
        elif not isinstance(source, Node) or source.op != "call_module" \
                or not isinstance(modules[str(source.target)], _PRODUCERS):
            what = _describe(source, modules) if isinstance(source, Node) else repr(source)
            reason = f"its input is not a conv/Linear output (it follows {what})"
        elif len(source.users) > 1:
            reason = f"the output of '{source.target}' is also used elsewhere"
        elif calls[str(source.target)] > 1:
            reason = f"'{source.target}' is called more than once"
        if reason:
            kept[name] = reason
        else:
            pairs.append((str(source.target), name))
    for name, module in modules.items():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name not in calls:
            kept[name] = "not called by the traced (eval) forward, e.g. an auxiliary head"
    return pairs, kept


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def fold_batchnorm(model: nn.Module, example_inputs: Any, *, inplace: bool = False,
                   atol: float = 1e-4) -> tuple[nn.Module, FoldReport]:
    """Return ``model`` with every foldable BatchNorm folded, and what was done.

    Args:
        model: the network (its eval-mode statistics are used).
        example_inputs: input for tracing and for the parity check.
        inplace: modify ``model`` itself.
        atol: parity tolerance, relative to the largest output magnitude.

    Raises:
        TraceError: the model cannot be traced.
        CompressorError: the folded model does not match the original (carries the numbers).
    """
    target = model if inplace else copy.deepcopy(model)
    modes = module_modes(target)
    target.eval()
    # a whole detector: its network (backbone, neck, heads) is what is traced and compared, on
    # every raw output; the post-processing around it has no BatchNorm
    view = network_view(target)
    subject, original = (view, network_view(model)) if view is not None else (target, model)
    if view is not None:
        example_inputs = view.network_input(example_inputs)
    pairs, kept = _candidates(subject)
    modules = dict(target.named_modules())
    before = count_cost(original, example_inputs)
    with evaluating(original), torch.no_grad():
        reference = _all_outputs(original(*as_tuple(example_inputs)))
    folded = []
    for producer_name, bn_name in pairs:
        producer, bn = modules[producer_name], modules[bn_name]
        if isinstance(producer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
            kept[bn_name] = f"{type(bn).__name__} after a Linear"
            continue
        fuse = fuse_linear_bn_eval if isinstance(producer, nn.Linear) else fuse_conv_bn_eval
        if producer.weight.shape[0] != bn.num_features:
            kept[bn_name] = f"normalises {bn.num_features} features but '{producer_name}' has {producer.weight.shape[0]}"
            continue
        _set(target, producer_name, fuse(producer, bn))
        _set(target, bn_name, nn.Identity())
        folded.append((producer_name, bn_name))
    if view is not None:
        subject = network_view(target)  # the view holds the modules it was built with
    with torch.no_grad():
        got = _all_outputs(subject(*as_tuple(example_inputs)))
    error = max((float((g - r).abs().max()) if g.numel() else 0.0 for g, r in zip(got, reference)), default=0.0)
    scale = max((float(r.abs().max()) if r.numel() else 0.0 for r in reference), default=1.0) or 1.0
    restore_modes_(target, modes)  # fused layers take the mode of the conv they replace
    after = count_cost(subject, example_inputs)
    report = FoldReport(folded, kept, before.params, after.params, before.macs, after.macs, error,
                        error / max(scale, 1e-12))
    if error > atol * max(scale, 1.0):
        raise CompressorError(f"BatchNorm folding changed the output: max abs error {error:.3g} "
                              f"(output scale {scale:.3g}, tolerance {atol:g} relative)")
    metadata = dict(getattr(model, "compressor_metadata", {}) or {})
    metadata["folded_batchnorms"] = sorted(set(metadata.get("folded_batchnorms", [])) | {bn for _, bn in folded})
    metadata.setdefault("history", []).append({"step": "fold", "folded": len(folded), "kept": kept})
    target.compressor_metadata = metadata
    return target, report


def _all_outputs(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output (nested tuples, lists and dicts, in order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _all_outputs(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _all_outputs(item)]
    raise CompressorError(f"cannot compare model outputs of type {type(out).__name__}")
