"""Person re-identification models on the (ThinResNet-scalable) ResNet-50 backbone.

"Exploiting prunability for person re-identification" (Masson et al. 2021), a survey of pruning
for ReID, prunes two ReID baselines, both built here:

* **BNNeck** (Luo et al. 2019, "Bag of Tricks and A Strong Baseline for Deep Person
  Re-identification"): ResNet-50 with ``last_stride=1``, global average pooling, a
  BatchNorm1d "neck" whose bias is frozen, and a bias-free identity classifier. Training returns
  the logits (ID loss) and the pre-neck global feature (triplet loss); inference returns the
  post-neck feature used for retrieval.
* **PCB** (Sun et al. 2018, "Beyond Part Models: Person Retrieval with Refined Part Pooling"):
  the feature map is average-pooled into ``P`` horizontal stripes; each stripe goes through its own
  1x1 conv (to 256 channels) + BN + ReLU and its own classifier. Inference returns the
  concatenated part features.

The backbone is :class:`BottleneckResNet` without its classifier, so ``width`` scales it as in
"ThinResNet: A New Baseline for Structured Convolutional Networks Pruning"; the global feature
has ``32 * width`` channels (2048 at width 64).
"""

from __future__ import annotations

import torch
from torch import nn

from models._imagenet_resnet import BottleneckResNet
from models._init import init_weights_
from models._registry import register_model

__all__ = ["ReIDResNet", "reid_resnet50"]

_RESNET50_BLOCKS: tuple[int, int, int, int] = (3, 4, 6, 3)
_CLASSIFIER_STD = 0.001  # Luo et al. 2019 initialise the ID classifier with N(0, 0.001)


class ReIDResNet(nn.Module):
    """ResNet-50 ReID model with a BNNeck head or, if ``pcb_parts > 0``, a PCB head.

    Args:
        num_ids: number of training identities (751 for Market-1501).
        width: backbone stem width (64 = standard ResNet-50).
        last_stride: stride of backbone stage 4 (1 keeps 1/16 resolution, the ReID default).
        pcb_parts: number of horizontal stripes ``P``; 0 uses the global BNNeck head instead.
        neck: use the BNNeck (ignored by the PCB head); without it the classifier and the
            inference feature are both the raw pooled feature.
        part_dim: channels of each PCB part feature (256 in Sun et al. 2018).

    Forward:
        * BNNeck, training: ``(logits (N, num_ids), global_feature (N, 32*width))``.
        * BNNeck, eval: the neck feature ``(N, 32*width)``.
        * PCB, training: ``(list of P logits (N, num_ids), part_features (N, part_dim*P))``.
        * PCB, eval: ``part_features (N, part_dim*P)``, the parts concatenated top to bottom.
    """

    def __init__(
        self,
        num_ids: int = 751,
        width: int = 64,
        last_stride: int = 1,
        pcb_parts: int = 0,
        neck: bool = True,
        part_dim: int = 256,
    ) -> None:
        super().__init__()
        if num_ids < 1:
            raise ValueError(f"num_ids must be >= 1, got {num_ids}")
        if pcb_parts < 0:
            raise ValueError(f"pcb_parts must be >= 0, got {pcb_parts}")
        if part_dim < 1:
            raise ValueError(f"part_dim must be >= 1, got {part_dim}")
        self.backbone = BottleneckResNet(_RESNET50_BLOCKS, num_classes=0, width=width, last_stride=last_stride)
        feature_dim = self.backbone.num_features
        self.parts = pcb_parts
        self.neck = neck and pcb_parts == 0
        if pcb_parts > 0:
            self.part_pool = nn.AdaptiveAvgPool2d((pcb_parts, 1))
            self.part_reducers = nn.ModuleList(
                nn.Sequential(
                    nn.Conv2d(feature_dim, part_dim, 1, bias=False),
                    nn.BatchNorm2d(part_dim),
                    nn.ReLU(),
                )
                for _ in range(pcb_parts)
            )
            self.part_classifiers = nn.ModuleList(nn.Linear(part_dim, num_ids) for _ in range(pcb_parts))
            init_weights_(self.part_reducers)
            init_weights_(self.part_classifiers, linear_std=_CLASSIFIER_STD)
        else:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.bottleneck: nn.Module = nn.BatchNorm1d(feature_dim) if self.neck else nn.Identity()
            if isinstance(self.bottleneck, nn.BatchNorm1d):
                init_weights_(self.bottleneck)
                # Luo et al. 2019: a trainable shift would move features off the hypersphere used
                # by the cosine metric, so the BNNeck bias stays at zero.
                self.bottleneck.bias.requires_grad_(False)
            self.classifier = nn.Linear(feature_dim, num_ids, bias=False)
            init_weights_(self.classifier, linear_std=_CLASSIFIER_STD)

    def _forward_pcb(self, feature_map: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor] | torch.Tensor:
        stripes = self.part_pool(feature_map)  # (N, C, P, 1)
        part_features: list[torch.Tensor] = []
        for index in range(self.parts):  # static range, unrolled by torch.fx
            stripe = stripes[:, :, index : index + 1, :]
            part_features.append(torch.flatten(self.part_reducers[index](stripe), 1))
        features = torch.cat(part_features, dim=1)
        if not self.training:
            return features
        logits = [classifier(part) for classifier, part in zip(self.part_classifiers, part_features)]
        return logits, features

    def forward(
        self, x: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[list[torch.Tensor], torch.Tensor]:
        feature_map = self.backbone.forward_features(x)
        if self.parts > 0:
            return self._forward_pcb(feature_map)
        global_feature = torch.flatten(self.global_pool(feature_map), 1)
        neck_feature = self.bottleneck(global_feature)
        if not self.training:
            return neck_feature
        return self.classifier(neck_feature), global_feature


@register_model("reid_resnet50", input_size=(3, 256, 128))
def reid_resnet50(
    num_ids: int = 751, width: int = 64, last_stride: int = 1, pcb_parts: int = 0, neck: bool = True
) -> ReIDResNet:
    """ResNet-50 ReID baseline (BNNeck, or PCB with ``pcb_parts=6``) for 3x256x128 person crops."""
    return ReIDResNet(num_ids=num_ids, width=width, last_stride=last_stride, pcb_parts=pcb_parts, neck=neck)
