"""digits-detect: deterministic canvases of real digits with exact, in-bounds boxes and disjoint splits."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn", reason="digits-detect draws scikit-learn's bundled digits")

from compressor.training import (DatasetError, DigitsDetectDataset, detection_collate,  # noqa: E402
                                 digits_detect_dataset)
from compressor.training._detection import DETECT_MAX_DIGITS  # noqa: E402

torch.set_num_threads(1)

SIZE = 96
N = 24


@pytest.fixture(scope="module")
def train_set() -> DigitsDetectDataset:
    return digits_detect_dataset("train", size=SIZE, num_images=N, digit_sizes=(12, 32))


@pytest.fixture(scope="module")
def items(train_set):
    return [train_set[i] for i in range(len(train_set))]


def test_items_are_images_and_targets(train_set, items):
    assert len(train_set) == N and train_set.num_classes == 10
    image, target = items[0]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    assert target["boxes"].shape == (len(target["labels"]), 4)


def test_same_seed_same_items_in_any_order(items):
    again = digits_detect_dataset("train", size=SIZE, num_images=N, digit_sizes=(12, 32))
    for i in reversed(range(N)):  # another dataset object, read backwards
        image, target = again[i]
        assert torch.equal(image, items[i][0])
        assert torch.equal(target["boxes"], items[i][1]["boxes"])
        assert torch.equal(target["labels"], items[i][1]["labels"])
    assert torch.equal(again[-1][0], items[-1][0])
    other = digits_detect_dataset("train", size=SIZE, num_images=N, digit_sizes=(12, 32), seed=1)
    assert not torch.equal(other[0][0], items[0][0])


def test_boxes_lie_inside_the_canvas_and_are_not_degenerate(items):
    for _, target in items:
        boxes = target["boxes"]
        assert (boxes >= 0).all() and (boxes <= SIZE).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 2).all()


def test_one_to_five_digits_labelled_zero_to_nine(items):
    counts = [len(t["labels"]) for _, t in items]
    assert min(counts) >= 1 and max(counts) <= DETECT_MAX_DIGITS and len(set(counts)) > 1
    labels = torch.cat([t["labels"] for _, t in items])
    assert labels.min() >= 0 and labels.max() <= 9


def test_placed_digits_barely_overlap(items):
    box_iou = pytest.importorskip("torchvision.ops", reason="box_iou comes from torchvision").box_iou
    for _, target in items:
        iou = box_iou(target["boxes"], target["boxes"])
        assert (iou - torch.eye(len(iou)) < 0.3).all()


def test_boxes_hold_the_ink(items):
    """Digits are bright on a dark background: a box is brighter than the image average."""
    for image, target in items:
        gray = image.mean(0)
        for x1, y1, x2, y2 in target["boxes"].round().long().tolist():
            inside = gray[y1:y2, x1:x2]
            assert float(inside.max()) > float(gray.mean()) + 0.2
            assert float(inside.mean()) > float(gray.mean())


def test_train_and_test_draw_disjoint_source_digits(train_set):
    test_set = digits_detect_dataset("test", size=SIZE, num_images=4)
    train_rows, test_rows = set(train_set.source_indices.tolist()), set(test_set.source_indices.tolist())
    assert not train_rows & test_rows
    assert len(train_rows) + len(test_rows) == 1797
    assert not torch.equal(test_set[0][0], train_set[0][0])


def test_default_sizes():
    train, test = digits_detect_dataset("train"), digits_detect_dataset("test")
    assert (len(train), len(test)) == (2000, 400)
    assert train[1999][0].shape == (3, 160, 160)


def test_collate_stacks_images_and_lists_targets(items):
    images, targets = detection_collate(items[:4])
    assert images.shape == (4, 3, SIZE, SIZE)
    assert isinstance(targets, list) and len(targets) == 4 and targets[2] is items[2][1]


@pytest.mark.parametrize("kwargs, match", [
    ({"split": "val"}, "split must be 'train' or 'test'"),
    ({"size": 0}, "size"),
    ({"num_images": 0}, "num_images"),
    ({"seed": -1}, "seed"),
    ({"size": 32, "digit_sizes": (14, 48)}, "digit_sizes"),
    ({"digit_sizes": (20, 10)}, "digit_sizes"),
])
def test_bad_arguments_raise_dataset_error(kwargs, match):
    with pytest.raises(DatasetError, match=match):
        digits_detect_dataset(**kwargs)
    assert issubclass(DatasetError, ValueError)


def test_out_of_range_index_raises_index_error(train_set):
    with pytest.raises(IndexError):
        train_set[N]
