"""Object detection: the ``digits-detect`` dataset, COCO mAP, and training/evaluating YOLO detectors.

* ``digits_detect_dataset``: canvases of scikit-learn's real 8x8 handwritten digits (bundled, no
  download), 1-5 per image at random sizes and places over background clutter, with exact boxes.
  Items are generated on access from a per-index seed, so item ``i`` never depends on access order.
* ``detection_map``: mAP@[.5:.95], mAP@.5 and mAP@.75 through pycocotools' ``COCOeval`` (the
  reference implementation: 101-point interpolated precision, greedy matching by score).
* ``yolo_postprocess``: an Ultralytics Detect head's decoded output ``(B, 4 + nc, A)`` (from torch,
  onnxruntime or OpenVINO) -> per-image boxes, scores and labels after class-aware NMS.
* ``train_yolo_detector`` / ``evaluate_yolo_module``: a plain optimizer loop around Ultralytics'
  ``v8DetectionLoss`` (their trainer is not used), and its COCO evaluation.

Ultralytics and torchvision are imported on first use. pycocotools is a development extra
(``pip install cnn-compressor[dev]``); without it :func:`detection_map` raises ImportError saying so.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import rich.progress as rp
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from compressor.graph import evaluating, module_modes, restore_modes_
from compressor.training._data import DatasetError

try:  # a development extra, not a core dependency: detection_map names it when it is missing
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError:  # pragma: no cover - exercised only where the extra is not installed
    COCO = COCOeval = None

__all__ = [
    "DETECT_DIGIT_SIZES", "DETECT_MAX_DIGITS", "DETECT_MAX_IOU", "DETECT_NUM_IMAGES", "DETECT_INK_THRESHOLD",
    "YOLO_LOSS_GAINS", "DetectionMetrics", "DigitsDetectDataset", "detection_collate", "detection_map",
    "digits_detect_dataset", "evaluate_yolo_module", "train_yolo_detector", "yolo_postprocess",
]

# --------------------------------------------------------------------------------------------
# digits-detect
# --------------------------------------------------------------------------------------------

DETECT_NUM_IMAGES = {"train": 2000, "test": 400}
DETECT_DIGIT_SIZES = (14, 48)  # height of a pasted digit, pixels (the 8x8 source is upscaled bilinearly)
DETECT_MAX_DIGITS = 5
DETECT_MAX_IOU = 0.3  # placed digits overlap less than this (and cover < half of each other)
# A digit's box is tight around the pixels where its upscaled ink (source 0..16 scaled to [0, 1]) is at
# least this: bilinear upscaling leaves a faint fringe that no annotator would include in the box.
DETECT_INK_THRESHOLD = 0.2
_SPLIT_CODES = {"train": 0, "test": 1}  # enters the per-item seed: the splits never share a canvas
_SOURCE_TEST_FRACTION = 0.2
_SOURCE_SPLIT_SEED = 0  # fixed, whatever ``seed``: train and test never share a source digit


def _source_digits(split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float32 [n, 8, 8] in [0, 1], labels int64 [n], rows of ``load_digits()``) of one split.

    The same stratified 80/20 split as ``digits_dataset``'s default (1,437 train, 360 test digits)."""
    from sklearn.datasets import load_digits  # optional SDK: sklearn
    from sklearn.model_selection import train_test_split  # optional SDK: sklearn

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=_SOURCE_TEST_FRACTION,
                                           stratify=labels, random_state=_SOURCE_SPLIT_SEED)
    rows = np.sort(train_idx if split == "train" else test_idx)
    return bunch.images[rows].astype(np.float32) / 16.0, labels[rows], rows


