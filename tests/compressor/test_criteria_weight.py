"""fpgm, simc, bn_scale and nisp pick the channels they should on models where the answer is known."""
# These tests pin which channels a criterion removes, so they prune without channel alignment
# (round_to=1); the default alignment is tested in test_align.py.
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import compressor as C
import models
from compressor.criteria._weight import simc_layer_scores
from compressor.testing import Pruned, check_pruned, randomize_


class TwoConv(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.a = nn.Conv2d(3, width, 3, padding=1)
        self.b = nn.Conv2d(width, 6, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean(dim=(2, 3))


class ConvBN(nn.Module):
    def __init__(self, affine: bool = True):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4, affine=affine)
        self.b = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x)))).mean(dim=(2, 3))


class MLP(nn.Module):
    def __init__(self, bn: bool = False, affine: bool = True, act: nn.Module | None = None):
        super().__init__()
        self.fc1 = nn.Linear(5, 4)
        self.norm = nn.BatchNorm1d(4, affine=affine) if bn else nn.Identity()
        self.act = act or nn.ReLU(inplace=True)  # in place: the captured fc1 output must survive it
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc2(self.act(self.norm(self.fc1(x))))


def x_img() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model.eval()


def assert_kept(pruned: nn.Module, model: nn.Module, keep: list[int]) -> None:
    assert torch.equal(pruned.a.weight, model.a.weight[keep])
    assert torch.equal(pruned.b.weight, model.b.weight[:, keep])


def member_atoms(graph: C.DependencyGraph, module: str, kind: str) -> np.ndarray:
    m = next(i for i, member in enumerate(graph.members) if member.module == module and member.kind == kind)
    return graph.member_atoms(m)


# ---- fpgm ------------------------------------------------------------------------------------------


def test_fpgm_prunes_the_filter_at_the_geometric_median():
    model = seeded(TwoConv())
    with torch.no_grad():
        rows = torch.zeros(4, 27)
        rows[0, 0], rows[1, 5], rows[2, 11] = 10.0, 10.0, 10.0  # three far-apart filters ...
        rows[3] = rows[:3].mean(dim=0)  # ... and their centroid, the geometric median
        rows -= rows[0].clone()  # a shift keeps the distances; filter 0 is now what l1/l2 would prune
        model.a.weight.copy_(rows.view(4, 3, 3, 3))
    pruned = C.prune(model, x_img(), "fpgm", ratio=0.25, round_to=1).model
    assert_kept(pruned, model, [0, 1, 2])


def test_fpgm_prunes_one_of_a_duplicated_cluster():
    model = seeded(TwoConv(width=5), seed=1)
    with torch.no_grad():
        model.a.weight[1:3] = 5 * model.a.weight[0]  # filters 0, 1, 2 identical and the largest; 3, 4 distinct
        model.a.weight[0] *= 5
    pruned = C.prune(model, x_img(), "fpgm", ratio=0.2, round_to=1).model
    rows = list(pruned.a.weight)
    assert len(rows) == 4
    assert sum(torch.equal(r, model.a.weight[0]) for r in rows) == 2
    assert any(torch.equal(r, model.a.weight[3]) for r in rows) and any(torch.equal(r, model.a.weight[4]) for r in rows)


# ---- simc ------------------------------------------------------------------------------------------


def test_simc_layer_scores_rank_redundant_filters_below_representatives():
    w = torch.tensor([[1.0, 0, 0, 0], [3, 0, 0, 0],  # same direction: 0 is redundant to 1
                      [0, 2, 0, 0], [0, 2, 0.5, 0],  # cosine 0.97: 2 is redundant to 3 when tau <= 0.97
                      [0, 0, 0, 1], [0, 0, 0, 0]])  # a loner, and a zero filter (always redundant)
    s = simc_layer_scores(w, tau=0.9)
    assert np.isfinite(s).all()
    redundant, reps = [0, 2, 5], [1, 3, 4]
    assert s[redundant].max() < 1 < s[reps].min()
    assert s[0] < s[2] and s[5] == 0
    assert s[1] > s[3] > s[4]  # representatives by L1 norm
    s = simc_layer_scores(w, tau=1.0)
    assert s[[0, 5]].max() < 1 < s[[1, 2, 3, 4]].min()
    assert np.all(simc_layer_scores(torch.zeros(3, 4), tau=0.9) == 0)


@pytest.mark.parametrize("tau", [0.9, 1.0])
def test_simc_prunes_the_smaller_of_two_parallel_filters(tau):
    model = seeded(TwoConv(), seed=2)
    with torch.no_grad():
        model.a.weight[0] *= 2
        model.a.weight[2] = 3 * model.a.weight[0]
    l1 = model.a.weight.abs().sum(dim=(1, 2, 3))
    assert l1[0] > max(l1[1], l1[3]), "filter 0 must not be the one l1 would prune"
    config = C.PruneConfig(round_to=1, criterion="simc", ratio=0.25, criterion_options={"tau": tau})
    pruned = C.pruning.prune_model(model, x_img(), config).model
    assert_kept(pruned, model, [1, 2, 3])


