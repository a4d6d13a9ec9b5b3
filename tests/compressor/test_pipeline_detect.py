"""The YOLOv8n detection pipeline end to end (quick mode, tiny data) and mAP on the deployed artifact."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from compressor.app import evaluate_detection
from compressor.app.pipeline._base import PipelineError
from compressor.app.pipeline._core import load_pipeline, run_pipeline
from compressor.training import digits_detect_dataset

os.environ.setdefault("YOLO_OFFLINE", "1")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "yolov8n_digits_detect.yaml"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    threads = torch.get_num_threads()
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.update(data="digits-detect:48,24", input_size=[3, 96, 96])
    run = run_pipeline(load_pipeline(raw, quick=True), tmp_path_factory.mktemp("run") / "yolo", progress=False,
                       log=lambda message: None)
    torch.set_num_threads(threads)
    return run


def test_example_pipeline_trains_prunes_finetunes_exports_evaluates_and_benchmarks(quick_run):
    steps = [name.split("_", 1)[1] for name in quick_run.executed]
    assert steps == ["train", "prune", "finetune", "fold", "export", "evaluate", "bench"]
    results = quick_run.state["results"]
    prune = results["02_prune"]
    assert 0.4 < prune["flops_ratio"] < 0.6
    assert {p["part"] for p in prune["parts"]} == {"backbone", "neck (FPN/PAN)", "Detect head"}
    assert all(p["flops_after"] < p["flops_before"] for p in prune["parts"])
    deployed = results["06_evaluate"]["map"]
    assert set(deployed) == {"bundle", "baseline_bundle"}
    for by_runtime in deployed.values():
        assert set(by_runtime) == {"onnxruntime", "openvino"}
        for metrics in by_runtime.values():
            assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0 and metrics["num_images"] == 24
    speedups = results["07_bench"]["speedup"]
    assert {row["runtime"] for row in speedups} == {"onnxruntime", "openvino"}
    assert all(row["practical"] and row["practical"] > 0 for row in speedups)
    summary = (quick_run.run_dir / "summary.md").read_text()
    assert "Deployed map" in summary or "Deployed mAP" in summary


def test_bundle_on_onnxruntime_scores_what_the_module_scores(quick_run):
    """The mAP of the exported bundle equals the module's: same decoded boxes, same NMS, same COCOeval."""
    bundle = quick_run.run_dir / quick_run.state["bundle"]
    from compressor.deploy import load_model

    model = load_model(quick_run.run_dir / quick_run.state["model"])
    data = digits_detect_dataset("test", size=96, num_images=24)
    on_torch = evaluate_detection(model, data, conf=0.001)
    on_ort = evaluate_detection(bundle, data, runtime="onnxruntime", conf=0.001)
    assert on_torch.num_detections > 0  # random-ish detections exist, so the comparison is not vacuous
    assert on_ort.num_detections == on_torch.num_detections
    assert on_ort.map == pytest.approx(on_torch.map, abs=1e-6)
    assert on_ort.map50 == pytest.approx(on_torch.map50, abs=1e-6)


def test_detection_data_spec_is_checked():
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["data"] = "digits-detect:many"
    with pytest.raises(PipelineError, match="digits-detect:TRAIN,TEST"):
        load_pipeline(raw)


def test_detector_prune_step_refuses_a_training_strategy(tmp_path):
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.update(data="digits-detect:8,8", input_size=[3, 64, 64],
               steps=[{"prune": {"criterion": "l2", "target_flops": 0.5,
                                 "strategy": {"name": "oneshot", "finetune_epochs": 1}}}])
    with pytest.raises(PipelineError, match="finetune"):
        run_pipeline(load_pipeline(raw), tmp_path / "r", progress=False, log=lambda message: None)