def _upscale(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D float array to ``height`` x ``width``."""
    t = torch.from_numpy(np.ascontiguousarray(patch))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def _blend_(canvas: np.ndarray, alpha: np.ndarray, color: np.ndarray, top: int, left: int) -> None:
    """Alpha-composite ``color`` (3,) with coverage ``alpha`` (h, w) onto ``canvas`` (3, H, W) at (top, left)."""
    h, w = alpha.shape
    region = canvas[:, top:top + h, left:left + w]
    region *= 1.0 - alpha
    region += color[:, None, None] * alpha


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection over the smaller area of ``box`` (4,) against ``boxes`` (n, 4), xyxy."""
    wh = np.clip(np.minimum(box[2:], boxes[:, 2:]) - np.maximum(box[:2], boxes[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter), inter / np.minimum(area, areas)


class DigitsDetectDataset(Dataset):
    """The ``digits-detect`` canvases; see :func:`digits_detect_dataset`.

    Items are ``(image float32 [3, size, size] in [0, 1], {"boxes": float32 [N, 4] xyxy pixels,
    "labels": int64 [N]})``. Attributes: ``split``, ``size``, ``seed``, ``digit_sizes``,
    ``source_indices`` (rows of sklearn's ``load_digits()`` the digits are drawn from),
    ``classes`` (``"0"`` .. ``"9"``), ``num_classes`` (10)."""

    num_classes = 10
    classes = tuple(str(d) for d in range(10))

    def __init__(self, split: str, size: int, num_images: int, seed: int, digit_sizes: tuple[int, int]) -> None:
        self.split, self.size, self.seed, self.digit_sizes = split, size, seed, digit_sizes
        self._num_images = num_images
        self._digits, self._labels, self.source_indices = _source_digits(split)

    def __len__(self) -> int:
        return self._num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not -self._num_images <= index < self._num_images:
            raise IndexError(f"digits-detect {self.split} index {index} out of range ({self._num_images} images)")
        index %= self._num_images
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index])
        image, boxes, labels = self._draw(rng)
        return torch.from_numpy(image), {"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels)}

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = self.size
        canvas = np.empty((3, s, s), dtype=np.float32)
        canvas[:] = rng.uniform(0.0, 0.35, size=(3, 1, 1))
        self._clutter_(canvas, rng)
        lo, hi = self.digit_sizes
        boxes: list[np.ndarray] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(1, DETECT_MAX_DIGITS + 1))):
            for _attempt in range(20):  # the first digit always fits; later ones may give up
                pick = int(rng.integers(len(self._digits)))
                height = int(rng.integers(lo, hi + 1))
                width = int(np.clip(round(height * rng.uniform(0.75, 1.25)), lo, min(hi, s)))
                ink = np.clip(_upscale(self._digits[pick], height, width), 0.0, 1.0)
                rows, cols = np.nonzero(ink >= DETECT_INK_THRESHOLD)
                top, left = int(rng.integers(0, s - height + 1)), int(rng.integers(0, s - width + 1))
                box = np.array([left + cols.min(), top + rows.min(), left + cols.max() + 1, top + rows.max() + 1],
                               dtype=np.float32)
                if boxes:
                    iou, cover = _box_iou(box, np.stack(boxes))
                    if (iou >= DETECT_MAX_IOU).any() or (cover >= 0.5).any():
                        continue
                color = rng.uniform(0.65, 1.0, size=3).astype(np.float32)
                _blend_(canvas, ink * np.float32(rng.uniform(0.85, 1.0)), color, top, left)
                boxes.append(box)
                labels.append(int(self._labels[pick]))
                break
        canvas += rng.normal(0.0, rng.uniform(0.01, 0.05), size=canvas.shape).astype(np.float32)  # sensor noise
        np.clip(canvas, 0.0, 1.0, out=canvas)
        return canvas, np.stack(boxes), np.asarray(labels, dtype=np.int64)

    def _clutter_(self, canvas: np.ndarray, rng: np.random.Generator) -> None:
        """Unlabelled distractors: straight strokes, and blurred fragments (at most a quarter) of digits."""
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        for _ in range(int(rng.integers(0, 4))):
            (x0, y0), (x1, y1) = rng.uniform(0, s, size=(2, 2))
            dx, dy = x1 - x0, y1 - y0
            t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
            dist = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
            half = rng.uniform(0.4, 1.3)  # half the stroke width, pixels; anti-aliased edge
            alpha = np.clip(half + 0.5 - dist, 0.0, 1.0) * np.float32(rng.uniform(0.4, 0.9))
            _blend_(canvas, alpha.astype(np.float32), rng.uniform(0.3, 0.9, size=3).astype(np.float32), 0, 0)
        lo, hi = self.digit_sizes
        for _ in range(int(rng.integers(0, 4))):
            digit = self._digits[int(rng.integers(len(self._digits)))]
            h, w = (int(v) for v in rng.integers(2, 5, size=2))  # at most 4x4 of the 8x8: never a whole digit
            r, c = int(rng.integers(0, 9 - h)), int(rng.integers(0, 9 - w))
            scale = rng.uniform(lo, hi) / 8.0
            height, width = max(2, round(h * scale)), max(2, round(w * scale))
            frag = torch.from_numpy(_upscale(digit[r:r + h, c:c + w], height, width))[None, None]
            frag = F.avg_pool2d(frag, 5, stride=1, padding=2, count_include_pad=False)[0, 0].numpy()  # blur
            top, left = int(rng.integers(0, s - height + 1)), int(rng.integers(0, s - width + 1))
            alpha = np.clip(frag, 0.0, 1.0) * np.float32(rng.uniform(0.3, 0.6))
            _blend_(canvas, alpha, rng.uniform(0.5, 0.9, size=3).astype(np.float32), top, left)


