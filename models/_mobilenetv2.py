"""MobileNetV2 with a CIFAR stem option.

Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Table 2: a 3x3
stem, seven stages of inverted residuals (1x1 expand -> 3x3 depthwise -> 1x1 linear project,
ReLU6, residual add when stride is 1 and channels match), a 1x1 conv to 1280 channels, global
pooling and a linear classifier. Channel counts are rounded to multiples of 8, as in the paper's
reference implementation.

``cifar_stem=True`` sets the stride of the stem and of the first stride-2 stage to 1, so a
32x32 input ends at 4x4 instead of 1x1 (the usual CIFAR adaptation). With ``cifar_stem=False``,
``num_classes=1000`` and ``width_mult=1.0`` the network is torchvision's ``mobilenet_v2``
(3.50 M params, ~0.30 GMACs at 224x224), with the same parameter names.
"""

from __future__ import annotations

import torch
from torch import nn

from models._init import check_head_args, init_weights_
from models._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobilenetv2"]

# Table 2 of Sandler et al.: (expansion t, output channels c, repeats n, first stride s).
_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280
_ROUND_TO = 8


def _make_divisible(value: float, divisor: int = _ROUND_TO) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride,
            padding=(kernel_size - 1) // 2, groups=groups, bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )  # fmt: skip


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3, strided) -> linear project (1x1), with a residual add.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden channels = ``in_channels * expand_ratio``; 1 skips the expansion conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        # Decided at build time, so forward has no data-dependent control flow (fx-traceable).
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 backbone and classifier.

    Args:
        num_classes: classifier outputs.
        width_mult: multiplier on every stage's channels (the last conv is never narrowed below 1280).
        in_chans: input image channels.
        cifar_stem: use stride 1 in the stem and in the first stride-2 stage (for 32x32 inputs).
        dropout: dropout probability before the classifier (0.2 in the paper).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width_mult: float = 1.0,
        in_chans: int = 3,
        cifar_stem: bool = True,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_head_args(num_classes, in_chans, width_mult)
        stem_channels = _make_divisible(_STEM_CHANNELS * width_mult)
        self.last_channels = _make_divisible(_LAST_CHANNELS * max(1.0, width_mult))
        features: list[nn.Module] = [_conv_bn_relu6(in_chans, stem_channels, 3, stride=1 if cifar_stem else 2)]
        in_channels = stem_channels
        first_downsample_done = False
        for expand_ratio, channels, repeats, stride in _STAGES:
            if stride == 2 and not first_downsample_done:
                first_downsample_done = True
                stride = 1 if cifar_stem else 2
            out_channels = _make_divisible(channels * width_mult)
            for index in range(repeats):
                features.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expand_ratio))
                in_channels = out_channels
        features.append(_conv_bn_relu6(in_channels, self.last_channels, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channels, num_classes))
        init_weights_(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register_model("mobilenetv2", input_size=(3, 32, 32))
def mobilenetv2(
    num_classes: int = 10, width_mult: float = 1.0, in_chans: int = 3, cifar_stem: bool = True
) -> MobileNetV2:
    """MobileNetV2; default is the CIFAR layout (32x32 inputs), ``cifar_stem=False`` the ImageNet one."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, in_chans=in_chans, cifar_stem=cifar_stem)
