"""COCO mAP of a detector where it ships: a module on torch, or a bundle on any runtime.

The bundle's decoded output (an Ultralytics model exported whole: ``(B, 4 + nc, anchors)``) goes
through the same class-aware NMS (:func:`compressor.training.yolo_postprocess`) and the same
pycocotools evaluation (:func:`compressor.training.detection_map`) as the module's, so the figure
reported is the shipped artifact's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.app._evaluate import open_predictor
from compressor.graph import deployable_module
from compressor.training import (DetectionMetrics, detection_collate, detection_map, evaluate_yolo_module,
                                 yolo_postprocess)

__all__ = ["evaluate_detection"]


def evaluate_detection(source: nn.Module | str | Path, dataset: Any, *, runtime: str | None = None,
                       threads: int | None = None, batch_size: int = 16, conf: float = 0.001, iou: float = 0.7,
                       max_det: int = 100) -> DetectionMetrics:
    """COCO mAP@[.5:.95] / mAP@0.5 of a YOLO-style detector on ``dataset`` (items ``(image, target)``).

    Args:
        source: an Ultralytics ``DetectionModel`` (run on torch), or a bundle directory whose model
            gives the decoded ``(B, 4 + nc, anchors)`` output.
        runtime: for a bundle, the runtime that runs it (default onnxruntime).
        conf, iou, max_det: :func:`compressor.training.yolo_postprocess`'s thresholds.

    Raises:
        ValueError: a module with a runtime other than torch, a bundle without that runtime's
            artifact, or an output that is not ``(B, 4 + nc, anchors)``.
    """
    if isinstance(source, nn.Module):
        if runtime not in (None, "torch"):
            raise ValueError(f"a PyTorch module runs on torch, not {runtime!r}; export a bundle to evaluate it there")
        return evaluate_yolo_module(deployable_module(source), dataset, batch_size=batch_size, conf=conf, iou=iou,
                                    max_det=max_det)
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty")
    detections: list[dict[str, torch.Tensor]] = []
    targets: list[dict[str, torch.Tensor]] = []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    with open_predictor(source, runtime=runtime, threads=threads) as (predict, _):
        for images, batch_targets in loader:
            detections.extend(yolo_postprocess(predict(images.numpy()), conf=conf, iou=iou, max_det=max_det))
            targets.extend(batch_targets)
    return detection_map(detections, targets, max_dets=max_det)
