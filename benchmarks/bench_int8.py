"""Pruned and INT8: unpruned FP32 -> pruned FP32 -> pruned INT8, on OpenVINO and onnxruntime.

    python benchmarks/bench_int8.py --threads 2 --output benchmarks/results/int8

Every stage is a bundle written by the library's export (``export_bundle``: BatchNorm folded,
parity checked), the INT8 one with ``precision="int8"``: NNCF for OpenVINO, static QDQ for
onnxruntime, each kept only if within the accuracy budget and at least 1.1x faster than FP32
on that runtime (the speed guard). What a runtime ships is what is timed here; where the guard
refused INT8, the "pruned INT8" row is FP32 and says so.

* ``resnet20_digits``: the zoo's CIFAR ResNet-20 trained on scikit-learn's digits (32x32),
  pruned to 50% of its FLOPs (defaults: L2, alignment for the runtime) and fine-tuned; INT8 with
  a 1-point accuracy budget, calibrated on 300 training images. Top-1 on the test split, measured
  on each runtime's artifact.
* ``resnet50`` and ``mobilenet_v2`` (torchvision, 224x224, random weights: only speed matters,
  BatchNorm statistics taken on digits images so that activations have a trained network's scale),
  pruned to 50% of their FLOPs, calibrated on 128 digits images upscaled to 224 (a real image
  distribution; accuracy is not measured). Their 1000 logits are nearly equal, so INT8 noise
  reorders them far more than a trained model's (top-1 agreement 77-80% at cosine 0.98 for
  ResNet-50): their INT8 parity is judged on the cosine alone, floor 0.9 (0.99 and top-1
  agreement 0.98 for the trained model); what was measured is in the results.

Per runtime and batch size (1 and 16), the three stages are timed in interleaved rounds in one
run (median of per-round ratios against unpruned FP32, bootstrap CI); runtime memory is each
session's peak resident-memory increase in a fresh process (``measure_memory``); size is the
artifact's files on disk. Threads are set explicitly, denormals flushed, onnxruntime's spinning
off (sessions take turns).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._env import collect_environment
from benchmarks._memory import measure_memory
from benchmarks._stats import paired_speedup
from benchmarks._timing import flush_denormals, interleaved, TimingConfig
from compressor.app import evaluate_classification, export_bundle, Int8Config, load_int8_data
from compressor.common.files import atomic_write_bytes
from compressor.graph import count_cost
from compressor.pruning import prune_model, PruneConfig, recalibrate_batchnorm_
from compressor.training import digits_dataset, train, TrainConfig
from models import create_model
from runtimes import BundleConfig, get_runtime, load_bundle, RUNTIME_TARGET, SessionConfig

SCHEMA_VERSION = 1
RUNTIMES = ("openvino", "onnxruntime")
BATCHES = (1, 16)
STAGES = ("unpruned_fp32", "pruned_fp32", "pruned_int8")
MODELS = {  # name: (zoo or torchvision spec, input size, trained on digits, calibration samples)
    "resnet20_digits": ("resnet20", (3, 32, 32), True, 300),
    "resnet50": ("torchvision:resnet50", (3, 224, 224), False, 128),
    "mobilenet_v2": ("torchvision:mobilenet_v2", (3, 224, 224), False, 128),
}
TIMING = {1: TimingConfig(warmup=5, min_runs=30, min_seconds=3.0, max_seconds=20.0),
          16: TimingConfig(warmup=2, min_runs=9, min_seconds=3.0, max_seconds=40.0)}


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _digits_model(threads: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """ResNet-20 trained on digits, and its 50%-FLOPs pruned copy fine-tuned."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    config = TrainConfig(epochs=8, batch_size=64, optimizer="adamw", lr=0.003, weight_decay=0.01, schedule="cosine",
                         seed=0, threads=threads)
    train(model, digits_dataset("train"), config, progress=False)
    pruned = prune_model(model.eval(), torch.randn(1, 3, 32, 32), PruneConfig(target_flops=0.5)).model
    train(pruned, digits_dataset("train"), TrainConfig(**{**config.to_dict(), "epochs": 4, "lr": 0.001}),
          progress=False)
    return model.eval(), pruned.eval()


