"""Cost-aware removal order: importance lost per cost saved, with any per-layer cost function."""
import numpy as np
import pytest
import torch
from torch import nn

import compressor as C
import models
from compressor.pruning._api import graph_for


class Chain(nn.Module):
    """conv1 -> conv2 -> conv3 -> pool -> fc: three independent 8-channel groups."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(x.mean(dim=(2, 3)))


EXAMPLE = torch.randn(1, 3, 16, 16)


def _setup(round_to=1, min_channels=1):
    model = Chain().eval()
    config = C.PruneConfig(target_flops=1.0, round_to=round_to, min_channels=min_channels)
    graph = graph_for(model, EXAMPLE, config)
    names = [layer.module for layer in graph.layers]
    producer_group = {}
    for g in graph.groups:
        for m in g.members:
            if graph.members[m].kind == "conv_out":
                producer_group[graph.members[m].module] = g.index
    return model, config, graph, names, producer_group


def _weighted(graph, names, weights):
    """cost of layer i = weights[name] * out * in."""
    return lambda i, out, inp: weights[names[i]] * out * inp


def _modelled(graph, cost, removed):
    kept = graph.kept_counts(removed)
    total = 0.0
    for i, layer in enumerate(graph.layers):
        total += cost(i, *layer.kept_widths(kept))
    return total


def test_equal_importance_removes_where_the_cost_is_first():
    _, config, graph, names, group = _setup()
    # conv3 is 100x as expensive per channel pair: one of conv3's outputs saves 100*8 + 10*4 (fc), one of its
    # inputs (conv2's outputs) 100*8 + 8, one of conv1's outputs 27 + 8
    cost = _weighted(graph, names, {"conv1": 1.0, "conv2": 1.0, "conv3": 100.0, "fc": 10.0})
    path = C.pruning.cost_aware_path(graph, np.ones(graph.num_atoms), config, cost)
    first = path.steps[0]
    assert all(a in graph.groups[group["conv3"]].atoms for a in first)
    firsts = [next(g for g, idx in group.items() if step[0] in graph.groups[idx].atoms) for step in path.steps[:3]]
    assert "conv1" not in firsts  # conv1's channels only touch the cheap layers
    # the path's modelled cost is the cost function at every prefix's kept widths, and never increases
    for k in range(len(path.steps) + 1):
        assert path.costs[k] == pytest.approx(_modelled(graph, cost, path.removal(k)))
    assert np.all(np.diff(path.costs) < 0)


def test_importance_decides_between_equal_savings():
    _, config, graph, names, group = _setup()
    cost = _weighted(graph, names, {"conv1": 1.0, "conv2": 1.0, "conv3": 1.0, "fc": 0.0})
    scores = np.ones(graph.num_atoms)
    scores[graph.groups[group["conv2"]].atoms] = 0.01  # conv2's channels matter least
    path = C.pruning.cost_aware_path(graph, scores, config, cost)
    conv2_atoms = set(graph.groups[group["conv2"]].atoms.tolist())
    first_seven = [a for step in path.steps[:7] for a in step]
    assert set(first_seven) <= conv2_atoms  # down to its floor of 1 before anything else
    # within a group, the lowest-scored channel goes first
    scores2 = np.ones(graph.num_atoms)
    target = graph.groups[group["conv1"]].atoms[5]
    scores2[target] = 0.0
    path2 = C.pruning.cost_aware_path(graph, scores2, config, cost)
    conv1 = [a for step in path2.steps for a in step if a in graph.groups[group["conv1"]].atoms]
    assert conv1[0] == target


def test_round_to_keeps_aligned_widths_and_floors():
    _, config, graph, names, _ = _setup(round_to=4)
    cost = _weighted(graph, names, {"conv1": 1.0, "conv2": 2.0, "conv3": 3.0, "fc": 1.0})
    path = C.pruning.cost_aware_path(graph, np.random.default_rng(0).random(graph.num_atoms), config, cost)
    assert all(step.size == 4 for step in path.steps)
    for k in range(len(path.steps) + 1):
        kept = graph.kept_counts(path.removal(k))
        for g in graph.groups:
            width = len(g.atoms) - int(path.removal(k)[g.atoms].sum())
            assert width % 4 == 0 and width >= 4
    assert len(path.steps) == 3  # each 8-channel group down to 4
    assert kept.min() >= 4


def test_a_chunk_that_saves_nothing_is_never_taken():
    _, config, graph, names, group = _setup()
    # conv1's width changes conv1 and conv2, both free: its channels are kept however unimportant
    cost = _weighted(graph, names, {"conv1": 0.0, "conv2": 0.0, "conv3": 1.0, "fc": 1.0})
    scores = np.ones(graph.num_atoms)
    scores[graph.groups[group["conv1"]].atoms] = 0.0
    path = C.pruning.cost_aware_path(graph, scores, config, cost)
    removed = path.removal(len(path.steps))
    assert not removed[graph.groups[group["conv1"]].atoms].any()
    assert removed[graph.groups[group["conv3"]].atoms].sum() == 7


def test_prefix_for_and_applying_a_prefix_gives_the_modelled_macs():
    model = models.create_model("resnet20").eval()
    example = torch.randn(1, 3, 32, 32)
    config = C.PruneConfig(target_flops=1.0, round_to=4)
    plan = C.plan_pruning(model, example, config)
    graph = plan.graph
    macs = lambda i, out, inp: graph.layers[i].macs(out, inp)
    path = C.pruning.cost_aware_path(graph, plan.scores, config, macs)
    half = path.prefix_for(path.costs[0] / 2)
    assert path.costs[half] <= path.costs[0] / 2 < path.costs[half - 1]
    assert path.prefix_for(-1.0) == len(path.steps) and path.prefix_for(path.costs[0]) == 0
    pruned = plan.apply(path.removal(half)).model
    cost = C.count_cost(pruned, example)
    assert cost.macs == pytest.approx(path.costs[half] + graph.other_macs, rel=1e-6)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert pruned(example).shape == (1, 10)


def test_prune_model_is_plan_then_select():
    model = models.create_model("resnet20").eval()
    example = torch.randn(1, 3, 32, 32)
    config = C.PruneConfig(criterion="l1", target_flops=0.6)
    plan = C.plan_pruning(model, example, config)
    direct = C.pruning.prune_model(model, example, config)
    via_plan = plan.apply(C.pruning.select_removal(plan.graph, plan.scores, config))
    assert np.array_equal(direct.removed, via_plan.removed)
    for a, b in zip(direct.model.state_dict().values(), via_plan.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="needs calibration data"):
        C.plan_pruning(model, example, C.PruneConfig(criterion="taylor", target_flops=0.5))
