"""Training and data: the training loop every strategy reuses, checkpoints, losses, accuracy
metrics (top-k, CMC/mAP) and the datasets the command line names (digits, folder, market).
"""
from __future__ import annotations

from compressor.training._data import DatasetError, MarketDataset, PKSampler, digits_dataset, image_folder_dataset, make_synthetic_market
from compressor.training._datasets import DataSpec, parse_data_spec
from compressor.training._detection import (DetectionMetrics, DigitsDetectDataset, detection_collate, detection_map,
                                           digits_detect_dataset, evaluate_yolo_module, train_yolo_detector,
                                           yolo_postprocess)
from compressor.training._loop import TrainCallbacks, TrainConfig, TrainResult, is_main_process, load_checkpoint_weights_, train
from compressor.training._checkpoint import CheckpointError
from compressor.training._losses import ReIDLoss, batch_hard_triplet_loss
from compressor.training._metrics import ReIDResult, evaluate_reid, module_top1, pairwise_distance, topk_accuracy

__all__ = [
    "CheckpointError", "DataSpec", "DatasetError", "DetectionMetrics", "DigitsDetectDataset", "MarketDataset", "PKSampler", "ReIDLoss",
    "ReIDResult", "TrainCallbacks", "TrainConfig", "TrainResult", "batch_hard_triplet_loss", "build_model",
    "digits_dataset", "evaluate_reid", "module_top1", "image_folder_dataset", "is_main_process", "load_checkpoint_weights_", "make_synthetic_market",
    "pairwise_distance", "parse_data_spec", "topk_accuracy", "train",
    "detection_collate", "detection_map", "digits_detect_dataset", "evaluate_yolo_module", "train_yolo_detector",
    "yolo_postprocess",
]
