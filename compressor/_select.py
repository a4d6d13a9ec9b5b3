"""Turn per-atom scores and a target into the set of atoms to remove.

Every layer keeps at least ``max(min_channels, round_to)`` channels. Atoms are taken in
increasing score order; an atom whose removal would take any layer it touches below that
floor is skipped (that is the *feasible order*). Members belong to exactly one group, so the
feasible order of a group is the global feasible order restricted to it.
"""
from __future__ import annotations

import re

import numpy as np
from scipy.sparse import csr_matrix

from ._config import PruneConfig
from ._graph import PRODUCER_KINDS, DependencyGraph
from .errors import UnprunableModelError, UnreachableTargetError


class _Incidence:
    """atom x member channel counts, plus the per-member floors."""

    def __init__(self, graph: DependencyGraph, floor: int):
        rows, cols, data = [], [], []
        for m in range(len(graph.members)):
            atoms = graph.member_atoms(m)
            atoms = atoms[atoms >= 0]
            if atoms.size:
                uniq, counts = np.unique(atoms, return_counts=True)
                rows.append(uniq)
                cols.append(np.full(uniq.shape, m))
                data.append(counts)
        n_members = len(graph.members)
        if rows:
            self.matrix = csr_matrix((np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
                                     shape=(graph.num_atoms, n_members))
        else:
            self.matrix = csr_matrix((graph.num_atoms, n_members), dtype=np.int64)
        self.sizes = np.array([m.size for m in graph.members], dtype=np.int64)
        self.floor = np.minimum(self.sizes, floor)

    def feasible(self, candidates: np.ndarray) -> np.ndarray:
        remaining = self.sizes.copy()
        indptr, indices, data = self.matrix.indptr, self.matrix.indices, self.matrix.data
        floor = self.floor
        order = []
        for a in candidates.tolist():
            ms = indices[indptr[a]:indptr[a + 1]]
            left = remaining[ms] - data[indptr[a]:indptr[a + 1]]
            if (left >= floor[ms]).all():
                remaining[ms] = left
                order.append(a)
        return np.array(order, dtype=np.int64)


def select_removal(graph: DependencyGraph, scores: np.ndarray, config: PruneConfig) -> np.ndarray:
    """Bool-per-atom mask of the atoms to remove for ``config``'s target.

    Raises:
        UnprunableModelError: no atom of the model can be removed.
        UnreachableTargetError: the FLOPs/params target cannot be met.
    """
    removable = graph.removable
    if removable.size == 0:
        reasons = "; ".join(f"{n} channels: {r}" for r, n in sorted(graph.unsupported.items(), key=lambda kv: -kv[1]))
        raise UnprunableModelError(f"no channel of this model can be removed ({reasons or 'no prunable layers'})")
    order, group_of = _feasible_order(graph, scores, config)
    key, value = config.target
    if key == "ratio":
        return _layerwise(graph, order, group_of, config)
    if key == "global_ratio":
        removed = np.zeros(graph.num_atoms, dtype=bool)
        count = int(round(value * removable.size))
        removed[order[:count]] = True
        return _rounded(graph, order, group_of, removed, config.round_to)
    return _to_cost_target(graph, order, group_of, config, key, value)


def _feasible_order(graph: DependencyGraph, scores: np.ndarray, config: PruneConfig) -> tuple[np.ndarray, np.ndarray]:
    """The feasible removal order (by increasing score) and the group of every atom."""
    removable = graph.removable
    inc = _Incidence(graph, max(config.min_channels, config.round_to))
    order = inc.feasible(removable[np.argsort(scores[removable], kind="stable")])
    group_of = np.full(graph.num_atoms, -1, dtype=np.int64)
    for g in graph.groups:
        group_of[g.atoms] = g.index
    return order, group_of


def smallest_removal(graph: DependencyGraph, scores: np.ndarray, config: PruneConfig) -> np.ndarray:
    """Bool-per-atom mask of the most that ``config`` lets be removed (every layer at its floor)."""
    order, group_of = _feasible_order(graph, scores, config)
    removed = np.zeros(graph.num_atoms, dtype=bool)
    removed[order] = True
    return _rounded(graph, order, group_of, removed, config.round_to)


def _group_widths(graph: DependencyGraph) -> np.ndarray:
    return np.array([len(g.atoms) for g in graph.groups], dtype=np.int64)


def _rounded(graph: DependencyGraph, order: np.ndarray, group_of: np.ndarray, removed: np.ndarray,
             round_to: int) -> np.ndarray:
    """Round every group's kept count to the nearest multiple of ``round_to``."""
    if round_to == 1:
        return removed
    widths = _group_widths(graph)
    counts = np.bincount(group_of[removed], minlength=len(graph.groups))
    out = np.zeros_like(removed)
    for g in graph.groups:
        in_group = order[group_of[order] == g.index]
        if in_group.size == 0:
            continue
        kept = widths[g.index] - counts[g.index]
        target_kept = max(round_to, int(round(kept / round_to)) * round_to)
        take = min(max(widths[g.index] - target_kept, 0), in_group.size)
        out[in_group[:take]] = True
    return out


def _layerwise(graph: DependencyGraph, order: np.ndarray, group_of: np.ndarray, config: PruneConfig) -> np.ndarray:
    patterns = [(re.compile(p), r) for p, r in config.layer_ratios.items()]
    widths = _group_widths(graph)
    removed = np.zeros(graph.num_atoms, dtype=bool)
    for g in graph.groups:
        in_group = order[group_of[order] == g.index]
        if in_group.size == 0:
            continue
        ratio = config.ratio
        # a layer's ratio applies to the channels it produces, not to the group feeding it
        names = {graph.members[m].module for m in g.members if graph.members[m].kind in PRODUCER_KINDS}
        for pattern, r in patterns:
            if any(pattern.fullmatch(n) for n in names):
                ratio = r
        kept = widths[g.index] - int(round(ratio * widths[g.index]))
        if config.round_to > 1:
            kept = max(config.round_to, int(round(kept / config.round_to)) * config.round_to)
        take = min(max(widths[g.index] - kept, 0), in_group.size)
        removed[in_group[:take]] = True
    return removed


def _to_cost_target(graph: DependencyGraph, order: np.ndarray, group_of: np.ndarray, config: PruneConfig,
                    key: str, value: float) -> np.ndarray:
    which = 0 if key == "target_flops" else 1
    base = graph.cost()[which]
    budget = value * base

    def removal(prefix: int) -> np.ndarray:
        removed = np.zeros(graph.num_atoms, dtype=bool)
        removed[order[:prefix]] = True
        return _rounded(graph, order, group_of, removed, config.round_to)

    def cost(prefix: int) -> float:
        return graph.cost(graph.kept_counts(removal(prefix)))[which]

    if cost(0) <= budget:
        return removal(0)
    smallest = cost(order.size)
    if smallest > budget:
        reachable = smallest / base
        what = "FLOPs" if which == 0 else "parameters"
        raise UnreachableTargetError(
            f"{key}={value:g} is unreachable: the closest reachable is {reachable:.4f} of the original {what} "
            f"(every prunable layer down to {max(config.min_channels, config.round_to)} channel(s); "
            f"{sum(graph.unsupported.values())} channels are protected or unsupported)")
    lo, hi = 0, order.size  # cost(lo) > budget >= cost(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= budget:
            hi = mid
        else:
            lo = mid
    return removal(hi)
