"""Turn per-atom scores and a target into the set of atoms to remove.

Every group is aligned: its kept count is a multiple of its alignment (``round_to``, or with
``round_to="auto"`` the alignment its layers need on the deployment target, see
``compressor.pruning._align``), and every layer keeps at least ``max(min_channels, alignment)`` channels. Atoms are taken in
increasing score order; an atom whose removal would take any layer it touches below that
floor is skipped (that is the *feasible order*). Members belong to exactly one group, so the
feasible order of a group is the global feasible order restricted to it.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
from scipy.sparse import csr_matrix

from compressor.pruning._align import group_alignment
from compressor.pruning._config import PruneConfig
from compressor.graph import PRODUCER_KINDS, DependencyGraph
from compressor.common.errors import UnprunableModelError, UnreachableTargetError


class _Incidence:
    """atom x member channel counts, plus the per-member floors."""

    def __init__(self, graph: DependencyGraph, floor: int | np.ndarray):
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
        self.matrix.sum_duplicates()  # canonical rows: sorted member indices, one entry each
        self.sizes = np.array([m.size for m in graph.members], dtype=np.int64)
        self.floor = np.minimum(self.sizes, floor)

    def feasible(self, candidates: np.ndarray, group_of: np.ndarray) -> np.ndarray:
        """The candidates (in their order) whose removal keeps every member at or above its floor.

        Members belong to exactly one group, so each group is decided on its own. In the common
        group every atom touches the same members the same number of times: its feasible atoms
        are a prefix whose length one division gives. Other groups take the atom-by-atom loop.
        """
        keep = np.zeros(len(candidates), dtype=bool)
        groups = group_of[candidates]
        by_group = np.argsort(groups, kind="stable")  # stable: score order within each group
        cuts = np.flatnonzero(np.diff(groups[by_group])) + 1
        for chunk in np.split(by_group, cuts):
            if chunk.size:
                keep[chunk] = self._feasible_in_group(candidates[chunk])
        return candidates[keep]

    def _feasible_in_group(self, atoms: np.ndarray) -> np.ndarray:
        rows = self.matrix[atoms]
        lengths = np.diff(rows.indptr)
        n = int(lengths[0])
        if (lengths == n).all():
            members, counts = rows.indices.reshape(-1, n), rows.data.reshape(-1, n)
            if (members == members[0]).all() and (counts == counts[0]).all():
                out = np.zeros(len(atoms), dtype=bool)
                if n == 0:
                    out[:] = True
                else:
                    ms, c = members[0], counts[0]
                    out[:max(int(((self.sizes[ms] - self.floor[ms]) // c).min()), 0)] = True
                return out
        remaining = self.sizes.copy()
        indptr, indices, data = self.matrix.indptr, self.matrix.indices, self.matrix.data
        floor = self.floor
        out = np.zeros(len(atoms), dtype=bool)
        for i, a in enumerate(atoms.tolist()):
            ms = indices[indptr[a]:indptr[a + 1]]
            left = remaining[ms] - data[indptr[a]:indptr[a + 1]]
            if (left >= floor[ms]).all():
                remaining[ms] = left
                out[i] = True
        return out


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
    order, group_of, align = _feasible_order(graph, scores, config)
    key, value = config.target
    if key == "ratio":
        return _layerwise(graph, order, group_of, config, align)
    if key == "global_ratio":
        removed = np.zeros(graph.num_atoms, dtype=bool)
        count = int(round(value * removable.size))
        removed[order[:count]] = True
        return _rounded(graph, order, group_of, removed, align)
    return _to_cost_target(graph, order, group_of, config, key, value, align)


def member_floors(graph: DependencyGraph, config: PruneConfig, align: np.ndarray) -> np.ndarray:
    """The fewest channels each member keeps: ``max(min_channels, its group's alignment)``."""
    floors = np.full(len(graph.members), config.min_channels, dtype=np.int64)
    for g in graph.groups:
        floors[g.members] = np.maximum(floors[g.members], align[g.index])
    return floors


def _feasible_order(graph: DependencyGraph, scores: np.ndarray,
                    config: PruneConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The feasible removal order (by increasing score), the group of every atom and each group's alignment."""
    removable = graph.removable
    align = group_alignment(graph, config)
    inc = _Incidence(graph, member_floors(graph, config, align))
    group_of = np.full(graph.num_atoms, -1, dtype=np.int64)
    for g in graph.groups:
        group_of[g.atoms] = g.index
    order = inc.feasible(removable[np.argsort(scores[removable], kind="stable")], group_of)
    return order, group_of, align


def smallest_removal(graph: DependencyGraph, scores: np.ndarray, config: PruneConfig) -> np.ndarray:
    """Bool-per-atom mask of the most that ``config`` lets be removed (every layer at its floor)."""
    order, group_of, align = _feasible_order(graph, scores, config)
    removed = np.zeros(graph.num_atoms, dtype=bool)
    removed[order] = True
    return _rounded(graph, order, group_of, removed, align)


def _group_widths(graph: DependencyGraph) -> np.ndarray:
    return np.array([len(g.atoms) for g in graph.groups], dtype=np.int64)


def _rounded(graph: DependencyGraph, order: np.ndarray, group_of: np.ndarray, removed: np.ndarray,
             align: np.ndarray) -> np.ndarray:
    """Round every group's kept count to the nearest multiple of its alignment."""
    if (align == 1).all():
        return removed
    widths = _group_widths(graph)
    counts = np.bincount(group_of[removed], minlength=len(graph.groups))
    out = np.zeros_like(removed)
    for g in graph.groups:
        in_group = order[group_of[order] == g.index]
        if in_group.size == 0:
            continue
        kept = widths[g.index] - counts[g.index]
        step = int(align[g.index])
        target_kept = max(step, int(round(kept / step)) * step)
        take = min(max(widths[g.index] - target_kept, 0), in_group.size)
        out[in_group[:take]] = True
    return out


def _layerwise(graph: DependencyGraph, order: np.ndarray, group_of: np.ndarray, config: PruneConfig,
               align: np.ndarray) -> np.ndarray:
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
        step = int(align[g.index])
        if step > 1:
            kept = max(step, int(round(kept / step)) * step)
        take = min(max(widths[g.index] - kept, 0), in_group.size)
        removed[in_group[:take]] = True
    return removed


TARGET_TOLERANCE = 0.02  # a cost target lands within this fraction of the original cost, or a warning says why


def _to_cost_target(graph: DependencyGraph, order: np.ndarray, group_of: np.ndarray, config: PruneConfig,
                    key: str, value: float, align: np.ndarray) -> np.ndarray:
    which = 0 if key == "target_flops" else 1
    base = graph.cost()[which]
    budget = value * base

    def removal(prefix: int) -> np.ndarray:
        removed = np.zeros(graph.num_atoms, dtype=bool)
        removed[order[:prefix]] = True
        return _rounded(graph, order, group_of, removed, align)

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
            f"(every prunable layer down to {_floor_text(config, align)}; "
            f"{sum(graph.unsupported.values())} channels are protected or unsupported; {blocking_summary(graph)})")
    lo, hi = 0, order.size  # cost(lo) > budget >= cost(hi); rounding keeps cost monotone in the prefix
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= budget:
            hi = mid
        else:
            lo = mid
    below, above = cost(hi) / base, cost(lo) / base
    # aligned widths move in steps: meet the target when that lands within the tolerance, else
    # land on the reachable value nearest to it; without alignment the target is a hard budget
    aligned = bool((align > 1).any())
    if aligned and value - below > TARGET_TOLERANCE and above - value > TARGET_TOLERANCE:
        # one group's step jumps over the tolerance band (a wide step in a layer that costs much):
        # step the other groups further instead, least important step first
        refined = _steps_into_band(graph, order, group_of, removal(lo), align, which,
                                   (value - TARGET_TOLERANCE) * base, budget)
        if refined is not None:
            return refined
    meets = not aligned or value - below <= TARGET_TOLERANCE or value - below <= above - value
    chosen = hi if meets else lo
    reached = cost(chosen) / base
    if abs(reached - value) > TARGET_TOLERANCE:
        what = "FLOPs" if which == 0 else "parameters"
        warnings.warn(f"{key}={value:g} is not reachable exactly with channel alignment {_align_text(align)}: "
                      f"the nearest reachable values are {below:.3f} and {above:.3f} of the original {what}; "
                      f"landed on {reached:.3f} (give a smaller round_to, or round_to=1, for finer steps)",
                      TargetToleranceWarning, stacklevel=3)
    return removal(chosen)


def _steps_into_band(graph: DependencyGraph, order: np.ndarray, group_of: np.ndarray, removed: np.ndarray,
                     align: np.ndarray, which: int, low: float, budget: float, candidates: int = 32) -> np.ndarray | None:
    """From an aligned removal that costs more than ``budget``, remove whole alignment steps of one
    group at a time (each group's next atoms in the feasible order), the step whose atoms come
    first in the order first, as long as the cost stays at or above ``low``; the removal once it
    costs at most ``budget``, or None when no sequence of steps gets there."""
    position = np.full(graph.num_atoms, order.size, dtype=np.int64)
    position[order] = np.arange(order.size)
    queues = {g.index: order[group_of[order] == g.index] for g in graph.groups}
    taken = {g: int(removed[q].sum()) for g, q in queues.items()}
    removed = removed.copy()
    cost = graph.cost(graph.kept_counts(removed))[which]
    while cost > budget:
        steps = []
        for g, queue in queues.items():
            end = taken[g] + int(align[g])
            if end <= queue.size:
                steps.append((int(position[queue[end - 1]]), g, queue[taken[g]:end]))
        best = None
        for _, g, atoms in sorted(steps, key=lambda step: step[0])[:candidates]:
            removed[atoms] = True
            after = graph.cost(graph.kept_counts(removed))[which]
            removed[atoms] = False
            if after >= low and after < cost:
                best = (g, atoms, after)
                break
        if best is None:
            return None
        g, atoms, cost = best
        removed[atoms] = True
        taken[g] += atoms.size
    return removed


class TargetToleranceWarning(UserWarning):
    """A cost target landed further from the target than :data:`TARGET_TOLERANCE` (alignment steps)."""


def _align_text(align: np.ndarray) -> str:
    values = sorted({int(a) for a in align})
    return str(values[0]) if len(values) == 1 else f"{values[-1]} (per group: {', '.join(map(str, values))})"


def _floor_text(config: PruneConfig, align: np.ndarray) -> str:
    top = max(config.min_channels, int(align.max()) if align.size else 1)
    return f"{top} channel(s)" if len(set(align.tolist())) <= 1 else f"max(min_channels, its alignment), up to {top} channels"


# "<cause>: layer 'name' (Type)", "<cause> at node 'name' (op) in 'owner.module'": where a block reason says it happened
_LOCATION = re.compile(r"(?::| at) (?:layer|node) '([^']*)'(?: \(([^)]*)\))?(?: in '([^']*)')?")


def blocking_summary(graph: DependencyGraph, top: int = 3, places: int = 3) -> str:
    """One line naming the most frequent reasons channels are blocked, and where, e.g.
    ``blocked: 48 channels by unsupported op (batch_norm) at blocks.1.0.bn1, blocks.2.0.bn1 (+12 more); ...``."""
    causes: dict[str, list] = {}
    for reason, n in graph.unsupported.items():
        found = _LOCATION.search(reason)
        cause, place = reason, ""
        if found:
            cause = reason[:found.start()].rstrip(" :") + (f" ({found.group(2)})" if found.group(2) else "")
            place = found.group(3) or found.group(1)
        entry = causes.setdefault(cause, [0, []])
        entry[0] += n
        if place and place not in entry[1]:
            entry[1].append(place)
    if not causes:
        return "no channel is blocked"
    parts = []
    for cause, (n, where) in sorted(causes.items(), key=lambda kv: -kv[1][0])[:top]:
        at = f" at {', '.join(where[:places])}" + (f" (+{len(where) - places} more)" if len(where) > places else "") \
            if where else ""
        parts.append(f"{n} channels by {cause}{at}")
    more = f"; +{len(causes) - top} more reasons" if len(causes) > top else ""
    return "blocked: " + "; ".join(parts) + more
