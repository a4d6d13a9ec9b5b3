"""Weight initialisation shared by the zoo architectures."""

from __future__ import annotations

from torch import nn


def init_weights_(model: nn.Module, linear_std: float | None = None) -> nn.Module:
    """Initialise ``model`` in place, the way the ResNet/MobileNet papers train from scratch.

    Convolutions get He (Kaiming) normal init with ``fan_out`` (He et al. 2015); BatchNorm gets
    weight 1 and bias 0. Linear layers keep PyTorch's default init unless ``linear_std`` is given,
    in which case they are drawn from N(0, linear_std) with zero bias.

    Returns:
        ``model`` itself, for chaining.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def check_head_args(num_classes: int, in_chans: int, width_mult: float = 1.0) -> None:
    """Validate the arguments every classifier of the zoo takes; raises ValueError naming them."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes and in_chans must be >= 1, got {num_classes}, {in_chans}")
