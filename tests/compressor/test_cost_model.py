"""Cost model: hand-computed counts, the published ResNet-50 figure, and agreement between the
graph's fast cost model and torch's FLOP counter on pruned models."""
# These tests pin which channels a criterion removes, so they prune without channel alignment
# (round_to=1); the default alignment is tested in test_align.py.
import pytest
import torch
from torch import nn

import compressor as C
from models import create_model


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1))


def test_hand_computed_costs():
    cost = C.count_cost(Tiny(), torch.randn(4, 3, 10, 10))
    assert cost.macs == 8 * 3 * 9 * 100 + 8 * 5  # conv + linear, per sample
    assert cost.flops == 2 * cost.macs
    assert cost.params == (8 * 3 * 9 + 8) + (8 * 5 + 5)
    assert cost.fm_elements == 8 * 100 + 5
    assert cost.mps_bytes == cost.params * 4
    assert cost.trm_bytes(16) == cost.params * 4 + 805 * 4 * 16  # FALF ConvNets eq. 10 (TRM)
    rows = {r.name: r for r in cost.layers}
    assert rows["conv"].macs == 21600 and rows["fc"].macs == 40


def test_resnet50_matches_published_figure():
    cost = C.count_cost(create_model("torchvision:resnet50"), torch.randn(1, 3, 224, 224))
    assert cost.params == 25_557_032
    assert cost.macs == pytest.approx(4.09e9, rel=2e-3)


@pytest.mark.parametrize("name,target", [("resnet56", 0.5), ("mobilenetv2", 0.6), ("vgg16_bn_cifar", 0.4)])
def test_graph_cost_model_agrees_with_flop_counter(name, target):
    model = create_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    result = C.pruning.prune_model(model, x, C.PruneConfig(round_to=1, criterion="l2", target_flops=target))
    measured = C.count_cost(result.model, x)
    assert result.report.macs_before == pytest.approx(C.count_cost(model, x).macs, rel=1e-9)
    assert result.report.macs_after == pytest.approx(measured.macs, rel=1e-9)
    assert result.report.params_after == measured.params
    assert measured.macs <= target * result.report.macs_before * (1 + 1e-9)
    assert measured.macs >= (target - 0.05) * result.report.macs_before
