"""Weight- and output-based criteria that need no data: FPGM, SIMC, BN scale, NISP.

The equation numbers cited below are those of the survey "Exploiting prunability for person
re-identification" (Masson et al. 2021), which states each criterion's formula.

Each returns one score per atom, **low = prune**; per-layer scores go through
:func:`aggregate_member_scores` (mean normalisation per layer, then the mean over the layers
an atom couples), as for ``l1``/``l2``.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from torch import nn

from compressor.common.config import number_where
from compressor.criteria._base import aggregate_member_scores, CriterionContext, producer_weights, register_criterion
from compressor.graph import DependencyGraph, evaluating, PRODUCER_KINDS

# cosine distances below this count as 0: a filter and 3x that filter differ by rounding only
_COSINE_TOL = 1e-10


# ---- FPGM ------------------------------------------------------------------------------------


@register_criterion("fpgm")
def fpgm(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """Sum of Euclidean distances to the layer's other filters (He et al. CVPR'19; "Exploiting
    prunability" eq. 13-17).

    A small sum means the filter lies near the layer's geometric median: the others can stand
    in for it, so it is pruned first. Euclidean distance, as in the official code.
    """
    scores = {}
    for m, w in producer_weights(model, graph).items():
        w = w.double()
        scores[m] = torch.cdist(w, w).sum(dim=1).numpy()
    return aggregate_member_scores(graph, scores)


# ---- SIMC ------------------------------------------------------------------------------------


def simc_layer_scores(w: torch.Tensor, tau: float) -> np.ndarray:
    """SIMC scores of the rows of one layer's weight matrix ``w`` (n_out, fan_in).

    Filters are clustered by complete linkage on cosine distance, cut at ``1 - tau``
    ("Exploiting prunability" eq. 1-2, Alg. 2; the official code's linkage). The filter of largest L1 norm
    represents its cluster (the first on ties) and scores ``1 + l1 / max l1`` in (1, 2]; every
    other filter of the cluster is redundant and scores half its cosine distance to the
    representative, in [0, 1): redundant filters rank below all representatives, the most
    similar ones lowest. All-zero filters have no direction; they are redundant and score 0.
    """
    w = w.double().numpy()
    l1 = np.abs(w).sum(axis=1)
    scores = np.zeros(len(w))
    live = np.flatnonzero(l1 > 0)
    if live.size == 0:
        return scores
    cluster = np.zeros(live.size, dtype=np.int64)
    if live.size > 1:
        dist = np.clip(pdist(w[live], metric="cosine"), 0.0, 2.0)
        cluster = fcluster(linkage(dist, method="complete"), t=1.0 - tau + _COSINE_TOL, criterion="distance")
    unit = w[live] / np.linalg.norm(w[live], axis=1, keepdims=True)
    norm = l1[live]
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        rep = members[np.argmax(norm[members])]
        scores[live[members]] = np.clip(1.0 - unit[members] @ unit[rep], 0.0, 2.0) / 2
        scores[live[rep]] = 1.0 + norm[rep] / norm.max()
    return scores


@register_criterion("simc", defaults={"tau": 0.9}, checks={"tau": number_where(lambda t: 0 < t <= 1, "in (0, 1]")})
def simc(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """Cosine-similarity clustering, one filter kept per cluster (Ayinde & Zurada; "Exploiting
    prunability" eq. 1-2, Alg. 2).

    ``tau`` (option, default 0.9) decides which filters are redundant: those within cosine
    similarity ``tau`` of a stronger filter of their cluster (``tau=1``: same direction only).
    The pruning target decides how many filters go: redundant filters first, most similar
    first, then representatives by L1 norm (see :func:`simc_layer_scores`). Mean
    normalisation per layer keeps that order within each layer.
    """
    tau = float(ctx.options["tau"])
    scores = {m: simc_layer_scores(w, tau) for m, w in producer_weights(model, graph).items()}
    return aggregate_member_scores(graph, scores)


# ---- BN scale ----------------------------------------------------------------------------------


@register_criterion("bn_scale")
def bn_scale(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """|gamma| of the BatchNorm on each channel (network slimming, Liu et al. ICCV'17).

    Channels that no affine BatchNorm touches get the neutral score 1.0, the mean of a
    mean-normalised layer. Raises ValueError if the model has no affine BatchNorm.
    """
    modules = dict(model.named_modules())
    scores = {}
    for m, member in enumerate(graph.members):
        weight = getattr(modules[member.module], "weight", None)
        if member.kind == "bn" and weight is not None:
            scores[m] = weight.detach().abs().double().cpu().numpy()
    if not scores:
        raise ValueError(f"criterion 'bn_scale' needs BatchNorm layers with affine weights; "
                         f"{type(model).__name__} has none")
    return aggregate_member_scores(graph, scores, fill=1.0)


# ---- NISP ------------------------------------------------------------------------------------


@torch.no_grad()
def _nonnegative_linear_copy(model: nn.Module) -> nn.Module:
    """A float64 copy whose conv/Linear weights are |W| with zero biases, whose BatchNorms (in
    eval mode) multiply by |gamma / sqrt(running_var + eps)| and add nothing, and whose ReLU6 /
    Hardtanh modules do not clip from above."""
    net = copy.deepcopy(model).double().requires_grad_(True)
    for module in net.modules():
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            module.weight.abs_()
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            device = next((t.device for t in (module.weight, module.running_var) if t is not None), None)
            ones = torch.ones(module.num_features, dtype=torch.float64, device=device)
            var = ones if module.running_var is None else module.running_var
            gamma = ones if module.weight is None else module.weight
            scale = (gamma / torch.sqrt(var + module.eps)).abs()
            module.running_mean = torch.zeros_like(scale)  # eval BN then uses these, not batch statistics
            module.eps = 0.0
            if module.weight is not None:
                module.weight.copy_(scale)
                module.bias.zero_()
                module.running_var = torch.ones_like(scale)
            else:
                module.running_var = scale.clamp_min(1e-300) ** -2
        elif isinstance(module, nn.Hardtanh):  # ReLU6: clipping at 6 would zero the gradient of large activations
            module.max_val = float("inf")
    return net


def _output_tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    if isinstance(output, dict):
        return [t for v in output.values() for t in _output_tensors(v)]
    if isinstance(output, (tuple, list)):
        return [t for v in output for t in _output_tensors(v)]
    return []


@register_criterion("nisp")
def nisp(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """Output importance propagated backwards, ``s_k = |W_{k+1}|^T s_{k+1}`` (NISP; "Exploiting prunability" eq. 30).

    Every output of the network gets importance 1: NISP's Inf-FS ranking of the final layer's
    features needs data, and is replaced by uniform importance. The propagation is done by
    autograd on a copy of the model made linear and nonnegative: conv/Linear weights |W|, zero
    biases, each BatchNorm its positive scale |gamma / sqrt(var + eps)|. Every activation is then
    nonnegative and ReLUs act as the identity (ReLU6 modules lose their clip at 6 to do so too);
    max pooling is the one non-linear op left (it routes importance to the window's largest
    input). Other activations (functional relu6, SiLU ...) and normalisations are left as they
    are. ``s`` of a producer's channel is the gradient of the sum of all outputs with respect to
    the producer's output, on an all-ones input shaped like the example inputs,
    summed over batch and spatial positions (and over the calls of a layer called several times).
    The copy runs in float64; the model itself is not touched.
    """
    if not ctx.example_inputs:
        raise ValueError("criterion 'nisp' needs the example inputs the graph was traced with; none were given")
    net = _nonnegative_linear_copy(model)
    modules = dict(net.named_modules())
    producers = {m: member for m, member in enumerate(graph.members) if member.kind in PRODUCER_KINDS}
    captured: dict[str, list[torch.Tensor]] = {member.module: [] for member in producers.values()}

    def capture(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if isinstance(output, torch.Tensor) and output.requires_grad:
                captured[name].append(output)
                return output.clone()  # later in-place ops (ReLU(inplace=True), +=) must not touch it
            return None
        return hook

    inputs = tuple(torch.ones_like(x, dtype=torch.float64).requires_grad_() if torch.is_tensor(x)
                   and x.is_floating_point() else x for x in ctx.example_inputs)
    handles = [modules[name].register_forward_hook(capture(name)) for name in captured]
    try:
        with evaluating(net), torch.enable_grad():
            outputs = _output_tensors(net(*inputs))
    finally:
        for handle in handles:
            handle.remove()
    if not outputs:
        raise ValueError(f"criterion 'nisp': {type(model).__name__} returned no floating-point tensor")
    flat = [(name, t) for name, ts in captured.items() for t in ts]
    total = sum(o.sum() for o in outputs)
    grads = torch.autograd.grad(total, [t for _, t in flat], allow_unused=True) if flat else ()

    per_module: dict[str, torch.Tensor] = {}
    for (name, t), g in zip(flat, grads):
        weight_dims = modules[name].weight.dim()
        dim = t.dim() - 1 if isinstance(modules[name], nn.Linear) else (1 if t.dim() == weight_dims else 0)
        g = torch.zeros_like(t) if g is None else g
        s = g.movedim(dim, 0).reshape(t.shape[dim], -1).sum(dim=1)
        per_module[name] = per_module.get(name, 0) + s
    scores = {}
    for m, member in producers.items():
        s = per_module.get(member.module)
        scores[m] = np.zeros(member.size) if s is None else s.detach().cpu().numpy()
        if not np.isfinite(scores[m]).all():
            raise ValueError(f"criterion 'nisp': importance of {member.module!r} is not finite (overflow)")
    return aggregate_member_scores(graph, scores)
