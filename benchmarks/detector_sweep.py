"""Whole-detector coverage: every covered torchvision and Ultralytics detector pruned to 50% FLOPs.

Each detector is built with random weights (no download), pruned through its network view
(backbone, neck and heads together, every raw head output protected), and checked against the
masked oracle on the raw head outputs in eval mode. The table gives each part's FLOPs before
and after, the parity error, and whether the whole detector then runs (eval, with its own
post-processing, and one train-mode step with its own loss where it has one).

    python -m benchmarks.detector_sweep              # results in benchmarks/results/detectors/
    python -m benchmarks.detector_sweep --only yolov8n

FLOPs are per image at the network input given here (the R-CNN heads on the proposal counts of
the deployed model: the RPN's test-time post-NMS count for the box head, ``detections_per_img``
for the mask and keypoint heads). The parity runs on a few fixed proposals to stay quick.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from compressor.common.files import atomic_write_bytes
from compressor.graph import network_view, part_rows
from compressor.pruning import PruneConfig, prune_model
from compressor.testing import compare_with_oracle, prune_detector_with_oracle, randomize_
from models import create_model

SCHEMA_VERSION = 1
RESULTS = Path(__file__).resolve().parent / "results" / "detectors"
# (model name, network input (C, H, W) for the FLOPs, parity input side, view options for the parity run)
DETECTORS: list[tuple[str, tuple[int, int, int], int, dict[str, int]]] = [
    ("torchvision:fasterrcnn_mobilenet_v3_large_fpn", (3, 800, 800), 256, {"proposals": 16, "detections": 4}),
    ("torchvision:fasterrcnn_resnet50_fpn", (3, 800, 800), 192, {"proposals": 8, "detections": 4}),
    ("torchvision:retinanet_resnet50_fpn", (3, 800, 800), 192, {}),
    ("torchvision:fcos_resnet50_fpn", (3, 800, 800), 192, {}),
    ("torchvision:ssd300_vgg16", (3, 300, 300), 300, {}),
    ("torchvision:ssdlite320_mobilenet_v3_large", (3, 320, 320), 320, {}),
    ("torchvision:maskrcnn_resnet50_fpn", (3, 800, 800), 192, {"proposals": 8, "detections": 4}),
    ("torchvision:keypointrcnn_resnet50_fpn", (3, 800, 800), 192, {"proposals": 8, "detections": 2}),
    ("ultralytics:yolov8n.yaml", (3, 640, 640), 160, {}),
    ("ultralytics:yolo11n.yaml", (3, 640, 640), 160, {}),
]
CONFIG = PruneConfig(target_flops=0.5, criterion="l2", round_to=8)


def _build(name: str) -> torch.nn.Module:
    return randomize_(create_model(name)).eval()


def sweep_one(name: str, size: tuple[int, int, int], parity_side: int, options: dict[str, int]) -> dict[str, Any]:
    """One detector: FLOPs per part at the deployed size, parity on the raw outputs, whole-model runs."""
    row: dict[str, Any] = {"model": name, "network_input": list(size)}
    t0 = time.perf_counter()
    try:
        detector = _build(name)
        result = prune_model(detector, torch.rand(1, *size), CONFIG)  # the deployed proposal counts
        view = network_view(result.model)
        layers = [vars(layer) for layer in result.report.layers]
        row.update(flops_before=result.report.flops_before, flops_after=result.report.flops_after,
                   flops_ratio=result.report.flops_ratio, params_ratio=result.report.params_ratio,
                   parts=part_rows(view, layers), outputs=view.output_names(), family=view.family,
                   blocked=result.report.blocked)
        pruned, pruned_detector, inputs = prune_detector_with_oracle(
            detector, torch.rand(1, 3, parity_side, parity_side), CONFIG, **options)
        check = compare_with_oracle(pruned, inputs, flops=False)
        row.update(parity_ok=check.ok, parity_problems=list(check.problems),
                   parity_max_abs_error=check.parity.max_abs_err, parity_output_scale=check.parity.expected_max_abs)
        row["whole_model_runs"] = _runs_whole(pruned_detector, parity_side)
        row["status"] = "pruned" if check.ok and row["whole_model_runs"] == "ok" else "failed"
    except Exception as exc:  # noqa: BLE001  (a sweep records every failure by name)
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
    row["seconds"] = time.perf_counter() - t0
    return row


def _runs_whole(detector: torch.nn.Module, side: int) -> str:
    """Eval with the detector's own post-processing, then one train-mode backward pass."""
    images = [torch.rand(3, side, side), torch.rand(3, side, side)]
    with torch.no_grad():
        detector.eval()(images if not hasattr(detector, "yaml") else torch.stack(images))
    detector.train()
    if hasattr(detector, "yaml"):  # Ultralytics: the raw outputs in train mode
        raw = detector(torch.stack(images))
        loss = raw["boxes"].square().mean() + raw["scores"].square().mean()
    else:
        targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0]]), "labels": torch.tensor([1])}] * 2
        if getattr(getattr(detector, "roi_heads", None), "mask_roi_pool", None) is not None:
            masks = torch.zeros(1, side, side, dtype=torch.uint8)
            masks[0, 20:120, 10:90] = 1
            targets = [{**t, "masks": masks} for t in targets]
        if getattr(getattr(detector, "roi_heads", None), "keypoint_roi_pool", None) is not None:
            targets = [{**t, "keypoints": torch.tensor([[[50.0, 60.0, 1.0]] * 17])} for t in targets]
        loss = sum(detector(images, targets).values())
    loss.backward()
    detector.eval()
    return "ok" if torch.isfinite(loss) else f"train-mode loss is {float(loss)}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | network input | GFLOPs before → after | per part (kept) | parity (max abs err / output scale) "
             "| whole model: eval + train step |", "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['network_input']} | failed: {r['error'][:120]} | | | |")
            continue
        parts = ", ".join(f"{p['part']} {p['flops_after'] / p['flops_before']:.0%}" for p in r["parts"]
                          if p["flops_before"])
        lines.append(f"| {r['model']} | {'x'.join(map(str, r['network_input'][1:]))} | "
                     f"{r['flops_before'] / 1e9:.2f} → {r['flops_after'] / 1e9:.2f} ({r['flops_ratio']:.1%}) | {parts} | "
                     f"{'ok' if r['parity_ok'] else 'FAILED'} ({r['parity_max_abs_error']:.1e} / "
                     f"{r['parity_output_scale']:.1e}) | {r['whole_model_runs']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="substring of the model names to run (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # random weights produce denormals
    rows = []
    for name, size, side, options in DETECTORS:
        if args.only and not any(o in name for o in args.only):
            continue
        row = sweep_one(name, size, side, options)
        print(f"{name}: {row['status']} ({row['seconds']:.1f}s)" + (f" {row.get('error', '')}" if "error" in row else ""),
              flush=True)
        rows.append(row)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output / "results.json", json.dumps({"schema_version": SCHEMA_VERSION, "config": CONFIG.to_dict(),
                                                                 "threads": args.threads, "rows": rows}, indent=1).encode())
    atomic_write_bytes(args.output / "results.md", markdown(rows).encode())
    print(markdown(rows))
    return 0 if all(r["status"] == "pruned" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
