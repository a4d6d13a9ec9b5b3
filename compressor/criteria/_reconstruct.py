"""ThiNet and LASSO channel selection, and the least-squares refit of the next layer.

Both criteria judge a channel by what it adds to the output of the layer that *consumes* it
(a groups=1 ``Conv2d`` or a ``Linear``; grouped/depthwise convs and other layers are not
scored). On calibration batches the consumer's input ``X`` is captured with forward pre-hooks
and ``points`` random (sample, location, output channel) points are drawn. Input channel j
contributes ``z_j = sum_{kh,kw} W[c, j, kh, kw] X[n, j, patch(loc)]`` to point (n, loc, c), so
the consumer's pre-bias output at the points is ``y = sum_j z_j`` (eq. 24 of "Exploiting
prunability for person re-identification", Masson et al. 2021). The columns ``z_j`` of the
channels that form one atom are summed (a Linear after a flatten reads H*W features per
channel), and only removable atoms compete; the others are always kept.

* ``thinet`` (Luo et al. 2017; "Exploiting prunability" eq. 24-25) removes channels greedily,
  each time the one that keeps ``||sum_{removed} z_j||^2`` smallest.
* ``lasso`` (He et al. ICCV'17; "Exploiting prunability" eq. 26) ranks channels by how long
  their coefficient survives on the LASSO path of ``y ~ sum_j beta_j z_j``.

Scores are the channel's position in that order divided by the number of candidates (first to
go = lowest), so every consumer contributes scores spread over (0, 1]; after the per-layer
mean normalisation a global target then prunes the layers about evenly, as ThiNet and He et
al. prune layer by layer. An atom that no consumer scores (it feeds only grouped convs,
pooling or the output) falls back to the L2 norm of its filters (mean-normalised too, so on
the same scale) rather than a constant that would tie or put it first.

After the surgery both refit every consumer that lost input channels (:func:`refit_consumers_`).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.common.config import int_at_least, is_number
from compressor.criteria._base import aggregate_member_scores, CriterionContext, producer_weights, register_criterion
from compressor.graph import DependencyGraph, evaluating
from compressor.common.errors import CompressorError

_CHECKS = {"points": int_at_least(1)}


# ---- sampling the consumers' inputs --------------------------------------------------------------


def consumer_members(model: nn.Module, graph: DependencyGraph) -> dict[int, nn.Module]:
    """``{member: module}`` for the input members of groups=1 ``Conv2d`` and ``Linear`` layers."""
    modules = dict(model.named_modules())
    out = {}
    for m, member in enumerate(graph.members):
        module = modules.get(member.module)
        conv = member.kind == "conv_in" and member.groups == 1 and isinstance(module, nn.Conv2d) and module.groups == 1
        linear = member.kind == "linear_in" and isinstance(module, nn.Linear)
        if (conv or linear) and module.weight.shape[1] == member.size:
            out[m] = module
    return out


def conv_patches(x: torch.Tensor, conv: nn.Conv2d, n: torch.Tensor, oh: torch.Tensor, ow: torch.Tensor) -> torch.Tensor:
    """The receptive fields of ``conv`` at output points (n, oh, ow): shape (points, C_in, kh*kw).

    Equals columns of ``F.unfold`` (same padding, stride, dilation and padding mode) without
    unfolding the whole batch.
    """
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    rows = oh[:, None] * sh + torch.arange(kh, device=x.device) * dh
    cols = ow[:, None] * sw + torch.arange(kw, device=x.device) * dw
    patches = xp[n[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (P, kh, kw, C)
    return patches.permute(0, 3, 1, 2).reshape(len(n), x.shape[1], kh * kw)


def _sample_patches(x: torch.Tensor, module: nn.Module, count: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` random input patches (points, C_in, K) of one call; K = 1 for a Linear."""
    if isinstance(module, nn.Linear):
        flat = x.reshape(-1, x.shape[-1])
        idx = rng.choice(flat.shape[0], size=min(count, flat.shape[0]), replace=False)
        return flat[torch.from_numpy(idx).to(x.device)].unsqueeze(-1)
    xp_h = x.shape[2] + sum(module._reversed_padding_repeated_twice[2:])
    xp_w = x.shape[3] + sum(module._reversed_padding_repeated_twice[:2])
    ho = (xp_h - module.dilation[0] * (module.kernel_size[0] - 1) - 1) // module.stride[0] + 1
    wo = (xp_w - module.dilation[1] * (module.kernel_size[1] - 1) - 1) // module.stride[1] + 1
    total = x.shape[0] * ho * wo
    flat = torch.from_numpy(rng.choice(total, size=min(count, total), replace=False)).to(x.device)
    return conv_patches(x, module, flat // (ho * wo), (flat // wo) % ho, flat % wo)


def capture_samples(model: nn.Module, modules: dict[str, nn.Module], ctx: CriterionContext, points: int,
                    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Run the calibration batches and return ~``points`` sampled input patches per named module.

    The model runs in eval mode under ``no_grad`` (modes restored, hooks removed afterwards).
    ``transform(name, patches)`` runs inside the hook, so only its (smaller) result is kept.
    The points are spread evenly over the expected number of batches; the draws come from
    ``numpy.random.default_rng(ctx.seed)``.
    """
    batches = ctx.num_batches
    if hasattr(ctx.data, "__len__"):
        batches = max(1, min(batches, math.ceil(len(ctx.data) / ctx.batch_size)))
    per_call = math.ceil(points / batches)
    rng = np.random.default_rng(ctx.seed)
    kept: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hook_for(name: str):
        def hook(module, args):
            patches = _sample_patches(args[0].detach(), module, per_call, rng)
            kept[name].append((transform(name, patches) if transform else patches).float().cpu())
        return hook

    device = next(model.parameters()).device
    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with evaluating(model), torch.no_grad():
            for x, _ in ctx.batches(device):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in kept.items() if parts}


def channel_contributions(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext, points: int
                          ) -> dict[int, torch.Tensor]:
    """``{consumer member: Z}``, Z (points, C_in) = each input channel's share of sampled outputs.

    Each point also draws one output channel c of the consumer: ``Z[p, j] = sum_k W[c, j, k] X_p[j, k]``
    ("Exploiting prunability" eq. 24); the rows of Z sum to the pre-bias output at the point.
    """
    removable = np.zeros(graph.num_atoms + 1, dtype=bool)
    removable[graph.removable] = True  # index -1 (never removed) reads the extra False
    consumers = {m: module for m, module in consumer_members(model, graph).items()
                 if removable[graph.member_atoms(m)].any()}
    by_name = {graph.members[m].module: m for m in consumers}
    rng = np.random.default_rng(ctx.seed + 1)

    def contributions(name: str, patches: torch.Tensor) -> torch.Tensor:
        weight = consumers[by_name[name]].weight.detach()
        c = torch.from_numpy(rng.integers(weight.shape[0], size=len(patches))).to(weight.device)
        return (patches * weight.reshape(weight.shape[0], weight.shape[1], -1)[c]).sum(-1)

    samples = capture_samples(model, {name: consumers[m] for name, m in by_name.items()}, ctx, points, contributions)
    return {by_name[name]: z for name, z in samples.items()}


def _atom_columns(graph: DependencyGraph, m: int, z: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z's columns summed per atom of member ``m``: (design (P, A) float64, inverse, candidate mask).

    ``inverse[i]`` is the column of index i; candidates are the removable atoms (atom -1 and
    blocked atoms are always kept and only their sum matters).
    """
    atoms = graph.member_atoms(m)
    uniq, inverse = np.unique(atoms, return_inverse=True)
    cols = z.double().numpy() @ np.eye(len(uniq))[inverse]
    removable = np.zeros(graph.num_atoms, dtype=bool)
    removable[graph.removable] = True
    candidate = (uniq >= 0) & removable[np.maximum(uniq, 0)]
    return cols, inverse, candidate


def _rank_scores(order: np.ndarray, n: int) -> np.ndarray:
    """Score (position + 1) / n for the columns listed in removal ``order``."""
    scores = np.empty(n)
    scores[order] = (np.arange(n) + 1) / n
    return scores


def _data_criterion(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext,
                    order_fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Per-atom scores from ``order_fn(Z_candidates, y_candidates) -> removal order``."""
    member_scores = {}
    for m, z in channel_contributions(model, graph, ctx, ctx.options["points"]).items():
        cols, inverse, candidate = _atom_columns(graph, m, z)
        if not candidate.any():
            continue
        zc = cols[:, candidate]
        per_atom = np.ones(len(candidate))  # always-kept columns come "last"
        per_atom[candidate] = _rank_scores(order_fn(zc, zc.sum(axis=1)), zc.shape[1])
        member_scores[m] = per_atom[inverse]
    scores = aggregate_member_scores(graph, member_scores, normalize="mean", fill=np.nan)
    unscored = np.isnan(scores)
    if unscored.any():  # no groups=1 consumer: fall back to the filters' L2 norm
        norms = {m: w.norm(dim=1).numpy() for m, w in producer_weights(model, graph).items()}
        scores[unscored] = aggregate_member_scores(graph, norms, normalize="mean", fill=1.0)[unscored]
    return scores


# ---- ThiNet ----------------------------------------------------------------------------------------


def thinet_order(z: np.ndarray) -> np.ndarray:
    """Greedy removal order of the columns of ``z`` (Luo et al. 2017; "Exploiting prunability" eq. 25).

    Each step removes the column j that minimises ``||s + z_j||^2`` where s is the sum of the
    columns removed so far; ``||s + z_j||^2 = ||s||^2 + 2 s.z_j + ||z_j||^2`` is read off the
    Gram matrix, so one step costs O(columns).
    """
    gram = z.T @ z
    n = gram.shape[0]
    cross = np.zeros(n)  # s . z_j
    left = np.ones(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    own = np.diag(gram).copy()  # ||z_j||^2
    for step in range(n):
        cost = np.where(left, 2 * cross + own, np.inf)
        j = int(np.argmin(cost))
        order[step] = j
        left[j] = False
        cross += gram[j]
    return order


def thinet_criterion(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """ThiNet: greedily remove the channels that change the next layer's output least ("Exploiting
    prunability" eq. 24-25)."""
    return _data_criterion(model, graph, ctx, lambda z, y: thinet_order(z))


# ---- LASSO ---------------------------------------------------------------------------------------


def _scaled(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide A and y by one common RMS. Columns are *not* standardised: a channel's
    contribution size is exactly what makes it important, and standardising would erase it."""
    scale = float(np.sqrt(np.mean(y ** 2))) or float(np.sqrt(np.mean(a ** 2))) or 1.0
    return np.asfortranarray(a / scale), y / scale


def lasso_path_order(a: np.ndarray, y: np.ndarray, alphas: int = 20, keep: int | None = None) -> np.ndarray:
    """Removal order of A's columns by the LASSO path of ``y ~ A beta`` (He et al. 2017; "Exploiting
    prunability" eq. 26).

    A column's rank is the largest of ``alphas`` penalties (log-spaced from the one that zeroes
    every beta down to 1e-3 of it) at which its beta is nonzero, ties broken by ``|beta|`` at the
    smallest penalty. With ``keep``, the columns chosen by :func:`lasso_channel_selection` come
    after (are kept before) all others.
    """
    from sklearn.exceptions import ConvergenceWarning  # optional SDK: sklearn
    from sklearn.linear_model import lasso_path  # optional SDK: sklearn

    a, y = _scaled(a, y)
    alpha_max = float(np.abs(a.T @ y).max()) / len(y)
    if alpha_max == 0.0:
        enter, last = np.zeros(a.shape[1]), np.zeros(a.shape[1])
    else:
        grid = np.geomspace(alpha_max, 1e-3 * alpha_max, alphas)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            grid, coefs, _ = lasso_path(a, y, alphas=grid)
        nonzero = coefs != 0
        enter = np.where(nonzero.any(axis=1), grid[np.argmax(nonzero, axis=1)], 0.0)
        last = np.abs(coefs[:, -1])
    selected = np.zeros(a.shape[1], dtype=bool) if keep is None else lasso_channel_selection(a, y, keep)
    return np.lexsort((last, enter, selected))


def lasso_channel_selection(a: np.ndarray, y: np.ndarray, keep: int, tol: float = 0.1,
                            max_iter: int = 60) -> np.ndarray:
    """Kept-column mask by binary search of the LASSO penalty (He et al. 2017; "Exploiting prunability" eq. 26).

    Fits ``min_beta ||y - A beta||^2 / (2 n) + lambda ||beta||_1`` (scikit-learn ``Lasso``, no
    intercept) and bisects log(lambda) until the number of nonzero betas lies in
    ``[keep, ceil((1 + tol) keep)]``. If ``max_iter`` bisections do not land in that window,
    the ``keep`` largest ``|beta|`` of the last fit with at least ``keep`` nonzeros are kept.

    Raises:
        ValueError: ``keep`` < 1.
    """
    from sklearn.exceptions import ConvergenceWarning  # optional SDK: sklearn
    from sklearn.linear_model import Lasso  # optional SDK: sklearn

    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    a, y = _scaled(np.asarray(a, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if keep >= a.shape[1]:
        return np.ones(a.shape[1], dtype=bool)
    upper = math.ceil((1 + tol) * keep)
    alpha_max = max(float(np.abs(a.T @ y).max()) / len(y), 1e-12)
    lo, hi = math.log(alpha_max * 1e-8), math.log(alpha_max)  # hi: all zero; lo: (nearly) all nonzero
    fallback = np.ones(a.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(max_iter):
            mid = (lo + hi) / 2
            beta = Lasso(alpha=math.exp(mid), fit_intercept=False, max_iter=5000).fit(a, y).coef_
            count = int(np.count_nonzero(beta))
            if keep <= count <= upper:
                return beta != 0
            if count > upper:
                lo, fallback = mid, beta
            else:
                hi = mid
    mask = np.zeros(a.shape[1], dtype=bool)
    mask[np.argsort(-np.abs(fallback), kind="stable")[:keep]] = True
    return mask


def _keep_ratio_ok(v: Any) -> bool:
    return v is None or (is_number(v) and 0 < v <= 1)


def lasso_criterion(model: nn.Module, graph: DependencyGraph, ctx: CriterionContext) -> np.ndarray:
    """LASSO channel selection: keep the channels whose coefficients survive the penalty longest
    ("Exploiting prunability" eq. 26)."""
    opts = ctx.options

    def order(z: np.ndarray, y: np.ndarray) -> np.ndarray:
        keep = None if opts["keep_ratio"] is None else max(1, round(opts["keep_ratio"] * z.shape[1]))
        return lasso_path_order(z, y, opts["alphas"], keep)

    return _data_criterion(model, graph, ctx, order)


# ---- least-squares refit -------------------------------------------------------------------------


def refit_consumers_(original: nn.Module, pruned: nn.Module, graph: DependencyGraph, removed: np.ndarray,
                     ctx: CriterionContext) -> dict[str, Any]:
    """Refit, in place, the weights of every consumer that lost input channels ("Exploiting prunability" eq. 25-26).

    ThiNet-style, the target is the *original* consumer's pre-bias output on the *original*
    model's inputs, and the regressors are those inputs restricted to the kept channels:
    ``min_W' ||Y - X_kept W'^T||^2 + lambda ||W' - W_kept||^2`` over ``points`` sampled
    (sample, location) rows, all kept output channels at once, in float64. The ridge pulls
    towards the sliced weights (not towards 0), so an under-determined layer keeps its weights
    where the data say nothing; lambda = 1e-6 * trace(X^T X) / columns. Biases are unchanged.
    Groups=1 ``Conv2d`` and ``Linear`` consumers only.

    Returns ``{"refit": {layer: {"rel_error_before", "rel_error_after", "rows"}}}``: the
    relative error ``||Y - X_kept W^T|| / ||Y||`` on the calibration rows with the sliced
    weights and with the refitted ones (in-sample, so after <= before by construction).
    """
    consumers = consumer_members(original, graph)
    out_member = {g.module: m for m, g in enumerate(graph.members) if g.kind in ("conv_out", "linear_out")}
    plans = {}
    for m, module in consumers.items():
        kept_in = graph.kept_mask(m, removed)
        if kept_in.all():
            continue
        name = graph.members[m].module
        kept_out = (graph.kept_mask(out_member[name], removed) if name in out_member
                    else np.ones(module.weight.shape[0], dtype=bool))
        plans[name] = (module, kept_in, kept_out)
    if not plans:
        return {}
    samples = capture_samples(original, {name: p[0] for name, p in plans.items()}, ctx, ctx.options["points"])
    targets = dict(pruned.named_modules())
    summary: dict[str, dict[str, float]] = {}
    for name, (module, kept_in, kept_out) in plans.items():
        if name not in samples:  # a layer that runs only in training (an auxiliary head) saw no eval sample:
            continue  # it keeps its sliced weights
        x = samples[name].double()  # (rows, C_in, K)
        w = module.weight.detach().double().cpu().reshape(module.weight.shape[0], module.weight.shape[1], -1)
        y = x.flatten(1) @ w.flatten(1)[torch.from_numpy(kept_out)].T
        xk = x[:, torch.from_numpy(kept_in)].flatten(1)
        w0 = w[torch.from_numpy(kept_out)][:, torch.from_numpy(kept_in)].flatten(1)
        residual = y - xk @ w0.T
        gram = xk.T @ xk
        ridge = 1e-6 * float(gram.trace()) / gram.shape[0] + 1e-12
        delta = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), xk.T @ residual)
        norm = float(y.norm()) or 1.0
        target = targets[name].weight
        new = (w0 + delta.T).reshape(target.shape[0], -1)
        if new.numel() != target.numel():
            raise CompressorError(f"internal: refit of '{name}' has {tuple(new.shape)} weights, the pruned layer "
                                  f"{tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(new.reshape(target.shape).to(target))
        summary[name] = {"rel_error_before": float(residual.norm()) / norm,
                         "rel_error_after": float((residual - xk @ delta).norm()) / norm, "rows": int(len(x))}
    return {"refit": summary}


register_criterion("thinet", needs_data=True, defaults={"points": 2048}, checks=_CHECKS,
                   after_removal=refit_consumers_)(thinet_criterion)
register_criterion("lasso", needs_data=True, defaults={"points": 2048, "alphas": 20, "keep_ratio": None},
                   checks={**_CHECKS, "alphas": int_at_least(2),
                           "keep_ratio": (_keep_ratio_ok, "None or a number in (0, 1]")},
                   after_removal=refit_consumers_)(lasso_criterion)