def digits_detect_dataset(split: str = "train", *, size: int = 160, num_images: int | None = None,
                          seed: int = 0, digit_sizes: tuple[int, int] = DETECT_DIGIT_SIZES) -> DigitsDetectDataset:
    """A deterministic detection dataset of real handwritten digits on cluttered canvases (no download).

    Each ``size`` x ``size`` RGB canvas (float32 in [0, 1]) has a random dark background colour,
    0-3 anti-aliased straight strokes, 0-3 blurred fragments (at most 4x4 of the 8x8 source pixels,
    lower contrast) of digits that are not labelled, then 1-5 digits from scikit-learn's
    ``load_digits`` (1,797 real 8x8 scans), each upscaled bilinearly to a random height in
    ``digit_sizes`` (pixels; width x0.75-1.25), in a random bright colour at a random place fully
    inside the canvas, then Gaussian sensor noise. A digit that would overlap a placed one with
    IoU >= ``DETECT_MAX_IOU`` (or cover half of the smaller box) is redrawn, 20 tries at most,
    so an image may hold fewer digits than drawn, never none.

    Boxes are xyxy pixel edges, tight around the digit's ink *after* upscaling: the pixels whose
    ink is >= ``DETECT_INK_THRESHOLD`` (``x2``/``y2`` are one past the last such pixel, so a box
    always lies inside ``[0, size]``). Labels are the digits 0-9.

    The source digits are split 80/20 (stratified, fixed: the same split as
    ``digits_dataset``'s default), train and test draw from disjoint halves, and item ``i`` is
    drawn from a generator seeded with ``(seed, split, i)``: the same whatever the access order.

    Args:
        split: ``"train"`` or ``"test"``.
        size: canvas side, pixels (>= the largest digit size).
        num_images: items in the split; default ``DETECT_NUM_IMAGES`` (2,000 train, 400 test).
        seed: picks the canvases (not the source split).
        digit_sizes: ``(min, max)`` digit height, pixels, 8 <= min <= max <= size.

    Raises:
        DatasetError: an unknown split, a non-positive size or image count, or bad digit sizes.
    """
    if split not in _SPLIT_CODES:
        raise DatasetError(f"digits-detect split must be 'train' or 'test', got {split!r}")
    if num_images is None:
        num_images = DETECT_NUM_IMAGES[split]
    if not isinstance(num_images, int) or num_images < 1:
        raise DatasetError(f"digits-detect num_images must be a positive int, got {num_images!r}")
    if not isinstance(size, int) or size < 1:
        raise DatasetError(f"digits-detect size must be a positive int (pixels), got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise DatasetError(f"digits-detect seed must be a non-negative int, got {seed!r}")
    digit_sizes = tuple(digit_sizes)
    if (len(digit_sizes) != 2 or any(not isinstance(v, int) for v in digit_sizes)
            or not 8 <= digit_sizes[0] <= digit_sizes[1] <= size):
        raise DatasetError(f"digits-detect digit_sizes must be (min, max) ints with 8 <= min <= max <= size "
                           f"({size}), got {digit_sizes!r}")
    return DigitsDetectDataset(split, size, num_images, seed, digit_sizes)  # type: ignore[arg-type]


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]]
                      ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """DataLoader ``collate_fn`` for detection items: ``(images stacked [B, C, H, W], [target, ...])``."""
    images, targets = zip(*batch)
    return torch.stack(images), list(targets)