def _speed_model(spec: str, size: tuple[int, ...]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Random weights with BatchNorm statistics taken on digits images: a freshly initialised network's
    activations shrink layer after layer (MobileNetV2's logits are ~1e-10), a scale no INT8 range
    represents and no trained model has; recalibrated, each layer's output is normalised as in a
    trained one. The pruned copy is recalibrated the same way."""
    torch.manual_seed(0)
    images = digits_dataset("train", size=size[-1])
    model = create_model(spec)
    recalibrate_batchnorm_(model, images, batches=8, batch_size=32)
    pruned = prune_model(model.eval(), torch.randn(1, *size), PruneConfig(target_flops=0.5)).model
    recalibrate_batchnorm_(pruned, images, batches=8, batch_size=32)
    return model.eval(), pruned.eval()


def _bundles(name: str, work: Path, threads: int) -> tuple[dict[str, Path], dict[str, Any]]:
    spec, size, trained, calib = MODELS[name]
    _say(f"{name}: building the models")
    unpruned, pruned = _digits_model(threads) if trained else _speed_model(spec, size)
    example = torch.randn(1, *size)
    flops = {"unpruned": count_cost(unpruned, example).flops, "pruned": count_cost(pruned, example).flops}
    config = BundleConfig(targets=("onnx", "openvino"), threads=threads)
    paths = {}
    for stage, model in (("unpruned_fp32", unpruned), ("pruned_fp32", pruned)):
        _say(f"{name}: exporting {stage}")
        paths[stage] = export_bundle(copy.deepcopy(model), work / stage, size, config).bundle.path
    # random weights: 1000 near-equal logits, whose order INT8 noise reshuffles; their top-1 agreement with
    # FP32 says nothing about a trained model's, so only the cosine is judged there (and stated in the results)
    floors = {} if trained else {"min_cosine": 0.9, "min_top1_agreement": 1e-9}
    int8_config = Int8Config(calib_data="digits", calib_samples=calib, max_accuracy_drop=0.01 if trained else None,
                             **floors)
    data = load_int8_data(int8_config, size)
    _say(f"{name}: exporting pruned_int8 (calibration {calib} samples)")
    paths["pruned_int8"] = export_bundle(pruned, work / "pruned_int8", size,
                                         BundleConfig(targets=("onnx", "openvino"), precision="int8", threads=threads),
                                         int8=(int8_config, data), progress=_say).bundle.path
    return paths, flops


def _artifact(bundle: Any, runtime: str) -> tuple[Path, str]:
    target = RUNTIME_TARGET[runtime]
    precision = bundle.manifest.get("artifact_precision", {}).get(target, bundle.manifest["precision"])
    return bundle.artifact(target), precision


def _disk_bytes(artifact: Path) -> int:
    """An artifact's files: the file and its side files (an IR's .bin, ONNX external weights)."""
    return sum(f.stat().st_size for f in artifact.parent.glob(artifact.stem + ".*") if f.is_file())


def _time(runtime: str, artifacts: dict[str, tuple[Path, str]], size: tuple[int, ...], batch: int,
          threads: int) -> dict[str, Any]:
    rt = get_runtime(runtime, allow_spinning=False) if runtime == "onnxruntime" else get_runtime(runtime)
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    with contextlib.ExitStack() as stack, flush_denormals():
        sessions = {stage: stack.enter_context(rt.load(path, SessionConfig(threads=threads, precision=precision)))
                    for stage, (path, precision) in artifacts.items()}
        samples = interleaved({stage: (lambda s=s: s.run(x)) for stage, s in sessions.items()}, TIMING[batch])
    cell: dict[str, Any] = {"rounds": len(samples["unpruned_fp32"])}
    for stage, ms in samples.items():
        cell[stage] = {"median_ms": float(np.median(ms))}
        if stage != "unpruned_fp32":
            stats = paired_speedup(samples["unpruned_fp32"], ms)
            cell[stage].update(speedup=stats.speedup_median, speedup_ci=list(stats.speedup_ci))
    return cell


def run_model(name: str, work: Path, threads: int, memory: bool) -> dict[str, Any]:
    _, size, trained, _ = MODELS[name]
    paths, flops = _bundles(name, work, threads)
    bundles = {stage: load_bundle(path) for stage, path in paths.items()}
    int8_manifest = bundles["pruned_int8"].manifest
    result: dict[str, Any] = {"input_size": list(size), "flops": flops,
                              "theoretical_speedup": flops["unpruned"] / flops["pruned"],
                              "int8": int8_manifest.get("int8"), "runtimes": {}}
    test = digits_dataset("test") if trained else None
    for runtime in RUNTIMES:
        artifacts = {stage: _artifact(b, runtime) for stage, b in bundles.items()}
        entry: dict[str, Any] = {"precision": {s: p for s, (_, p) in artifacts.items()},
                                 "disk_bytes": {s: _disk_bytes(path) for s, (path, _) in artifacts.items()},
                                 "batches": {}}
        if test is not None:
            entry["top1"] = {s: evaluate_classification(paths[s], test, runtime=runtime, threads=threads).top1
                             for s in STAGES}
        for batch in BATCHES:
            _say(f"{name}: timing {runtime} batch {batch}")
            cell = _time(runtime, artifacts, size, batch, threads)
            if memory:
                for stage, (path, precision) in artifacts.items():
                    mem = measure_memory(runtime, path, size, batch, threads=threads, runs=2, precision=precision)
                    cell[stage]["memory_bytes"] = mem.increase_bytes
            entry["batches"][str(batch)] = cell
        result["runtimes"][runtime] = entry
    return result


def render(results: dict[str, Any]) -> str:
    """The README's table: one row per model, runtime, batch and stage."""
    lines = ["| model | runtime | batch | stage | precision | latency ms (median) | speedup vs FP32 [CI] | "
             "top-1 | size MB | memory MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, model in results["models"].items():
        for runtime, entry in model["runtimes"].items():
            for batch, cell in entry["batches"].items():
                for stage in STAGES:
                    c = cell[stage]
                    speed = (f"{c['speedup']:.2f}x [{c['speedup_ci'][0]:.2f}, {c['speedup_ci'][1]:.2f}]"
                             if "speedup" in c else "1.00x")
                    top1 = f"{entry['top1'][stage]:.2%}" if "top1" in entry else "n/a"
                    mem = f"{c['memory_bytes'] / 2**20:.1f}" if c.get("memory_bytes") is not None else "n/a"
                    lines.append(f"| {name} | {runtime} | {batch} | {stage} | {entry['precision'][stage]} | "
                                 f"{c['median_ms']:.3f} | {speed} | {top1} | "
                                 f"{entry['disk_bytes'][stage] / 2**20:.2f} | {mem} |")
    lines += ["", "INT8 decisions (speed guard at batch 1, pruned model, INT8 against FP32 on the same runtime):", ""]
    for name, model in results["models"].items():
        for target, d in ((model.get("int8") or {}).get("targets") or {}).items():
            lines.append(f"- {name} / {target}: {d['decision']}: {d['reason']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes (a subprocess each)")
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "int8")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "threads": args.threads,
                               "environment": collect_environment(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            results["models"][name] = run_model(name, Path(tmp) / name, args.threads, not args.no_memory)
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.output / "results.json", json.dumps(results, indent=1, default=str).encode())
    table = render(results)
    atomic_write_bytes(args.output / "summary.md", table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
