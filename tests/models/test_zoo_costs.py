"""Parameter and MAC counts against published figures and the tables of "ThinResNet: A New Baseline
for Structured Convolutional Networks Pruning".

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode``, which reports FLOPs = 2 x MACs
for convolutions and matrix products (BN, ReLU and pooling are not counted, as in the papers).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import models
from compressor.testing import count_flops, count_params


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass on a single (C, H, W) input."""
    return count_flops(model, torch.zeros(1, *input_size)) // 2


def macs_of(name: str, **kwargs: Any) -> int:
    return count_macs(models.create_model(name, **kwargs), models.default_input_size(name))


@pytest.fixture(scope="module")
def resnet50_macs() -> int:
    return macs_of("resnet50")


@pytest.fixture(scope="module")
def resnet56_macs() -> int:
    return macs_of("resnet56")


def test_resnet50_matches_published_size(resnet50_macs: int) -> None:
    # He et al. 2016 / torchvision: 25.56 M parameters, 4.09 GMACs at 224x224.
    assert count_params(models.create_model("resnet50")) == pytest.approx(25.56e6, rel=0.005)
    assert resnet50_macs == pytest.approx(4.09e9, rel=0.005)


def test_resnet50_equals_torchvision(resnet50_macs: int) -> None:
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet50(weights=None).eval()
    ours = models.create_model("resnet50").eval()
    assert count_params(ours) == count_params(reference)
    assert resnet50_macs == count_macs(reference, (3, 224, 224))
    # Same parameter names and shapes: torchvision's weights load strictly and give the same output.
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


def test_mobilenetv2_imagenet_layout_equals_torchvision() -> None:
    ours = models.create_model("mobilenetv2", cifar_stem=False, num_classes=1000).eval()
    # Sandler et al. 2018 / torchvision: 3.50 M parameters, 0.30 GMACs at 224x224.
    assert count_params(ours) == pytest.approx(3.50e6, rel=0.005)
    assert count_macs(ours, (3, 224, 224)) == pytest.approx(0.30e9, rel=0.01)
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.mobilenet_v2(weights=None).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


# ThinResNet paper, Table 1: remaining MACs (%) of ThinResNet-50 at width w vs w=64.
THINRESNET50_REMAINING_MACS_PCT = {60: 80.7, 56: 64.6, 52: 50.8, 48: 39.6, 44: 30.1, 40: 22.7}


@pytest.mark.parametrize(("width", "expected_pct"), sorted(THINRESNET50_REMAINING_MACS_PCT.items()))
def test_thinresnet50_remaining_macs(resnet50_macs: int, width: int, expected_pct: float) -> None:
    remaining_pct = 100.0 * macs_of("resnet50", width=width) / resnet50_macs
    assert remaining_pct == pytest.approx(expected_pct, abs=1.0)


def test_thinresnet50_inner_width_scales_with_width_squared() -> None:
    model = models.create_model("resnet50", width=32)
    # planes = 32 * (1, 2, 4, 8); inner = int(planes * 32 / 64); output = 4 * planes.
    assert [stage[0].conv2.out_channels for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [
        16, 32, 64, 128,
    ]  # fmt: skip
    assert [stage[-1].conv3.out_channels for stage in (model.layer1, model.layer2, model.layer3, model.layer4)] == [
        128, 256, 512, 1024,
    ]  # fmt: skip
    assert model.conv1.out_channels == 32


@pytest.mark.parametrize("width", [4, 8, 12, 15])
def test_thinresnet56_remaining_macs_about_width_ratio_squared(resnet56_macs: int, width: int) -> None:
    # Every conv but the stem has its input and output channels proportional to w, so remaining MACs
    # are about (w/16)^2 (the stem and fc scale with w only).
    ratio = macs_of("resnet56", width=width) / resnet56_macs
    assert ratio == pytest.approx((width / 16) ** 2, rel=0.03)


def test_resnet20_vs_resnet56_macs_match_thinresnet_table(resnet56_macs: int) -> None:
    # "ThinResNet: A New Baseline for Structured Convolutional Networks Pruning", Table 1:
    # ThinResNet-20 at width 16 keeps 32.38% of ResNet-56's operations.
    assert 100.0 * macs_of("resnet20") / resnet56_macs == pytest.approx(32.38, abs=0.5)


def test_cifar_resnet_parameter_counts() -> None:
    # He et al. 2016: 0.27 M / 0.85 M / 1.7 M with zero-padding shortcuts; the projection
    # shortcuts of the ThinResNet paper add < 1%.
    resnet56 = count_params(models.create_model("resnet56"))
    assert 0.85e6 <= resnet56 <= 0.87e6
    assert resnet56 < 0.853e6 * 1.01
    assert count_params(models.create_model("resnet20")) == pytest.approx(0.27e6, rel=0.02)
    assert count_params(models.create_model("resnet110")) == pytest.approx(1.73e6, rel=0.01)


def test_vgg16_cifar_matches_li_et_al() -> None:
    # Li et al. 2017, Table 1: VGG-16 on CIFAR-10 has 1.5e7 parameters and 3.13e8 FLOPs (= MACs).
    model = models.create_model("vgg16_bn_cifar")
    assert count_params(model) == pytest.approx(1.5e7, rel=0.01)
    assert count_macs(model, (3, 32, 32)) == pytest.approx(3.13e8, rel=0.01)


def test_reid_width_scales_feature_dimension() -> None:
    full = models.create_model("reid_resnet50")
    half = models.create_model("reid_resnet50", width=32)
    assert full.classifier.in_features == 2048 and half.classifier.in_features == 1024
    # Backbone = ResNet-50 without fc (25.56 M - 2.05 M), plus neck (2 x 2048) and classifier.
    assert count_params(full) == 25_557_032 - (2048 * 1000 + 1000) + 2 * 2048 + 2048 * 751
