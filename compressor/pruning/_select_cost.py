"""Cost-aware channel selection: remove channels where they save the most cost per importance lost.

The FLOPs and params targets of :mod:`._select` remove the least important channels until the
target holds, wherever they are. When the cost that matters is measured latency, a channel of a
layer that runs slowly per MAC (a memory-bound 1x1 conv at high resolution, a depthwise conv)
saves more time than one of a layer that runs at peak efficiency, at the same importance. This
module orders removals greedily by *importance lost per cost saved*, with the cost of each layer
given as a function of its kept output and input channels (a latency lookup table, NetAdapt and
HALP's idea). HALP solves the same trade-off as a knapsack; the greedy ratio order is its
standard approximation and gives a whole path of models at once, from which a budget picks a
prefix.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compressor.pruning._config import PruneConfig
from compressor.graph import DependencyGraph
from compressor.pruning._select import _feasible_order, _Incidence, member_floors
from compressor.common.errors import UnprunableModelError

# cost of layer ``index`` of ``graph.layers`` with ``out`` output and ``inp`` input channels kept
LayerCostFn = Callable[[int, int, int], float]


@dataclass
class RemovalPath:
    """A sequence of removal steps, each a chunk of one group's channels, in the greedy order.

    ``costs[k]`` is the modelled cost after the first ``k`` steps (``costs[0]``: nothing removed);
    it never increases along the path.
    """

    graph: DependencyGraph
    steps: list[np.ndarray]  # atoms removed by each step
    costs: np.ndarray

    def removal(self, prefix: int) -> np.ndarray:
        """Bool-per-atom mask of the atoms removed by the first ``prefix`` steps."""
        removed = np.zeros(self.graph.num_atoms, dtype=bool)
        for atoms in self.steps[:prefix]:
            removed[atoms] = True
        return removed

    def prefix_for(self, cost: float) -> int:
        """The shortest prefix whose modelled cost is within ``cost`` (the whole path if none is)."""
        within = np.flatnonzero(self.costs <= cost)
        return int(within[0]) if within.size else len(self.steps)


def cost_aware_path(graph: DependencyGraph, scores: np.ndarray, config: PruneConfig,
                    layer_cost: LayerCostFn) -> RemovalPath:
    """Order the removable channels by importance lost per cost saved, down to every floor.

    Each group gives up its channels in increasing score order (the same feasible order as
    :func:`select_removal`: no layer goes below ``max(min_channels, alignment)``), one chunk at a
    time: the group's alignment in channels, so that every width stays a multiple of it (the first chunk of
    a group whose width is not a multiple takes the remainder). The next step is always the chunk
    with the smallest ``sum of its scores / cost it saves``; a chunk that saves nothing is never
    taken. ``layer_cost(i, out, inp)`` is the cost of ``graph.layers[i]``.

    Raises:
        UnprunableModelError: no channel of the model can be removed.
    """
    removable = graph.removable
    if removable.size == 0:
        raise UnprunableModelError("no channel of this model can be removed")
    order, group_of, align = _feasible_order(graph, scores, config)
    queue_of = {g.index: order[group_of[order] == g.index] for g in graph.groups}
    width = {g.index: len(g.atoms) for g in graph.groups}
    taken = {g: 0 for g in queue_of}
    kept = np.array([m.size for m in graph.members], dtype=np.int64)
    matrix = _Incidence(graph, member_floors(graph, config, align)).matrix.tocsr()

    layers_of_member: dict[int, list[int]] = {}
    for i, layer in enumerate(graph.layers):
        for m in (layer.out_member, layer.in_member):
            if m is not None:
                layers_of_member.setdefault(m, []).append(i)
    layers_of_group = {g.index: sorted({i for m in g.members for i in layers_of_member.get(m, [])})
                       for g in graph.groups}
    groups_of_layer: dict[int, set[int]] = {}
    for g, layer_ids in layers_of_group.items():
        for i in layer_ids:
            groups_of_layer.setdefault(i, set()).add(g)

    def cost_of(i: int, kept_now: np.ndarray) -> float:
        return float(layer_cost(i, *graph.layers[i].kept_widths(kept_now)))

    current = {i: cost_of(i, kept) for i in range(len(graph.layers))}

    def next_chunk(g: int) -> np.ndarray | None:
        step = int(align[g])
        size = (width[g] - taken[g]) % step or step
        atoms = queue_of[g][taken[g]:taken[g] + size]
        return atoms if atoms.size == size else None

    def evaluate(g: int) -> tuple[float, np.ndarray, np.ndarray, dict[int, float]] | None:
        """(importance / saving, chunk, kept after, new layer costs) of group ``g``'s next chunk."""
        atoms = next_chunk(g)
        if atoms is None:
            return None
        after = kept - np.asarray(matrix[atoms].sum(axis=0)).ravel()
        new = {i: cost_of(i, after) for i in layers_of_group[g]}
        saving = sum(current[i] - c for i, c in new.items())
        if not saving > 0:
            return None
        importance = max(float(scores[atoms].sum()), 0.0)
        return importance / saving, atoms, after, new

    heap: list[tuple[float, int, int]] = []
    version = {g: 0 for g in queue_of}
    pending: dict[int, tuple] = {}

    def push(g: int) -> None:
        version[g] += 1
        found = evaluate(g)
        if found is None:
            pending.pop(g, None)
            return
        pending[g] = found
        heapq.heappush(heap, (found[0], g, version[g]))

    for g in queue_of:
        push(g)
    total = sum(current.values())
    steps: list[np.ndarray] = []
    costs = [total]
    while heap:
        _, g, v = heapq.heappop(heap)
        if v != version[g] or g not in pending:
            continue
        _, atoms, after, new = pending.pop(g)
        kept = after
        for i, c in new.items():
            total += c - current[i]
            current[i] = c
        taken[g] += atoms.size
        steps.append(atoms)
        costs.append(total)
        for h in {h for i in layers_of_group[g] for h in groups_of_layer[i]} | {g}:
            push(h)
    return RemovalPath(graph, steps, np.minimum.accumulate(np.array(costs)))
