"""Criteria: the registry's errors, and l1/l2/random picking the channels they should."""
# These tests pin which channels a criterion removes, so they prune without channel alignment
# (round_to=1); the default alignment is tested in test_align.py.
import numpy as np
import pytest
import torch
from torch import nn

import compressor as C


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean(dim=(2, 3))


def test_registry_errors():
    with pytest.raises(ValueError, match="already registered"):
        C.register_criterion("l2")(lambda model, graph, **kw: None)
    with pytest.raises(ValueError, match="known criteria: .*l1.*l2.*random"):
        C.get_criterion("fpgm-typo")
    with pytest.raises(ValueError, match="unknown criterion"):
        C.PruneConfig(round_to=1, criterion="nope", ratio=0.5)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_weak_filter_is_pruned_first(criterion):
    model = TwoConv().eval()
    with torch.no_grad():
        model.a.weight[2].zero_() if criterion == "l1" else model.a.weight[1].mul_(1e-3)
    weak = 2 if criterion == "l1" else 1
    pruned = C.prune(model, torch.randn(1, 3, 8, 8), criterion, ratio=0.25, round_to=1).model
    keep = [i for i in range(4) if i != weak]
    assert pruned.a.out_channels == 3 and pruned.b.in_channels == 3
    assert torch.equal(pruned.a.weight, model.a.weight[keep])
    assert torch.equal(pruned.b.weight, model.b.weight[:, keep])
    assert pruned.b.out_channels == 6  # model output protected


def test_random_is_seeded():
    model = TwoConv()
    graph = C.build_dependency_graph(model, torch.randn(1, 3, 8, 8))
    crit = C.get_criterion("random")
    assert np.array_equal(crit(model, graph, seed=1), crit(model, graph, seed=1))
    assert not np.array_equal(crit(model, graph, seed=1), crit(model, graph, seed=2))


def test_scores_are_normalised_per_layer_for_global_ranking():
    """Scaling one layer's weights by 1000 must not change the global ranking ("Exploiting
    prunability for person re-identification", §3.3)."""
    model = TwoConv()
    x = torch.randn(1, 3, 8, 8)
    graph = C.build_dependency_graph(model, x)
    before = C.get_criterion("l2")(model, graph)
    with torch.no_grad():
        model.a.weight.mul_(1000)
        model.a.bias.mul_(1000)
    after = C.get_criterion("l2")(model, graph)
    np.testing.assert_allclose(before, after, rtol=1e-5)