@pytest.mark.parametrize("tau", [0, 1.5, -1, "0.5", True])
def test_simc_rejects_bad_tau(tau):
    with pytest.raises(ValueError, match=r"tau must be in \(0, 1\]"):
        C.PruneConfig(round_to=1, criterion="simc", criterion_options={"tau": tau}, ratio=0.5)


def test_simc_rejects_unknown_options():
    with pytest.raises(ValueError, match=r"unknown option.*'taux'.*allowed: \['tau'\]"):
        C.PruneConfig(round_to=1, criterion="simc", criterion_options={"taux": 0.5}, ratio=0.5)


# ---- bn_scale --------------------------------------------------------------------------------------


def test_bn_scale_prunes_the_smallest_gamma():
    model = seeded(ConvBN())
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.0, 0.01, -0.8, 1.2]))  # |gamma| counts: -0.8 is large
    result = C.pruning.prune_model(model, x_img(), C.PruneConfig(round_to=1, criterion="bn_scale", ratio=0.25))
    assert_kept(result.model, model, [0, 2, 3])
    assert torch.equal(result.model.bn.weight, model.bn.weight[[0, 2, 3]])
    scores = C.get_criterion("bn_scale")(model, result.graph)
    assert np.all(scores[member_atoms(result.graph, "b", "conv_out")] == 1.0)  # no BN there: neutral fill


@pytest.mark.parametrize("model", [TwoConv(), ConvBN(affine=False)], ids=["no_bn", "bn_without_affine"])
def test_bn_scale_needs_affine_batchnorm(model):
    with pytest.raises(ValueError, match=f"needs BatchNorm layers with affine weights; {type(model).__name__} has none"):
        C.prune(model, x_img(), "bn_scale", ratio=0.25, round_to=1).model


# ---- nisp ------------------------------------------------------------------------------------------


def test_nisp_prunes_a_channel_the_next_layer_ignores():
    model = seeded(TwoConv(), seed=3)
    with torch.no_grad():
        model.b.weight[:, 2] = 0
    graph = C.build_dependency_graph(model, x_img())
    ctx = C.CriterionContext(example_inputs=(x_img(),))
    assert C.get_criterion("nisp")(model, graph, ctx)[member_atoms(graph, "a", "conv_out")][2] == 0
    assert_kept(C.prune(model, x_img(), "nisp", ratio=0.25, round_to=1).model, model, [0, 1, 3])


@pytest.mark.parametrize("bn,affine,act", [(False, True, None), (True, True, None), (True, False, None),
                                           (False, True, nn.ReLU6())], ids=["plain", "bn", "bn_no_affine", "relu6"])
def test_nisp_equals_abs_weights_transposed_times_ones(bn, affine, act):
    model = seeded(MLP(bn=bn, affine=affine, act=act), seed=4)
    if act is not None:
        with torch.no_grad():
            model.fc1.weight.mul_(100)  # hidden activations far above ReLU6's clip: nisp must ignore it
    if bn:
        randomize_(model, seed=4)
        if affine:
            with torch.no_grad():
                model.norm.weight[1] *= -1  # a negative gamma scales importance by |gamma|
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 5)
    graph = C.build_dependency_graph(model, x)
    scores = C.get_criterion("nisp")(model, graph, C.CriterionContext(example_inputs=(x,)))
    got = scores[member_atoms(graph, "fc1", "linear_out")]
    expected = model.fc2.weight.detach().double().abs().sum(dim=0)  # |W2|^T 1
    if bn:
        norm = model.norm
        gamma = norm.weight.detach().double() if affine else torch.ones(4, dtype=torch.float64)
        expected *= (gamma / torch.sqrt(norm.running_var.double() + norm.eps)).abs()
    np.testing.assert_allclose(got / got.mean(), (expected / expected.mean()).numpy(), rtol=1e-9)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "nisp changed the model"
    assert not any(m.training for m in model.modules()), "nisp changed the model's mode"


def test_nisp_needs_example_inputs():
    model = TwoConv()
    graph = C.build_dependency_graph(model, x_img())
    with pytest.raises(ValueError, match="example inputs"):
        C.get_criterion("nisp")(model, graph, C.CriterionContext())


# ---- a real network: target met, pruned model equals the masked oracle ------------------------------


@pytest.mark.parametrize("criterion", ["fpgm", "simc", "bn_scale", "nisp"])
def test_resnet20_half_flops_matches_the_masked_oracle(criterion):
    torch.manual_seed(0)
    model = randomize_(models.create_model("resnet20", in_chans=1).eval(), seed=1)
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(7))
    state = copy.deepcopy(model.state_dict())
    result = C.pruning.prune_model(model, x, C.PruneConfig(round_to=1, criterion=criterion, target_flops=0.5))
    assert result.report.flops_ratio <= 0.5
    masked = copy.deepcopy(model)
    C.pruning.zero_channels_(masked, result.graph, result.removed)
    check_pruned(Pruned(model, result.model, masked, result.graph, result.removed), x)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
