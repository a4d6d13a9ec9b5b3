"""CIFAR ResNets (ResNet-20/56/110) with projection shortcuts and a width knob.

Architecture from He et al. 2016, "Deep Residual Learning for Image Recognition", Sec. 4.2:
a 3x3 stem to ``w`` channels, then three stages of ``n = (depth - 2) / 6`` BasicBlocks with
widths ``w, 2w, 4w`` and strides 1, 2, 2, global average pooling and a linear classifier.

Shortcuts that change shape are 1x1 convolution + BN ("option B"), as advocated by "ThinResNet: A
New Baseline for Structured Convolutional Networks Pruning" (section "Choice of the ResNet
Variant"): the zero-padding variant ties channels across layers and hampers non-uniform
structured pruning, while the projection variant costs < 1% parameters. ``width`` is the
ThinResNet knob (channels of the initial embedding, 16 in the paper); the remaining MACs at width
``w`` are about ``(w / 16) ** 2`` of width 16, since every conv but the stem has both its input
and its output channels proportional to ``w``.
"""

from __future__ import annotations

import torch
from torch import nn

from models._init import init_weights_
from models._registry import register_model

__all__ = ["CifarBasicBlock", "CifarResNet", "resnet20", "resnet56", "resnet110"]


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection (1x1 conv + BN) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs.

    Args:
        depth: total depth, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs.
        width: channels of the stem and first stage; stages use ``width * (1, 2, 4)``.
        in_chans: input image channels.
    """

    def __init__(self, depth: int, num_classes: int = 10, width: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes}, {in_chans}")
        blocks_per_stage = (depth - 2) // 6
        self.depth = depth
        self.width = width
        self.conv1 = nn.Conv2d(in_chans, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        in_channels = width
        stages: list[nn.Sequential] = []
        for multiplier, stride in ((1, 1), (2, 2), (4, 2)):
            channels = width * multiplier
            blocks = [CifarBasicBlock(in_channels, channels, stride)]
            blocks += [CifarBasicBlock(channels, channels) for _ in range(blocks_per_stage - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = channels
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last stage's feature map, (N, 4*width, H/4, W/4)."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet20", input_size=(3, 32, 32))
def resnet20(num_classes: int = 10, width: int = 16, in_chans: int = 3) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage, ~0.27 M params at width 16)."""
    return CifarResNet(20, num_classes=num_classes, width=width, in_chans=in_chans)


@register_model("resnet56", input_size=(3, 32, 32))
def resnet56(num_classes: int = 10, width: int = 16, in_chans: int = 3) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage, ~0.86 M params at width 16), the ThinResNet paper's reference."""
    return CifarResNet(56, num_classes=num_classes, width=width, in_chans=in_chans)


@register_model("resnet110", input_size=(3, 32, 32))
def resnet110(num_classes: int = 10, width: int = 16, in_chans: int = 3) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage, ~1.7 M params at width 16)."""
    return CifarResNet(110, num_classes=num_classes, width=width, in_chans=in_chans)
