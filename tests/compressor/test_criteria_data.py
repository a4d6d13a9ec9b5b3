"""Data-based criteria (taylor, entropy, aux_loss): the channels they should pick, their side effects,
their option checks, and masked-oracle parity on resnet20 with the digits data."""
# These tests pin which channels a criterion removes, so they prune without channel alignment
# (round_to=1); the default alignment is tested in test_align.py.
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import compressor as C
from compressor.testing import Pruned, check_pruned, randomize_
from models import create_model

DATA_CRITERIA = ["taylor", "entropy", "aux_loss"]


class ConvNet(nn.Module):
    """conv a (1->4) [-> BN] -> act -> conv b (4->6) -> mean(HW) -> Linear (6->3); act is ReLU by default."""

    def __init__(self, bn: bool = False, act: nn.Module | None = None):
        super().__init__()
        self.act = act or nn.ReLU()
        self.a = nn.Conv2d(1, 4, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.act(self.bn(self.a(x)))
        return self.fc(self.b(h).mean(dim=(2, 3)))


def tiny_data(n: int = 64, seed: int = 0) -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 1, 8, 8, generator=gen),
                                          torch.randint(0, 3, (n,), generator=gen))


def dead_channel_model(bn: bool, dead: int) -> ConvNet:
    torch.manual_seed(0)
    model = ConvNet(bn=bn).eval()
    with torch.no_grad():
        if bn:  # dead after the BatchNorm: its output, the hooked one, is exactly 0
            model.bn.running_mean.normal_(0, 0.2)
            model.bn.weight[dead] = 0.0
            model.bn.bias[dead] = 0.0
        else:
            model.a.weight[dead].zero_()
            model.a.bias[dead] = 0.0
    return model


@pytest.mark.parametrize("bn", [False, True], ids=["conv", "conv-bn"])
@pytest.mark.parametrize("criterion", ["taylor", "entropy"])
def test_dead_channel_is_pruned_first(criterion, bn):
    """A channel that is constantly 0 has Taylor score 0 and entropy 0: it goes first."""
    dead = 1 if bn else 2
    model = dead_channel_model(bn, dead)
    x, data = torch.randn(1, 1, 8, 8), tiny_data()
    graph = C.build_dependency_graph(model, x)
    ctx = C.CriterionContext(data=data, batch_size=16, num_batches=4)
    scores = C.get_criterion(criterion)(model, graph, ctx)
    layer_a = graph.member_atoms(next(m for m, mb in enumerate(graph.members) if mb.module == "a"
                                      and mb.kind == "conv_out"))
    assert scores[layer_a[dead]] == 0.0
    assert all(scores[layer_a[j]] > 0 for j in range(4) if j != dead)

    result = C.pruning.prune_model(model, x, C.PruneConfig(round_to=1, criterion=criterion, ratio=0.25, calib_batches=4,
                                                   calib_batch_size=16), data=data)
    keep = [j for j in range(4) if j != dead]
    assert result.model.a.out_channels == 3
    assert torch.equal(result.model.a.weight, model.a.weight[keep])


def test_taylor_touches_no_grad_mode_or_bn_statistics():
    model = dead_channel_model(bn=True, dead=1).train()
    model.b.eval()  # a per-module mode that must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    graph = C.build_dependency_graph(model, torch.randn(1, 1, 8, 8))
    C.get_criterion("taylor")(model, graph, C.CriterionContext(data=tiny_data(), batch_size=16, num_batches=2))
    assert all(p.grad is None for p in model.parameters())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # eval mode: BN stats fixed


@pytest.mark.parametrize("criterion", ["taylor", "entropy"])
def test_inplace_activation_after_the_hooked_output_changes_nothing(criterion):
    """The hooked BN output is followed by an in-place activation: scores must still be those of H itself.
    (Hardtanh, not ReLU: for ReLU, H * dL/dH equals relu(H) * dL/drelu(H), so a bug would not show.)"""
    model = dead_channel_model(bn=True, dead=1)
    model.act = nn.Hardtanh(-0.5, 0.5)
    inplace = copy.deepcopy(model)
    inplace.act = nn.Hardtanh(-0.5, 0.5, inplace=True)
    graph = C.build_dependency_graph(model, torch.randn(1, 1, 8, 8))
    ctx = C.CriterionContext(data=tiny_data(), batch_size=16, num_batches=2)
    crit = C.get_criterion(criterion)
    np.testing.assert_allclose(crit(inplace, graph, ctx), crit(model, graph, ctx), rtol=1e-6)


def test_taylor_matches_a_hand_computation():
    """One batch, no hooks: |mean_HW(H * dL/dH)| averaged over the batch, L2-normalised per layer."""
    model = dead_channel_model(bn=False, dead=2)
    data = tiny_data(16)
    graph = C.build_dependency_graph(model, torch.randn(1, 1, 8, 8))
    scores = C.get_criterion("taylor")(model, graph, C.CriterionContext(data=data, batch_size=16, num_batches=1))
    x, y = data.tensors
    ha = model.a(x)
    hb = model.b(torch.relu(ha))
    loss = nn.functional.cross_entropy(model.fc(hb.mean(dim=(2, 3))), y)
    ga, gb = torch.autograd.grad(loss, [ha, hb])
    for name, h, g in (("a", ha, ga), ("b", hb, gb)):
        want = (h * g).mean(dim=(2, 3)).abs().mean(dim=0).detach().double().numpy()
        m = next(i for i, mb in enumerate(graph.members) if mb.module == name and mb.kind == "conv_out")
        np.testing.assert_allclose(scores[graph.member_atoms(m)], want / np.linalg.norm(want), rtol=1e-5, atol=1e-12)


