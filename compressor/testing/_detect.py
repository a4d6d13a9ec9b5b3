"""The masked oracle for whole detectors: the parity is checked on the network's raw head outputs
(before anchors, decoding and NMS, which are discontinuous), in eval mode, at a fixed input size."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from compressor.graph import network_view
from compressor.pruning import PruneConfig, prune_model, zero_channels_
from compressor.testing._oracle import Pruned


def prune_detector_with_oracle(detector: nn.Module, images: Any, config: PruneConfig,
                               **view_options: Any) -> tuple[Pruned, nn.Module, tuple[torch.Tensor, ...]]:
    """Prune a copy of ``detector`` through its network view, and zero the same channels in
    another copy. Returns the views (original, pruned, oracle) as a :class:`Pruned`, the pruned
    detector, and the network input the parity is checked on.

    ``view_options`` go to :func:`compressor.graph.network_view` (``proposals``/``detections``
    keep the R-CNN heads' test runs small).
    """
    pruned_detector = copy.deepcopy(detector)
    view = network_view(pruned_detector, **view_options)
    if view is None:
        raise ValueError(f"{type(detector).__name__} is not a detector the toolchain knows")
    inputs = view.network_input(images)
    result = prune_model(view, inputs, config, inplace=True)
    oracle = network_view(copy.deepcopy(detector), **view_options)
    zero_channels_(oracle, result.graph, result.removed)
    original = network_view(detector, **view_options)
    return Pruned(original, view, oracle, result.graph, result.removed), pruned_detector, inputs
