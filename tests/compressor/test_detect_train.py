"""A YOLOv8n trained briefly on digits-detect with our loop and Ultralytics' loss: the loss falls, and
the evaluation returns finite COCO figures."""
from __future__ import annotations

import math
import os

import pytest
import torch

pytest.importorskip("ultralytics", reason="the YOLO helpers train an Ultralytics DetectionModel")
pytest.importorskip("pycocotools", reason="evaluate_yolo_module scores with pycocotools")

from compressor.training import digits_detect_dataset, evaluate_yolo_module, train_yolo_detector  # noqa: E402

SIZE = 96


@pytest.fixture(scope="module")
def yolo():
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    return DetectionModel("yolov8n.yaml", nc=10, verbose=False)


def test_training_lowers_the_loss_and_evaluation_is_finite(yolo):
    data = digits_detect_dataset("train", size=SIZE, num_images=64, digit_sizes=(14, 40))
    threads = torch.get_num_threads()
    yolo.train()
    result = train_yolo_detector(yolo, data, epochs=2, batch_size=16, lr=2e-3, warmup_steps=2, threads=1,
                                 progress=False)
    assert torch.get_num_threads() == threads and yolo.training  # restored
    assert result["steps"] == 8 and len(result["history"]) == 2
    losses = result["step_losses"]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < sum(losses[:2])
    assert result["history"][1]["loss"] < result["history"][0]["loss"]
    assert set(result["history"][0]) >= {"loss", "box_loss", "cls_loss", "dfl_loss", "lr", "epoch_s"}

    yolo.eval()
    y, _ = yolo(torch.rand(2, 3, SIZE, SIZE))
    assert y.shape[:2] == (2, 4 + 10) and torch.isfinite(y).all()

    test = digits_detect_dataset("test", size=SIZE, num_images=16, digit_sizes=(14, 40))
    metrics = evaluate_yolo_module(yolo, test, batch_size=8)
    for value in (metrics.map, metrics.map50, metrics.map75):
        assert math.isfinite(value) and 0.0 <= value <= 1.0
    assert metrics.num_images == 16 and metrics.num_targets >= 16
    assert yolo.training is False  # evaluate_yolo_module restores the mode it found


def test_bad_arguments_are_refused(yolo):
    data = digits_detect_dataset("train", size=SIZE, num_images=4)
    with pytest.raises(ValueError, match="epochs"):
        train_yolo_detector(yolo, data, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_yolo_detector(yolo, data, epochs=1, batch_size=0)


def test_loss_gains_come_from_model_args():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    model.args = {"box": 0.0, "cls": 1.0, "dfl": 0.0, "imgsz": 64}  # a dict, as in a loaded Ultralytics checkpoint
    data = digits_detect_dataset("train", size=64, num_images=4, digit_sizes=(12, 24))
    (epoch,) = train_yolo_detector(model, data, epochs=1, batch_size=4, threads=1, progress=False)["history"]
    assert epoch["box_loss"] == 0.0 and epoch["dfl_loss"] == 0.0 and epoch["cls_loss"] > 0.0
    assert model.args["box"] == 0.0  # left as it was
