"""Model zoo: the architectures of the papers (CIFAR ResNets, ThinResNet-50, VGG-16, MobileNetV2, LeNet-5,
ReID ResNet-50), registered by name, plus torchvision/timm pass-through.

Usage::

    from models import create_model, default_input_size, list_models

    model = create_model("resnet56", width=8)           # ThinResNet-56 at half width
    size = default_input_size("resnet56")               # (3, 32, 32)
    tv = create_model("torchvision:resnet18")           # needs torchvision; never downloads weights
    own = create_model("mypkg.nets:build_net", width=32)  # your own callable returning an nn.Module

Every zoo model is a plain ``nn.Module`` of standard layers whose eval-mode forward can be traced
by ``torch.fx.symbolic_trace`` (no hard-coded channel counts), so the pruning engine can trace it
and slice channels. This package depends only on torch; torchvision and timm are imported lazily.
"""

from models._registry import (create_model, default_input_size, is_factory_spec, list_models, register_model,
                              TIMM_PREFIX, TORCHVISION_PREFIX, ULTRALYTICS_PREFIX)

# Importing the family modules registers their models.
from models._cifar_resnet import CifarBasicBlock, CifarResNet
from models._imagenet_resnet import Bottleneck, BottleneckResNet
from models._lenet import LeNet5
from models._mobilenetv2 import InvertedResidual, MobileNetV2
from models._reid import ReIDResNet
from models._vgg import VGG

__all__ = [
    "register_model",
    "list_models",
    "create_model",
    "default_input_size",
    "is_factory_spec",
    "CifarBasicBlock",
    "CifarResNet",
    "Bottleneck",
    "BottleneckResNet",
    "LeNet5",
    "InvertedResidual",
    "MobileNetV2",
    "ReIDResNet",
    "VGG",
]

__all__ += ["TIMM_PREFIX", "TORCHVISION_PREFIX", "ULTRALYTICS_PREFIX"]