# --------------------------------------------------------------------------------------------
# COCO mAP
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionMetrics:
    """COCO box accuracy (every figure a fraction in [0, 1]), as pycocotools' ``COCOeval`` computes it.

    ``map`` is AP averaged over IoU thresholds 0.50:0.05:0.95, ``map50`` and ``map75`` at IoU 0.5 and
    0.75, all over classes that have a ground-truth box, at most ``max_dets`` detections per image.
    ``per_class``: label -> AP@[.5:.95] of each class with a ground-truth box.
    """

    map: float
    map50: float
    map75: float
    num_images: int
    num_targets: int
    num_detections: int
    per_class: dict[int, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``per_class`` keys become strings)."""
        out = asdict(self)
        if self.per_class is not None:
            out["per_class"] = {str(k): v for k, v in self.per_class.items()}
        return out


def _as_array(value: Any, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
    array = np.asarray(value)
    if array.size and not np.isfinite(array.astype(np.float64)).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _boxes(value: Any, name: str) -> np.ndarray:
    array = _as_array(value, name).astype(np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) (xyxy), got {array.shape}")
    if (array[:, 2] < array[:, 0]).any() or (array[:, 3] < array[:, 1]).any():
        raise ValueError(f"{name} must be xyxy with x2 >= x1 and y2 >= y1 (xywh boxes passed by mistake?)")
    return array


def _vector(value: Any, name: str, length: int, labels: bool) -> np.ndarray:
    array = _as_array(value, name)
    if array.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), one per box, got {array.shape}")
    if labels:
        if length and ((array < 0).any() or (array != np.round(array)).any()):
            raise ValueError(f"{name} must be non-negative integer class labels")
        return array.astype(np.int64)
    return array.astype(np.float64)


def _xywh(boxes: np.ndarray) -> list[list[float]]:
    return [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]


def detection_map(detections: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], *,
                  max_dets: int = 100) -> DetectionMetrics:
    """COCO mAP of ``detections`` against ``targets``, one dict per image, through pycocotools' COCOeval.

    Args:
        detections: per image ``{"boxes": (K, 4) xyxy pixels, "scores": (K,), "labels": (K,) ints}``,
            numpy arrays or torch tensors; ``K`` may be 0.
        targets: per image ``{"boxes": (M, 4) xyxy pixels, "labels": (M,) ints}``; ``M`` may be 0.
        max_dets: detections per image (and class) that count, highest scores first (COCO: 100).

    The boxes become an in-memory COCO dataset (xywh, ``iscrowd`` 0, one category per label seen in
    targets or detections); COCOeval's printing is silenced. Detections of a class without any
    ground-truth box are ignored, as in COCO; an image with neither boxes nor detections counts for
    nothing. An empty detection list gives 0.

    Raises:
        ValueError: different numbers of images, a missing field or a wrongly shaped one (named with
            its image index), non-finite values, boxes that are not xyxy, negative or fractional
            labels, or no ground-truth box at all (mAP is undefined).
        ImportError: pycocotools is not installed.
    """
    if COCOeval is None:
        raise ImportError("detection_map needs pycocotools: pip install pycocotools (or cnn-compressor[dev])")
    if len(detections) != len(targets):
        raise ValueError(f"detections and targets must hold one entry per image: got {len(detections)} "
                         f"detections and {len(targets)} targets")
    if not isinstance(max_dets, int) or max_dets < 1:
        raise ValueError(f"max_dets must be a positive int, got {max_dets!r}")
    gt_anns: list[dict[str, Any]] = []
    dt_anns: list[dict[str, Any]] = []
    for i, (det, tgt) in enumerate(zip(detections, targets)):
        boxes = _boxes(tgt.get("boxes"), f"targets[{i}]['boxes']")
        labels = _vector(tgt.get("labels"), f"targets[{i}]['labels']", len(boxes), labels=True)
        for box, label in zip(_xywh(boxes), labels):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": int(label), "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0})
        boxes = _boxes(det.get("boxes"), f"detections[{i}]['boxes']")
        labels = _vector(det.get("labels"), f"detections[{i}]['labels']", len(boxes), labels=True)
        scores = _vector(det.get("scores"), f"detections[{i}]['scores']", len(boxes), labels=False)
        for box, label, score in zip(_xywh(boxes), labels, scores):
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": i + 1, "category_id": int(label), "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0, "score": float(score)})
    if not gt_anns:
        raise ValueError(f"targets hold no box in {len(targets)} image(s): mAP is undefined")
    labels_seen = sorted({a["category_id"] for a in gt_anns} | {a["category_id"] for a in dt_anns})
    images = [{"id": i + 1} for i in range(len(targets))]
    categories = [{"id": c, "name": str(c)} for c in labels_seen]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
        coco_dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision[T, R, K, A, M]: IoU threshold, recall threshold, category, area range (0: all), max dets
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, label in enumerate(evaluator.params.catIds):
        p = precision[:, :, k]
        if (p > -1).any():  # -1: the class has no ground-truth box
            per_class[int(label)] = float(p[p > -1].mean())
    return DetectionMetrics(map=max(0.0, float(evaluator.stats[0])), map50=max(0.0, float(evaluator.stats[1])),
                            map75=max(0.0, float(evaluator.stats[2])), num_images=len(targets),
                            num_targets=len(gt_anns), num_detections=len(dt_anns), per_class=per_class)


# --------------------------------------------------------------------------------------------
# Ultralytics YOLO: post-processing, training, evaluation
# --------------------------------------------------------------------------------------------

# Ultralytics' default loss gains (ultralytics/cfg/default.yaml: box 7.5, cls 0.5, dfl 1.5)
YOLO_LOSS_GAINS = {"box": 7.5, "cls": 0.5, "dfl": 1.5}


def yolo_postprocess(pred: Any, *, conf: float = 0.001, iou: float = 0.7,
                     max_det: int = 100) -> list[dict[str, torch.Tensor]]:
    """Per-image detections from an Ultralytics Detect head's decoded output, with class-aware NMS.

    Args:
        pred: ``(B, 4 + nc, A)``: per anchor a box (cx, cy, w, h in input pixels) then ``nc`` class
            probabilities, as a torch tensor or numpy array (onnxruntime, OpenVINO); or the
            ``(y, raw)`` tuple/list an eval-mode ``DetectionModel`` returns (``y`` is used).
        conf: keep anchors whose best class probability is > ``conf``.
        iou: NMS IoU threshold (``torchvision.ops.batched_nms``: boxes of different classes never
            suppress each other).
        max_det: detections kept per image, highest scores first.

    Returns:
        One dict per image: ``boxes`` float32 (K, 4) xyxy pixels, ``scores`` float32 (K,) (the best
        class probability), ``labels`` int64 (K,), sorted by decreasing score, on ``pred``'s device.

    Raises:
        ValueError: ``pred`` is not 3-D with more than 4 channels, or a bad ``conf``/``iou``/``max_det``.
    """
    from torchvision.ops import batched_nms  # optional SDK: torchvision

    if isinstance(pred, (tuple, list)):
        if not pred:
            raise ValueError("pred is an empty tuple; expected (B, 4 + nc, A) or (y, raw)")
        pred = pred[0]
    pred = pred.detach() if isinstance(pred, torch.Tensor) else torch.from_numpy(np.asarray(pred))
    if pred.dim() != 3 or pred.shape[1] <= 4:
        raise ValueError(f"pred must have shape (B, 4 + nc, A) (xywh then class probabilities per anchor), "
                         f"got {tuple(pred.shape)}")
    if not 0 <= conf < 1:
        raise ValueError(f"conf must be in [0, 1), got {conf!r}")
    if not 0 < iou <= 1:
        raise ValueError(f"iou must be in (0, 1], got {iou!r}")
    if not isinstance(max_det, int) or max_det < 1:
        raise ValueError(f"max_det must be a positive int, got {max_det!r}")
    out = []
    for per_anchor in pred.float().transpose(1, 2):  # (A, 4 + nc)
        scores, labels = per_anchor[:, 4:].max(1)
        keep = scores > conf
        xywh, scores, labels = per_anchor[keep, :4], scores[keep], labels[keep]
        boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
        kept = batched_nms(boxes, scores, labels, iou)[:max_det]
        out.append({"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept].long()})
    return out


def _yolo_batch(targets: Sequence[dict[str, torch.Tensor]], height: int, width: int,
                device: torch.device) -> dict[str, torch.Tensor]:
    """Ultralytics' training batch: ``batch_idx`` (N,), ``cls`` (N, 1), ``bboxes`` (N, 4) normalised cxcywh."""
    boxes = torch.cat([t["boxes"].float().reshape(-1, 4) for t in targets])
    labels = torch.cat([t["labels"].reshape(-1) for t in targets])
    index = torch.cat([torch.full((len(t["labels"]),), i, dtype=torch.float32) for i, t in enumerate(targets)])
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    cxcywh = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), 1) / scale
    return {"batch_idx": index.to(device), "cls": labels.float().view(-1, 1).to(device), "bboxes": cxcywh.to(device)}


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay conv/linear weights only; BatchNorm parameters and biases are not decayed (as Ultralytics)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
            (no_decay if name == "bias" or is_norm else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, warmup: int, total: int, final: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 down to ``final``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_yolo_detector(model: nn.Module, dataset: Dataset, *, epochs: int, batch_size: int = 32,
                        lr: float = 2e-3, weight_decay: float = 5e-4, warmup_steps: int = 50,
                        final_lr_fraction: float = 0.05, grad_clip: float = 10.0, threads: int | None = None,
                        seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train an Ultralytics ``DetectionModel`` in place with Ultralytics' ``v8DetectionLoss`` and AdamW.

    A plain loop (the Ultralytics trainer is not used): shuffled batches of ``dataset`` items
    ``(image [3, H, W] in [0, 1], {"boxes": xyxy pixels, "labels"})`` (e.g. :func:`digits_detect_dataset`),
    AdamW (no decay on BatchNorm and biases), linear warm-up over ``warmup_steps`` then cosine decay
    to ``lr * final_lr_fraction``, gradient clipping, no augmentation. The loss is the per-image sum
    of the gain-weighted box (CIoU), class (BCE) and DFL terms; each gain is ``model.args``' ``box``,
    ``cls`` or ``dfl`` (a namespace or dict) when it has it, else ``YOLO_LOSS_GAINS``'s. A model without
    ``args`` gets ``model.args = SimpleNamespace(**YOLO_LOSS_GAINS)``, as Ultralytics' trainer sets it.
    Every submodule ends in the train/eval mode it started in; torch's thread count is restored.

    Args:
        model: an ``ultralytics.nn.tasks.DetectionModel`` (e.g. ``DetectionModel("yolov8n.yaml", nc=10)``),
            on its device. H and W of the images must be multiples of its largest stride (32).
        dataset: map-style detection dataset, labels in ``[0, nc)``.
        epochs: passes over ``dataset``; lr: peak learning rate; threads: torch intra-op threads
            during training; seed: the shuffling order; progress: show a rich progress bar.

    Returns:
        ``{"history": [per epoch: epoch, loss, box_loss, cls_loss, dfl_loss, lr, epoch_s], "step_losses":
        [loss of every step], "step_s": [seconds of every step, its data included], "steps", "epochs",
        "train_s", "throughput_sps"}``; losses are per image (mean over the batch).

    Raises:
        ValueError: bad ``epochs``/``batch_size``/``lr``, or a dataset that yields no batch.
    """
    from ultralytics.utils.loss import v8DetectionLoss  # optional SDK: ultralytics

    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    args = getattr(model, "args", None)
    if args is None:  # v8DetectionLoss reads model.args; Ultralytics' trainer sets it the same way
        model.args = args = SimpleNamespace(**YOLO_LOSS_GAINS)
    get = args.get if isinstance(args, dict) else lambda key, default: getattr(args, key, default)
    device = next(model.parameters()).device
    criterion = v8DetectionLoss(model)
    criterion.hyp = SimpleNamespace(**{key: float(get(key, gain)) for key, gain in YOLO_LOSS_GAINS.items()})
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=detection_collate,
                        generator=torch.Generator().manual_seed(seed))
    if len(loader) == 0:
        raise ValueError(f"the dataset ({len(dataset)} images) yields no batch")
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
    total = epochs * len(loader)
    warmup = min(warmup_steps, total // 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup, total, final_lr_fraction))
    modes, old_threads = module_modes(model), torch.get_num_threads()
    history: list[dict[str, Any]] = []
    step_losses: list[float] = []
    step_s: list[float] = []
    t_start = time.perf_counter()
    bar = rp.Progress(rp.TextColumn("[bold]epoch {task.fields[epoch]}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                      rp.TextColumn("{task.fields[stats]}"), rp.TimeRemainingColumn(), disable=not progress)
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        model.train()
        with bar:
            for epoch in range(epochs):
                task = bar.add_task("train", total=len(loader), epoch=f"{epoch + 1}/{epochs}", stats="")
                sums, seen, t_epoch = torch.zeros(3, dtype=torch.float64), 0, time.perf_counter()
                t_step = time.perf_counter()
                for images, targets in loader:
                    images = images.to(device, non_blocking=True)
                    batch = _yolo_batch(targets, images.shape[2], images.shape[3], device)
                    n = len(images)
                    # v8DetectionLoss: (box, cls, dfl) with the gains applied, times the batch size
                    items = criterion(model(images), batch)[0] / n
                    loss = items.sum()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    lr_now = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    sums += items.detach().double().cpu() * n
                    seen += n
                    step_losses.append(float(loss.detach()))
                    step_s.append(time.perf_counter() - t_step)  # data + forward + loss + backward + step
                    t_step = time.perf_counter()
                    bar.update(task, advance=1, stats=f"loss {float(sums.sum()) / seen:.3f} "
                                                      f"{seen / (time.perf_counter() - t_epoch):.0f} images/s")
                bar.remove_task(task)
                box, cls, dfl = (float(v) / seen for v in sums)
                history.append({"epoch": epoch, "loss": box + cls + dfl, "box_loss": box, "cls_loss": cls,
                                "dfl_loss": dfl, "lr": lr_now, "epoch_s": time.perf_counter() - t_epoch})
    finally:
        restore_modes_(model, modes)  # per module: a frozen BatchNorm stays frozen
        torch.set_num_threads(old_threads)
    train_s = time.perf_counter() - t_start
    return {"history": history, "step_losses": step_losses, "step_s": step_s, "steps": len(step_losses),
            "epochs": epochs, "train_s": train_s, "throughput_sps": epochs * len(dataset) / train_s}


def evaluate_yolo_module(model: nn.Module, dataset: Dataset, *, batch_size: int = 32, conf: float = 0.001,
                         iou: float = 0.7, max_det: int = 100) -> DetectionMetrics:
    """COCO mAP of an Ultralytics ``DetectionModel`` (or any module returning its decoded
    ``(B, 4 + nc, A)`` output) on a detection dataset, in eval mode without gradients.

    Detections come from :func:`yolo_postprocess` (``conf``, ``iou``, ``max_det``) and are scored by
    :func:`detection_map`. The model's modes are restored afterwards.

    Raises:
        ValueError: an empty dataset, or what :func:`yolo_postprocess` / :func:`detection_map` raise.
    """
    if len(dataset) == 0:
        raise ValueError("the evaluation dataset is empty")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    detections: list[dict[str, torch.Tensor]] = []
    targets: list[dict[str, torch.Tensor]] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=detection_collate)
    with evaluating(model), torch.no_grad():
        for images, batch_targets in loader:
            pred = model(images.to(device))
            detections.extend({k: v.cpu() for k, v in d.items()}
                              for d in yolo_postprocess(pred, conf=conf, iou=iou, max_det=max_det))
            targets.extend(batch_targets)
    return detection_map(detections, targets, max_dets=max_det)
