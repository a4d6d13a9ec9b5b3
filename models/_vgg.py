"""VGG-16 with BatchNorm for CIFAR (32x32 inputs).

Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
configuration D, with BN after every convolution, in the CIFAR form used by Li et al. 2017,
"Pruning Filters for Efficient ConvNets" (the L1-norm baseline surveyed in "Exploiting
prunability for person re-identification"): five max-pools take 32x32 down to 1x1, and the
classifier is Linear(512, 512) -> ReLU -> Linear(512, num_classes).

``width_mult`` scales every convolution and the hidden linear layer uniformly (a ThinResNet-style
uniform baseline, after "ThinResNet: A New Baseline for Structured Convolutional Networks
Pruning").
"""

from __future__ import annotations

import torch
from torch import nn

from models._init import check_head_args, init_weights_
from models._registry import register_model

__all__ = ["VGG", "vgg16_bn_cifar"]

# Configuration D: output channels of each 3x3 conv, "M" = 2x2 max-pool.
_VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


class VGG(nn.Module):
    """Plain conv-BN-ReLU stack with max-pools and a two-layer MLP classifier.

    Args:
        config: conv output channels, with ``"M"`` for a 2x2 max-pool.
        num_classes: classifier outputs.
        in_chans: input image channels.
        width_mult: multiplier on every conv's channels and on the hidden linear layer.
        hidden: hidden linear width before ``width_mult`` (512 for the CIFAR variant).
    """

    def __init__(
        self,
        config: tuple[int | str, ...] = _VGG16_CONFIG,
        num_classes: int = 10,
        in_chans: int = 3,
        width_mult: float = 1.0,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        check_head_args(num_classes, in_chans, width_mult)
        layers: list[nn.Module] = []
        in_channels = in_chans
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
                continue
            channels = _scaled(int(item), width_mult)
            layers += [
                nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
            in_channels = channels
        self.features = nn.Sequential(*layers)
        hidden_channels = _scaled(hidden, width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(in_channels, hidden_channels),
            nn.ReLU(),
            nn.Linear(hidden_channels, num_classes),
        )
        init_weights_(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 32x32 input -> 1x1 after five pools; flatten reads the channel count from the tensor.
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("vgg16_bn_cifar", input_size=(3, 32, 32))
def vgg16_bn_cifar(num_classes: int = 10, in_chans: int = 3, width_mult: float = 1.0) -> VGG:
    """VGG-16-BN for CIFAR (Li et al. 2017 variant), ~15.0 M params and ~0.31 GMACs at 32x32."""
    return VGG(_VGG16_CONFIG, num_classes=num_classes, in_chans=in_chans, width_mult=width_mult)
