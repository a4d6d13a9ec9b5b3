"""LeNet-5 for 32x32 single-channel images.

LeCun et al. 1998, "Gradient-Based Learning Applied to Document Recognition", Fig. 2, in its
common modern form (ReLU and max-pooling instead of scaled tanh and sub-sampling): conv 6@5x5 ->
pool -> conv 16@5x5 -> pool -> 120 -> 84 -> classes. A 32x32 input leaves 16 maps of 5x5.
"""

from __future__ import annotations

import torch
from torch import nn

from models._registry import register_model

__all__ = ["LeNet5", "lenet5"]

_INPUT_SIDE = 32  # the paper's padded MNIST size


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling.

    Args:
        num_classes: classifier outputs.
        in_chans: input image channels (1 for MNIST).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1) -> None:
        super().__init__()
        if num_classes < 1 or in_chans < 1:
            raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes}, {in_chans}")
        self.conv1 = nn.Conv2d(in_chans, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = ((_INPUT_SIDE - 4) // 2 - 4) // 2  # two valid 5x5 convs, two 2x2 pools: 32 -> 5
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


@register_model("lenet5", input_size=(1, 32, 32))
def lenet5(num_classes: int = 10, in_chans: int = 1) -> LeNet5:
    """LeNet-5 (61.7 k params for 10 classes) for 1x32x32 inputs."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans)
