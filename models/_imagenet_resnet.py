"""ImageNet bottleneck ResNet-50 with ThinResNet width scaling.

Architecture from He et al. 2016, "Deep Residual Learning for Image Recognition", Table 1, in the
"v1.5" form (stride on the 3x3 conv, as torchvision). Width scaling follows "ThinResNet: A New
Baseline for Structured Convolutional Networks Pruning" and its reference code:

* the stem has ``width`` channels and the stages have ``planes = width * (1, 2, 4, 8)``;
* a bottleneck's inner width is ``int(planes * width / 64)``, so it scales with ``width ** 2``;
* a bottleneck outputs ``4 * planes`` channels; shortcuts that change shape are 1x1 conv + BN.

At ``width=64`` this is exactly torchvision's ``resnet50`` (25.56 M params, 4.09 GMACs at
224x224), with the same parameter names so its state_dict loads strictly.

``last_stride=1`` keeps stage 4 at 1/16 resolution, the ReID convention (Luo et al. 2019,
"Bag of Tricks and A Strong Baseline for Deep Person Re-identification"; "Exploiting
prunability for person re-identification").

Activations are separate, not in-place modules so that forward hooks on a BN output (used by
activation-based pruning criteria) see pre-ReLU values and each ReLU fires once per forward.
"""

from __future__ import annotations

import torch
from torch import nn

from models._init import init_weights_
from models._registry import register_model

__all__ = ["Bottleneck", "BottleneckResNet", "resnet50"]

_RESNET50_BLOCKS: tuple[int, int, int, int] = (3, 4, 6, 3)
_REFERENCE_WIDTH = 64  # ResNet-50's stem width; ThinResNet widths are relative to it
_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand, each followed by BN, with a residual add.

    Args:
        in_channels: input channels.
        inner_channels: channels of the two inner convolutions.
        out_channels: output channels (``4 * planes``).
        stride: stride of the 3x3 convolution and of the projection shortcut.
    """

    def __init__(self, in_channels: int, inner_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner_channels, inner_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner_channels)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(inner_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class BottleneckResNet(nn.Module):
    """Bottleneck ResNet with ThinResNet width scaling.

    Args:
        blocks_per_stage: bottlenecks in each of the four stages, (3, 4, 6, 3) for ResNet-50.
        num_classes: classifier outputs; 0 replaces ``fc`` by ``nn.Identity`` (pooled features out).
        width: stem channels (64 for the standard network); see the module docstring.
        in_chans: input image channels.
        last_stride: stride of stage 4 (2 standard, 1 for ReID).
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, int, int, int] = _RESNET50_BLOCKS,
        num_classes: int = 1000,
        width: int = 64,
        in_chans: int = 3,
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if num_classes < 0 or in_chans < 1:
            raise ValueError(f"num_classes must be >= 0 and in_chans >= 1, got {num_classes}, {in_chans}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        if len(blocks_per_stage) != 4 or min(blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage must be four ints >= 1, got {blocks_per_stage}")
        self.width = width
        self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = width
        stages: list[nn.Sequential] = []
        for stage, (num_blocks, stride) in enumerate(zip(blocks_per_stage, (1, 2, 2, last_stride))):
            planes = width * 2**stage
            # ThinResNet reference code: inner width int(planes * w / 64), i.e. it scales with w**2
            inner = max(1, int(planes * width / _REFERENCE_WIDTH))
            out_channels = planes * _EXPANSION
            blocks = [Bottleneck(in_channels, inner, out_channels, stride)]
            blocks += [Bottleneck(out_channels, inner, out_channels) for _ in range(num_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(in_channels, num_classes) if num_classes > 0 else nn.Identity()
        init_weights_(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return stage 4's feature map, (N, 32*width, H/32, W/32) (H/16, W/16 if last_stride=1)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet50", input_size=(3, 224, 224))
def resnet50(num_classes: int = 1000, width: int = 64, in_chans: int = 3, last_stride: int = 2) -> BottleneckResNet:
    """ResNet-50 / ThinResNet-50 (ThinResNet paper); width 64 is the standard 25.56 M-param network."""
    return BottleneckResNet(
        _RESNET50_BLOCKS, num_classes=num_classes, width=width, in_chans=in_chans, last_stride=last_stride
    )