def test_entropy_of_known_histograms():
    from compressor.criteria._data import channel_entropy

    values = np.stack([np.arange(10.0), np.full(10, 3.0), np.r_[np.zeros(5), np.ones(5)]], axis=1)
    np.testing.assert_allclose(channel_entropy(values, 10), [np.log(10), 0.0, np.log(2)])
    np.testing.assert_allclose(channel_entropy(values, 2), [np.log(2), 0.0, np.log(2)])


@pytest.mark.parametrize("bins", [1, 2.5, True])
def test_entropy_rejects_bad_bins(bins):
    with pytest.raises(ValueError, match="bins"):
        C.PruneConfig(round_to=1, criterion="entropy", criterion_options={"bins": bins}, ratio=0.5)


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_need_data(criterion):
    with pytest.raises(ValueError, match="needs calibration data"):
        C.pruning.prune_model(ConvNet(), torch.randn(1, 1, 8, 8), C.PruneConfig(round_to=1, criterion=criterion, ratio=0.5))


AUX = {"epochs": 1, "lam": 1.0, "lr": 1e-3, "batch_size": 32}  # the fatuous loss dominates the task loss


def tiny_filter_model() -> ConvNet:
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():
        model.a.weight[1].mul_(1e-3)
    return model


def test_aux_loss_prunes_the_filter_it_moves_most_and_leaves_the_model_alone():
    """Every weight is pulled towards ±1 by about the same step, so the filter with the smallest
    L1 norm has by far the largest relative change (eq. 3 of "FALF ConvNets: Fatuous auxiliary loss
    based filter-pruning for efficient deep CNNs"): it is pruned first."""
    model, data, x = tiny_filter_model(), tiny_data(), torch.randn(1, 1, 8, 8)
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    result = C.pruning.prune_model(model, x, C.PruneConfig(round_to=1, criterion="aux_loss", ratio=0.25, criterion_options=AUX), data=data)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert torch.equal(torch.get_rng_state(), rng)  # train() seeds globally; the criterion restores it
    assert result.model.a.out_channels == 3
    assert torch.equal(result.model.a.weight, model.a.weight[[0, 2, 3]])  # cut from the original weights


def test_aux_loss_scores_are_minus_the_normalised_ratio():
    """The same training done by hand gives the same scores: -mean-normalised ||m_j - f_j||_1 / ||f_j||_1."""
    model, data = tiny_filter_model(), tiny_data()
    graph = C.build_dependency_graph(model, torch.randn(1, 1, 8, 8))
    scores = C.get_criterion("aux_loss")(model, graph, C.CriterionContext(data=data, seed=3), **AUX)

    trained = copy.deepcopy(model)
    convs = [trained.a, trained.b, trained.fc]

    def fatuous(net, output, inputs):  # FALF ConvNets eq. 1-2: |w - 1| for w >= 0, |w + 1| for w < 0
        return AUX["lam"] * sum(torch.where(c.weight >= 0, (c.weight - 1).abs(), (c.weight + 1).abs()).sum()
                                for c in convs)

    C.train(trained, data, C.TrainConfig(epochs=1, batch_size=32, lr=1e-3, schedule="constant", weight_decay=0.0,
                                         seed=3), callbacks=C.TrainCallbacks(extra_loss=fatuous), progress=False)
    ratios = {}
    for m, mb in enumerate(graph.members):
        if mb.kind in ("conv_out", "linear_out"):
            f = getattr(model, mb.module).weight.detach().flatten(1).double()
            g = getattr(trained, mb.module).weight.detach().flatten(1).double()
            ratios[m] = ((g - f).abs().sum(1) / f.abs().sum(1)).numpy()
    np.testing.assert_allclose(scores, -C.criteria.aggregate_member_scores(graph, ratios, normalize="mean"), rtol=1e-5)
    m_a = next(m for m, mb in enumerate(graph.members) if mb.module == "a" and mb.kind == "conv_out")
    assert np.argmin(scores[graph.member_atoms(m_a)]) == 1
    assert ratios[m_a][1] > 100 * np.delete(ratios[m_a], 1).max()


def test_aux_loss_rejects_bad_options():
    for options in ({"epochs": 0}, {"lam": 0.0}, {"lr": -1.0}, {"batch_size": 1.5}):
        with pytest.raises(ValueError, match=next(iter(options))):
            C.PruneConfig(round_to=1, criterion="aux_loss", criterion_options=options, ratio=0.5)


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_resnet20_on_digits_matches_the_masked_oracle(criterion):
    torch.manual_seed(0)
    model = randomize_(create_model("resnet20", in_chans=1).eval(), seed=1)
    data = C.digits_dataset("train", channels=1)
    if criterion == "aux_loss":  # two training steps are enough to rank; keep the test fast
        data = torch.utils.data.Subset(data, range(128))
    x = data[0][0].unsqueeze(0).repeat(2, 1, 1, 1) + 0.1 * torch.randn(2, 1, 32, 32)
    options = {"epochs": 1, "batch_size": 64} if criterion == "aux_loss" else {}
    config = C.PruneConfig(round_to=1, criterion=criterion, target_flops=0.5, calib_batches=2, calib_batch_size=16,
                           criterion_options=options)
    result = C.pruning.prune_model(model, x, config, data=data)
    assert result.report.flops_ratio <= 0.5
    masked = copy.deepcopy(model)
    C.pruning.zero_channels_(masked, result.graph, result.removed)
    check_pruned(Pruned(model, result.model, masked, result.graph, result.removed), x)
