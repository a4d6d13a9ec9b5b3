"""COCO mAP through pycocotools on hand-built cases whose AP is known, and YOLO post-processing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools", reason="detection_map needs pycocotools (the dev extra)")
pytest.importorskip("torchvision", reason="yolo_postprocess needs torchvision's batched_nms")

from compressor.training import DetectionMetrics, detection_map, yolo_postprocess  # noqa: E402

torch.set_num_threads(1)


def _boxes(boxes):
    boxes = np.asarray(boxes, dtype=np.float32)
    return boxes.reshape(0, 4) if boxes.size == 0 else boxes


def det(boxes, scores, labels):
    return {"boxes": _boxes(boxes), "scores": np.asarray(scores, dtype=np.float32),
            "labels": np.asarray(labels, dtype=np.int64)}


def gt(boxes, labels):
    return {"boxes": torch.from_numpy(_boxes(boxes)), "labels": torch.tensor(labels).long()}


def test_perfect_detections_score_one():
    targets = [gt([[10, 10, 30, 40], [50, 50, 90, 70]], [0, 3]), gt([[5, 5, 25, 25]], [3]), gt([], [])]
    detections = [det(t["boxes"], np.linspace(0.9, 0.5, len(t["labels"])), t["labels"]) for t in targets]
    m = detection_map(detections, targets)
    assert isinstance(m, DetectionMetrics)
    assert m.map == pytest.approx(1.0) and m.map50 == pytest.approx(1.0) and m.map75 == pytest.approx(1.0)
    assert (m.num_images, m.num_targets, m.num_detections) == (3, 3, 3)
    assert m.per_class == {0: pytest.approx(1.0), 3: pytest.approx(1.0)}
    assert m.to_dict()["per_class"] == {"0": pytest.approx(1.0), "3": pytest.approx(1.0)}


def test_torch_and_numpy_inputs_agree():
    targets = [gt([[10, 10, 30, 40]], [1])]
    as_torch = [{k: torch.as_tensor(v) for k, v in det([[10, 10, 30, 35]], [0.8], [1]).items()}]
    assert detection_map(as_torch, targets) == detection_map([det([[10, 10, 30, 35]], [0.8], [1])], targets)


def test_a_shifted_box_counts_at_the_thresholds_its_iou_reaches():
    # IoU = 40 / 64 = 0.625: a match at 0.50, 0.55 and 0.60 only (3 of the 10 thresholds)
    m = detection_map([det([[0, 0, 8, 5]], [0.9], [2])], [gt([[0, 0, 8, 8]], [2])])
    assert m.map == pytest.approx(0.3)
    assert m.map50 == pytest.approx(1.0)
    assert m.map75 == pytest.approx(0.0)


def test_a_missed_box_halves_recall():
    # recall 0.5 at precision 1: COCO's 101-point interpolation gives precision 1 at recall 0, 0.01 .. 0.50
    m = detection_map([det([[0, 0, 10, 10]], [0.9], [1])], [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])])
    assert m.map == pytest.approx(51 / 101) and m.map50 == pytest.approx(51 / 101)


def test_a_lower_scored_duplicate_leaves_ap_unchanged():
    m = detection_map([det([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])], [gt([[0, 0, 10, 10]], [1])])
    assert m.map == pytest.approx(1.0)


def test_a_higher_scored_false_positive_on_another_image_halves_ap():
    # ranked: FP (0.9), TP (0.8) -> precision 1/2 at recall 1, and the envelope is 1/2 at every recall
    detections = [det([[0, 0, 10, 10]], [0.8], [1]), det([[40, 40, 60, 60]], [0.9], [1])]
    targets = [gt([[0, 0, 10, 10]], [1]), gt([], [])]
    m = detection_map(detections, targets)
    assert m.map == pytest.approx(0.5) and m.map50 == pytest.approx(0.5)


def test_a_false_positive_of_a_class_without_ground_truth_is_ignored():
    detections = [det([[0, 0, 10, 10], [40, 40, 60, 60]], [0.8, 0.9], [1, 7])]
    m = detection_map(detections, [gt([[0, 0, 10, 10]], [1])])
    assert m.map == pytest.approx(1.0) and m.per_class == {1: pytest.approx(1.0)}


def test_no_detections_score_zero():
    targets = [gt([[0, 0, 10, 10]], [1]), gt([], [])]
    m = detection_map([det([], [], []), det([], [], [])], targets)
    assert (m.map, m.map50, m.map75, m.num_detections) == (0.0, 0.0, 0.0, 0)


@pytest.mark.parametrize("detections, targets, match", [
    ([], [gt([[0, 0, 1, 1]], [0])], "one entry per image"),
    ([det([[0, 0, 1]], [0.5], [0])], [gt([[0, 0, 1, 1]], [0])], r"detections\[0\]\['boxes'\] must have shape"),
    ([det([[0, 0, 1, 1]], [0.5, 0.4], [0])], [gt([[0, 0, 1, 1]], [0])], r"detections\[0\]\['scores'\]"),
    ([det([[0, 0, 1, 1]], [0.5], [0])], [gt([[0, 0, 1, 1]], [0, 1])], r"targets\[0\]\['labels'\]"),
    ([det([[5, 5, 1, 1]], [0.5], [0])], [gt([[0, 0, 1, 1]], [0])], "xyxy"),
    ([det([[0, 0, 1, 1]], [np.nan], [0])], [gt([[0, 0, 1, 1]], [0])], "NaN"),
    ([det([[0, 0, 1, 1]], [0.5], [0])], [{"boxes": np.zeros((1, 4))}], r"targets\[0\]\['labels'\] is missing"),
    ([det([], [], [])], [gt([], [])], "no box"),
])
def test_bad_inputs_raise_a_value_error_naming_the_field(detections, targets, match):
    with pytest.raises(ValueError, match=match):
        detection_map(detections, targets)


def _head_output(anchors):
    """(1, 4 + nc, A) from rows (cx, cy, w, h, p0, p1, p2)."""
    return torch.tensor(anchors, dtype=torch.float32).T[None]


def test_postprocess_nms_is_class_aware_and_drops_low_scores():
    pred = _head_output([
        [20, 20, 10, 10, 0.9, 0.0, 0.1],   # class 0, kept
        [21, 20, 10, 10, 0.8, 0.1, 0.0],   # overlaps the first (IoU ~0.82), same class: suppressed
        [20, 21, 10, 10, 0.0, 0.0, 0.7],   # overlaps too, but class 2: kept
        [60, 60, 10, 10, 0.0, 0.0005, 0.0],  # below conf: dropped
    ])
    (out,) = yolo_postprocess(pred, conf=0.001, iou=0.7)
    assert out["labels"].tolist() == [0, 2]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert out["boxes"].tolist() == [[15, 15, 25, 25], [15, 16, 25, 26]]
    assert out["labels"].dtype == torch.int64


def test_postprocess_takes_numpy_tuples_and_batches():
    pred = torch.rand(2, 4 + 3, 50) * torch.tensor([60, 60, 20, 20, 1, 1, 1.0])[None, :, None]
    from_torch = yolo_postprocess(pred, max_det=5)
    from_numpy = yolo_postprocess(pred.numpy(), max_det=5)
    from_tuple = yolo_postprocess((pred, {"raw": None}), max_det=5)
    assert len(from_torch) == 2 and all(len(d["scores"]) <= 5 for d in from_torch)
    for a, b, c in zip(from_torch, from_numpy, from_tuple):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
        assert (a["scores"][:-1] >= a["scores"][1:]).all()


@pytest.mark.parametrize("pred, kw, match", [
    (torch.zeros(1, 4, 10), {}, "4 \\+ nc"),
    (torch.zeros(4, 10), {}, "4 \\+ nc"),
    (torch.zeros(1, 6, 10), {"conf": 1.5}, "conf"),
    (torch.zeros(1, 6, 10), {"iou": 0.0}, "iou"),
    (torch.zeros(1, 6, 10), {"max_det": 0}, "max_det"),
])
def test_postprocess_rejects_bad_input(pred, kw, match):
    with pytest.raises(ValueError, match=match):
        yolo_postprocess(pred, **kw)
