"""The built-in pipeline steps: train, prune, finetune, fold, export, evaluate, bench, baselines.

Each step reads the run's state (the current model, the unpruned baseline, bundles ...), writes
its outputs in its own directory and returns the state entries it changes. Configs reuse the
library's own: a ``train``/``finetune`` step takes :class:`TrainConfig` keys, ``prune`` takes
:class:`PruneConfig` keys plus ``strategy`` (:class:`StrategyConfig`) and ``train`` (the
training phases), ``bench`` takes :class:`benchmarks.BenchConfig`-like keys.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from compressor.pruning import PruneConfig, prune_model, run_strategy, strategy_config_from_dict, StrategyConfig
from compressor.app.pipeline._base import PipelineError, register_step, StepContext, StepFailed
import compressor.app._alignment as _alignment
from compressor.training import (digits_detect_dataset, evaluate_yolo_module, parse_data_spec, train,
                                 train_yolo_detector, TrainConfig)
from models import CifarResNet, create_model, default_input_size
from compressor.deploy import ExportConfig, fold_batchnorm, load_model, save_model, SPEC_FILE
from pathlib import Path
from compressor.app._evaluate import evaluate_classification
from compressor.app._evaluate_detect import evaluate_detection
from compressor.app._model_entry import build_model
from compressor.criteria import get_criterion
from compressor.app._bundle import export_bundle, missing_runtimes, pruning_alignment
from compressor.app._int8 import Int8Config, load_int8_data
from runtimes import BundleConfig, list_runtimes, load_bundle, ParityError, TARGET_RUNTIME
from benchmarks import (BenchConfig, describe_failure, evaluate_gate, EXIT_MEASUREMENT_FAILED, failed_measurements,
                        format_table, load_budgets, parse_budgets, run_benchmark, TimingConfig, write_junit,
                        write_report)
import warnings
from compressor.graph import count_cost, deployable_module, network_view, part_rows
import json
import yaml
from compressor.app.pipeline._report import deployed_accuracy
from compressor.common.config import check_keys


def _split(raw: dict[str, Any], own: dict[str, Any], cls: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(own keys with defaults, the rest for ``cls``); an unknown key lists every allowed one.

    Parse errors are ValueErrors; ``load_pipeline`` puts the file and the step in front.
    """
    check_keys(raw, set(own) | ({f.name for f in dataclasses.fields(cls)} if cls else set()))
    mine = {k: raw.get(k, v) for k, v in own.items()}
    return mine, {k: v for k, v in raw.items() if k not in own}


def _one_epoch(raw: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {**raw, **{k: 1 for k in keys if k in raw or k == "epochs"}}


# ---- shared helpers ---------------------------------------------------------------------------


def _spec(ctx: StepContext, data: str | None, needed: bool = True):

    text = data or ctx.state.get("data") or ctx.pipeline.data
    if text is None:
        if needed:
            raise PipelineError(f"{ctx.pipeline.source}: step {ctx.step_name} needs data: set 'data' in the "
                                "pipeline or the step (digits, digits:0-4, folder:PATH)")
        return None
    return parse_data_spec(text, _input_size(ctx))


def _input_size(ctx: StepContext) -> tuple[int, ...]:
    if ctx.pipeline.input_size:
        return tuple(ctx.pipeline.input_size)
    if ctx.state.get("input_size"):
        return tuple(ctx.state["input_size"])

    return tuple(default_input_size(ctx.pipeline.model))


def _current(ctx: StepContext, key: str = "model") -> torch.nn.Module:
    """The state's model (or baseline); before any step made one, the pipeline's source model."""

    if ctx.state.get(key) or key not in ("model", "baseline_model"):
        return load_model(ctx.path(key))
    return _source_model(ctx)


def _source_model(ctx: StepContext) -> torch.nn.Module:
    """The pipeline's ``model``: a saved model directory, or a zoo model with seeded random weights."""

    if (Path(ctx.pipeline.model) / SPEC_FILE).is_file():
        return load_model(ctx.pipeline.model)

    torch.manual_seed(ctx.pipeline.seed)
    model = create_model(ctx.pipeline.model, **ctx.pipeline.model_args)
    ctx.log(f"    warning: {ctx.pipeline.model} has random weights here: latency and memory figures are real, "
            "accuracy figures are meaningless without trained weights")
    model.compressor_metadata = {"weights": {"origin": "random-init", "trained": False}}
    return model


def _save(ctx: StepContext, model: torch.nn.Module, name: str = "model", **metadata: Any) -> str:

    model.compressor_metadata = {**(getattr(model, "compressor_metadata", None) or {}),
                                 "input_size": list(_input_size(ctx)), **metadata}
    save_model(model.eval(), ctx.step_dir / name, arch=getattr(model, "zoo_spec", None))
    return ctx.output(name)


def _top1(model: Any, eval_set: Any, runtime: str | None = None, threads: int | None = None) -> float:

    return evaluate_classification(model, eval_set, runtime=runtime, threads=threads).top1


def _example(ctx: StepContext) -> torch.Tensor:
    return torch.randn(1, *_input_size(ctx), generator=torch.Generator().manual_seed(0))


# ---- detection (digits-detect, Ultralytics YOLO) ------------------------------------------------

DETECT_DATA = "digits-detect"


def _detecting(ctx: StepContext, data: str | None = None) -> bool:
    """Whether the step's data is a detection task (``digits-detect``)."""
    text = data or ctx.state.get("data") or ctx.pipeline.data
    return bool(text) and str(text).split(":", 1)[0] == DETECT_DATA


def _detect_sets(ctx: StepContext, data: str | None = None) -> tuple[Any, Any]:
    """digits-detect's train and test splits at the pipeline's input size (``digits-detect`` or
    ``digits-detect:TRAIN,TEST`` image counts)."""
    text = str(data or ctx.state.get("data") or ctx.pipeline.data)
    _, _, counts = text.partition(":")
    train_count = test_count = None
    if counts:
        try:
            train_count, test_count = (int(v) for v in counts.split(","))
        except ValueError:
            raise PipelineError(f"{ctx.pipeline.source}: step {ctx.step_name}: data {text!r}: expected "
                                f"{DETECT_DATA} or {DETECT_DATA}:TRAIN,TEST (image counts)") from None
    size = _input_size(ctx)
    if size[1] != size[2]:
        raise PipelineError(f"{ctx.pipeline.source}: {DETECT_DATA} canvases are square; input_size is {list(size)}")
    return (digits_detect_dataset("train", size=size[1], num_images=train_count),
            digits_detect_dataset("test", size=size[1], num_images=test_count))


def _fit_detector(config: "TrainStep", ctx: StepContext, model: torch.nn.Module, train_set: Any,
                  test_set: Any) -> dict[str, Any]:
    threads = config.train.threads or ctx.pipeline.threads
    history = train_yolo_detector(model, train_set, epochs=config.train.epochs, batch_size=config.train.batch_size,
                                  lr=config.train.lr, weight_decay=config.train.weight_decay, threads=threads,
                                  seed=config.train.seed or ctx.pipeline.seed, progress=ctx.progress)
    metrics = evaluate_yolo_module(model, test_set)
    ctx.log(f"    mAP@[.5:.95] {metrics.map:.3f}, mAP@0.5 {metrics.map50:.3f} on {len(test_set)} test images "
            f"({history['train_s']:.0f}s of training)")
    return {"epochs": history["epochs"], "map": metrics.map, "map50": metrics.map50, "train_seconds": history["train_s"],
            "final_loss": history["history"][-1]["loss"] if history["history"] else None,
            "data": config.data or ctx.state.get("data") or ctx.pipeline.data}


# ---- train / finetune -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainStep:
    train: TrainConfig
    data: str | None = None


def _parse_train(raw: dict[str, Any], where: str) -> TrainStep:
    own, rest = _split(raw, {"data": None}, TrainConfig)
    return TrainStep(TrainConfig.from_dict(rest), own["data"])


def _fit(config: TrainStep, ctx: StepContext, model: torch.nn.Module, train_set: Any, eval_set: Any) -> dict[str, Any]:

    threads = config.train.threads or ctx.pipeline.threads
    train_config = dataclasses.replace(config.train, threads=threads, seed=config.train.seed or ctx.pipeline.seed)
    result = train(model, train_set, train_config, output=ctx.step_dir / "checkpoints",
                   eval_fn=lambda m: {"top1": _top1(m, eval_set, threads=threads)}, progress=ctx.progress)
    return {"epochs": result.epochs_completed, "top1": result.final_metrics.get("top1"),
            "train_seconds": result.train_s, "data": config.data or ctx.state.get("data") or ctx.pipeline.data}


@register_step("train", _parse_train, quick=lambda raw: _one_epoch(raw, "epochs"))
def train_step(config: TrainStep, ctx: StepContext) -> dict[str, Any]:
    """Train the pipeline's model (from scratch, or continue the current one) on the data."""

    if _detecting(ctx, config.data):
        train_set, test_set = _detect_sets(ctx, config.data)
        if ctx.state.get("model"):
            model = _current(ctx)
        else:
            torch.manual_seed(ctx.pipeline.seed)
            model = create_model(ctx.pipeline.model, **ctx.pipeline.model_args)
        results = _fit_detector(config, ctx, model, train_set, test_set)
        input_size = list(_input_size(ctx))
    else:
        spec = _spec(ctx, config.data)
        train_set = spec.train_set()
        if ctx.state.get("model"):
            model = _current(ctx)
        else:
            torch.manual_seed(ctx.pipeline.seed)
            model, _ = build_model(ctx.pipeline.model, spec, train_set.num_classes, dict(ctx.pipeline.model_args))
        results = _fit(config, ctx, model, train_set, spec.eval_sets()[0])
        input_size = list(spec.input_size)
    path = _save(ctx, model, weights={"origin": f"pipeline {ctx.pipeline.name}: train on {results['data']}",
                                      "trained": True})
    updates = {"model": path, "input_size": input_size, "epochs_total":
               ctx.state.get("epochs_total", 0) + results["epochs"], "train_config": config.train.to_dict(),
               "results": results}
    if not ctx.state.get("pruned"):
        updates["baseline_model"] = path
    return updates


@register_step("finetune", _parse_train, quick=lambda raw: _one_epoch(raw, "epochs"))
def finetune_step(config: TrainStep, ctx: StepContext) -> dict[str, Any]:
    """Fine-tune the current model (after pruning, or on a target task before it)."""
    model = _current(ctx)
    if _detecting(ctx, config.data):
        results = _fit_detector(config, ctx, model, *_detect_sets(ctx, config.data))
    else:
        spec = _spec(ctx, config.data)
        results = _fit(config, ctx, model, spec.train_set(), spec.eval_sets()[0])
    path = _save(ctx, model, weights={"origin": f"pipeline {ctx.pipeline.name}: finetune on {results['data']}",
                                      "trained": True})
    updates = {"model": path, "epochs_total": ctx.state.get("epochs_total", 0) + results["epochs"],
               "results": results}
    if not ctx.state.get("pruned"):  # scenario 3: the unpruned model adapted to the target
        updates["baseline_model"] = path
    return updates


# ---- prune and fold ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneStep:
    prune: PruneConfig
    strategy: StrategyConfig
    train: TrainConfig
    data: str | None = None


def _parse_prune(raw: dict[str, Any], where: str) -> PruneStep:
    own, rest = _split(raw, {"data": None, "strategy": {}, "train": {}}, PruneConfig)
    for key in ("strategy", "train"):
        if not isinstance(own[key], dict):
            raise ValueError(f"'{key}' must be a mapping, got {own[key]!r}")
    strategy = dict(own["strategy"])  # flat options, as the CLI's --strategy-option takes them
    strategy = strategy_config_from_dict(strategy.pop("name", "oneshot"), strategy)
    return PruneStep(PruneConfig.from_dict(rest), strategy,
                     TrainConfig.from_dict({"epochs": 1, "lr": 0.01, "batch_size": 32, **own["train"]}), own["data"])


def _quick_prune(raw: dict[str, Any]) -> dict[str, Any]:
    strategy = dict(raw.get("strategy") or {})
    for key in ("finetune_epochs", "retrain_epochs", "epochs"):
        if key in strategy:
            strategy[key] = min(int(strategy[key]), 1)
    return {**raw, "strategy": strategy, "calib_batches": min(int(raw.get("calib_batches", 8)), 2)}


@register_step("prune", _parse_prune, quick=_quick_prune)
def prune_step(config: PruneStep, ctx: StepContext) -> dict[str, Any]:
    """Prune the current model physically with a criterion, a target and a strategy."""

    model = _current(ctx)
    trains = config.strategy.finetune_epochs or config.strategy.name != "oneshot"
    if _detecting(ctx, config.data):
        return _prune_detector(config, ctx, model, bool(trains))
    spec = _spec(ctx, config.data, needed=bool(trains or get_criterion(config.prune.criterion).needs_data))
    threads = config.train.threads or ctx.pipeline.threads
    train_config = dataclasses.replace(config.train, threads=threads, seed=config.train.seed or ctx.pipeline.seed)
    if threads:
        torch.set_num_threads(threads)
    eval_set = spec.eval_sets()[0] if spec else None
    # the alignment is probed with the threads the pipeline deploys with
    prune = config.prune if config.prune.threads else dataclasses.replace(config.prune, threads=threads)
    prune = _alignment.resolve_alignment(prune)  # round_to="auto": the deployment runtimes, probed
    result = run_strategy(model, _example(ctx), prune, config.strategy,
                          train_data=spec.train_set() if spec else None, eval_data=eval_set,
                          train_config=train_config, progress=ctx.progress)
    epochs = sum(p.get("epochs", 0) for p in result.history)
    top1 = _top1(result.model, eval_set, threads=threads) if spec else None
    path = _save(ctx, result.model)
    summary = {k: v for k, v in result.to_dict().items() if k != "recipe"}
    return {"model": path, "pruned": True, "epochs_total": ctx.state.get("epochs_total", 0) + epochs,
            "results": {**summary, "top1": top1, "criterion": config.prune.criterion,
                        "strategy": config.strategy.name, "target": list(config.prune.target),
                        "alignment": pruning_alignment(getattr(result.model, "compressor_metadata", None))}}


def _prune_detector(config: PruneStep, ctx: StepContext, model: torch.nn.Module, trains: bool) -> dict[str, Any]:
    """One-shot pruning of a whole detector (backbone, neck and heads); a finetune step trains it after."""
    if trains or get_criterion(config.prune.criterion).needs_data:
        raise PipelineError(f"{ctx.pipeline.source}: step {ctx.step_name}: a detector is pruned one-shot with a "
                            "weight criterion here; fine-tune it with a 'finetune' step after the prune step")
    threads = config.train.threads or ctx.pipeline.threads
    if threads:
        torch.set_num_threads(threads)
    prune = config.prune if config.prune.threads else dataclasses.replace(config.prune, threads=threads)
    prune = _alignment.resolve_alignment(prune)
    result = prune_model(model, _example(ctx), prune)
    view = network_view(result.model)
    parts = part_rows(view, [vars(layer) for layer in result.report.layers])
    for row in parts:
        ctx.log(f"    {row['part']}: {row['flops_before'] / 1e9:.3f} -> {row['flops_after'] / 1e9:.3f} GFLOPs")
    _, test_set = _detect_sets(ctx, config.data)
    metrics = evaluate_yolo_module(result.model, test_set)
    ctx.log(f"    before fine-tuning: mAP@0.5 {metrics.map50:.3f}")
    path = _save(ctx, result.model)
    return {"model": path, "pruned": True,
            "results": {"flops_ratio": result.report.flops_ratio, "params_ratio": result.report.params_ratio,
                        "flops_before": result.report.flops_before, "flops_after": result.report.flops_after,
                        "parts": parts, "map_before_finetune": metrics.map, "map50_before_finetune": metrics.map50,
                        "criterion": config.prune.criterion, "target": list(config.prune.target),
                        "alignment": pruning_alignment(getattr(result.model, "compressor_metadata", None))}}


def _parse_empty(raw: dict[str, Any], where: str) -> dict[str, Any]:
    _split(raw, {})
    return {}


@register_step("fold", _parse_empty)
def fold_step(config: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Fold every BatchNorm into the convolution before it (the deployed form)."""

    folded, report = fold_batchnorm(_current(ctx).eval(), _example(ctx))
    path = _save(ctx, folded)
    return {"model": path, "results": {"folded": len(report.folded), "kept": report.kept}}


# ---- export, evaluate, bench --------------------------------------------------------------------


@dataclass(frozen=True)
class ExportStep:
    to: tuple[str, ...] = ("onnx", "openvino", "torch")
    precision: str = "fp32"
    opset: int = 18
    exporter: str = "dynamo"
    batch_sizes: tuple[int, ...] = (1, 8)
    max_batch: int = 64
    baseline: bool = True
    # INT8 (precision: int8): calibration data (default: the pipeline's data) and the decisions' limits
    calib_data: str | None = None
    calib_samples: int = 300
    max_accuracy_drop: float | None = None
    min_int8_speedup: float = 1.1
    deploy_batch_size: int = 1


_INT8_KEYS = ("calib_data", "calib_samples", "max_accuracy_drop", "min_int8_speedup", "deploy_batch_size")


def _parse_export(raw: dict[str, Any], where: str) -> ExportStep:

    own, _ = _split(raw, {f.name: f.default for f in dataclasses.fields(ExportStep)})
    to = tuple(own["to"]) if isinstance(own["to"], (list, tuple)) else (own["to"],)
    bad = [t for t in to if t not in TARGET_RUNTIME]
    if bad or not to:
        raise ValueError(f"'to' has unknown target(s) {bad}; allowed: {sorted(TARGET_RUNTIME)}")
    if own["precision"] not in ("fp32", "fp16", "int8"):
        raise ValueError(f"'precision' must be 'fp32', 'fp16' or 'int8', got {own['precision']!r}")
    given = [k for k in _INT8_KEYS if k in raw]
    if own["precision"] != "int8" and given:
        raise ValueError(f"{given} apply to precision: int8, not {own['precision']}")
    sizes = tuple(own["batch_sizes"])
    if not sizes or not all(isinstance(b, int) and b >= 1 for b in sizes):
        raise ValueError(f"'batch_sizes' must be integers >= 1, got {own['batch_sizes']!r}")
    step = ExportStep(to, own["precision"], int(own["opset"]), own["exporter"], sizes, int(own["max_batch"]),
                      bool(own["baseline"]), **{k: own[k] for k in _INT8_KEYS})
    if step.precision == "int8":
        _int8_config(step, "digits")  # named errors for bad INT8 values now, not after training
    return step


def _int8_config(step: ExportStep, data: str) -> Int8Config:
    return Int8Config(calib_data=step.calib_data or data, calib_samples=step.calib_samples,
                      max_accuracy_drop=step.max_accuracy_drop, min_int8_speedup=step.min_int8_speedup,
                      guard_batch_size=step.deploy_batch_size)


def _quick_export(raw: dict[str, Any]) -> dict[str, Any]:
    quick = {**raw, "batch_sizes": [1, 2]}
    if raw.get("precision") == "int8":  # a smaller calibration set: the quick run checks the path, not the ranges
        quick["calib_samples"] = min(int(raw.get("calib_samples", 300)), 64)
    return quick


@register_step("export", _parse_export, quick=_quick_export)
def export_step(config: ExportStep, ctx: StepContext) -> dict[str, Any]:
    """Fold, export to ONNX and the runtimes, and verify each artifact's parity (pruned and baseline)."""

    missing = missing_runtimes(config.to)
    if missing:
        raise PipelineError("cannot export to " + "; ".join(f"{t}: {why}" for t, why in missing.items()))
    bundle_config = BundleConfig(targets=config.to, precision=config.precision, threads=ctx.pipeline.threads,
                                 batch_sizes=config.batch_sizes, max_batch=config.max_batch,
                                 opt_batch=min(8, config.max_batch))
    export_config = ExportConfig(opset=config.opset, exporter=config.exporter)
    updates: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    int8 = None
    if config.precision == "int8":
        int8_config = _int8_config(config, str(ctx.state.get("data") or ctx.pipeline.data))
        int8 = (int8_config, load_int8_data(int8_config, _input_size(ctx)))
    jobs = [("bundle", "model")]
    if config.baseline and ctx.state.get("pruned"):
        jobs.append(("baseline_bundle", "baseline_model"))
    for out_key, model_key in jobs:
        model = deployable_module(_current(ctx, model_key))  # a detector ships its deployable network
        # the baseline stays FP32: the unpruned FP32 model is what pruning and INT8 are measured against
        own_config = bundle_config if out_key == "bundle" else dataclasses.replace(bundle_config, precision="fp32")
        try:
            exported = export_bundle(model, ctx.step_dir / out_key, _input_size(ctx), own_config, export_config,
                                     source=ctx.state.get(model_key) or ctx.pipeline.model,
                                     weights=(model.compressor_metadata or {}).get("weights"),
                                     progress=lambda m, k=out_key: ctx.log(f"    {k.replace('_', ' ')}: {m}"),
                                     int8=int8 if out_key == "bundle" else None)
        except ParityError as exc:
            raise StepFailed(f"{out_key.replace('_', ' ')}: {exc} (the bundle is in {ctx.step_dir / out_key}, "
                             "the failure recorded in its manifest.json)", 3) from exc
        updates[out_key] = ctx.output(out_key)
        parity[out_key] = [{k: r[k] for k in ("runtime", "precision", "batch_size", "max_abs_error", "max_rel_error",
                                              "passed")}
                           for r in exported.bundle.parity]
        if exported.int8:
            for target, decision in exported.int8.items():
                ctx.log(f"    {target}: ships {decision.precision.upper()}: {decision.reason}")
    results: dict[str, Any] = {"parity": parity}
    if int8:
        manifest = json.loads((ctx.step_dir / "bundle" / "manifest.json").read_text())
        results["int8"] = {t: {k: v for k, v in d.items() if k != "speed"} | {"speedup": d["speed"].get("speedup")}
                           for t, d in manifest["int8"]["targets"].items()}
    return {**updates, "results": results}


@dataclass(frozen=True)
class EvaluateStep:
    runtimes: tuple[str, ...] | None = None
    data: str | None = None
    baseline: bool = True


def _parse_evaluate(raw: dict[str, Any], where: str) -> EvaluateStep:
    own, _ = _split(raw, {"runtimes": None, "data": None, "baseline": True})
    runtimes = own["runtimes"]
    if runtimes is not None:

        runtimes = tuple(runtimes) if isinstance(runtimes, (list, tuple)) else (runtimes,)
        bad = [r for r in runtimes if r not in list_runtimes()]
        if bad:
            raise ValueError(f"'runtimes' has unknown runtime(s) {bad}; allowed: {list_runtimes()}")
    return EvaluateStep(runtimes, own["data"], bool(own["baseline"]))


@register_step("evaluate", _parse_evaluate)
def evaluate_step(config: EvaluateStep, ctx: StepContext) -> dict[str, Any]:
    """Top-1 of the deployed bundles on each runtime (what ships), pruned and baseline."""

    if _detecting(ctx, config.data):
        return _evaluate_detector(config, ctx)
    eval_set = _spec(ctx, config.data).eval_sets()[0]
    results: dict[str, dict[str, float]] = {}
    for key, path, runtime in _bundles_to_evaluate(config, ctx):
        results.setdefault(key, {})[runtime] = _top1(path, eval_set, runtime=runtime, threads=ctx.pipeline.threads)
        ctx.log(f"    {key} on {runtime}: top-1 {results[key][runtime]:.2%}")
    return {"results": {"top1": results}}


def _bundles_to_evaluate(config: EvaluateStep, ctx: StepContext) -> list[tuple[str, Path, str]]:
    """``(state key, bundle path, runtime)`` for every bundle and runtime the step evaluates."""
    jobs = []
    keys = ["bundle"] + (["baseline_bundle"] if config.baseline and ctx.state.get("baseline_bundle") else [])
    for key in keys:
        path = ctx.path(key)
        available = [TARGET_RUNTIME[t] for t in load_bundle(path).manifest.get("artifacts", {}) if t in TARGET_RUNTIME]
        for runtime in config.runtimes or available:
            if runtime not in available:
                raise PipelineError(f"step {ctx.step_name}: the {key.replace('_', ' ')} has no {runtime} artifact "
                                    f"(it has {available}); add it to the export step's 'to'")
            jobs.append((key, path, runtime))
    return jobs


def _evaluate_detector(config: EvaluateStep, ctx: StepContext) -> dict[str, Any]:
    """COCO mAP of the deployed detector bundles on each runtime (decoded output, then NMS)."""
    _, test_set = _detect_sets(ctx, config.data)
    results: dict[str, dict[str, Any]] = {}
    for key, path, runtime in _bundles_to_evaluate(config, ctx):
        metrics = evaluate_detection(path, test_set, runtime=runtime, threads=ctx.pipeline.threads)
        results.setdefault(key, {})[runtime] = metrics.to_dict()
        ctx.log(f"    {key} on {runtime}: mAP@[.5:.95] {metrics.map:.3f}, mAP@0.5 {metrics.map50:.3f}")
    return {"results": {"map": results}}


@dataclass(frozen=True)
class BenchStep:
    runtimes: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] | None = None
    threads: int | None = None
    min_seconds: float = 2.0
    max_seconds: float = 20.0
    warmup: int = 3
    memory: bool = True


def _parse_bench(raw: dict[str, Any], where: str) -> BenchStep:
    own, _ = _split(raw, {f.name: f.default for f in dataclasses.fields(BenchStep)})
    for key in ("runtimes", "devices", "batch_sizes"):
        if own[key] is not None:
            own[key] = tuple(own[key]) if isinstance(own[key], (list, tuple)) else (own[key],)
    step = BenchStep(**own)
    _bench_config(step, None)  # BenchConfig's own validation, now
    return step


def _bench_config(step: BenchStep, threads: int | None) -> Any:

    return BenchConfig(runtimes=step.runtimes, devices=step.devices, batch_sizes=step.batch_sizes,
                       threads=step.threads or threads, memory=step.memory,
                       timing=TimingConfig(warmup=step.warmup, min_seconds=step.min_seconds,
                                           max_seconds=step.max_seconds))


@register_step("bench", _parse_bench, quick=lambda raw: {**raw, "batch_sizes": [1, 2], "min_seconds": 0.2,
                                                         "max_seconds": 1.0, "memory": False})
def bench_step(config: BenchStep, ctx: StepContext) -> dict[str, Any]:
    """Latency, throughput and memory of the pruned bundle against the baseline; the HTML/Markdown report."""

    baseline = ctx.path("baseline_bundle") if ctx.state.get("baseline_bundle") else None
    with warnings.catch_warnings():  # they are in the results; logged once below, without a traceback line
        warnings.simplefilter("ignore", RuntimeWarning)
        results = run_benchmark([ctx.path("bundle")], baseline, _bench_config(config, ctx.pipeline.threads),
                                progress=ctx.progress)
    for message in results["warnings"]:
        ctx.log(f"    warning: {message}")
    write_report(results, ctx.step_dir / "report")
    failed = failed_measurements(results, oom_is_failure=config.batch_sizes is not None)
    if failed:  # the report is kept; the run must not pass on measurements that did not happen
        raise StepFailed(f"{len(failed)} measurement(s) failed: " + "; ".join(describe_failure(r) for r in failed[:5])
                         + f" (report: {ctx.step_dir / 'report'}/summary.md)", EXIT_MEASUREMENT_FAILED)
    speedups = [{"runtime": r["runtime"], "device": r["device"], "batch_size": r["batch_size"],
                 "practical": (r["practical"] or {}).get("speedup_median"), "theoretical": r["theoretical"],
                 "efficiency": r["efficiency"], "precision": r.get("precision"),
                 "baseline_precision": r.get("baseline_precision"), "int8_factor": r.get("int8_factor")}
                for r in results["speedup"]]
    latency = [{"bundle": r["bundle"], "runtime": r["runtime"], "batch_size": r["batch_size"],
                "latency_ms_median": (r["stats"] or {}).get("latency_ms_median"),
                "throughput_sps": (r["stats"] or {}).get("throughput_sps")} for r in results["latency"]]
    return {"report": ctx.output("report"),
            "results": {"speedup": speedups, "latency": latency, "warnings": results["warnings"]}}


# ---- baselines ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselinesStep:
    thin: bool = True
    shallower: bool = True
    epochs: int | None = None  # default: every training epoch the pruned model had
    data: str | None = None
    train: dict[str, Any] = field(default_factory=dict)


def _parse_baselines(raw: dict[str, Any], where: str) -> BaselinesStep:
    own, _ = _split(raw, {f.name: (f.default if f.default is not dataclasses.MISSING else {})
                          for f in dataclasses.fields(BaselinesStep)})
    if own["epochs"] is not None and (not isinstance(own["epochs"], int) or own["epochs"] < 1):
        raise ValueError(f"'epochs' must be an integer >= 1, got {own['epochs']!r}")
    TrainConfig.from_dict({"epochs": 1, **own["train"]})
    return BaselinesStep(**own)


def _cifar_depth(name: str) -> int | None:
    depths = {"resnet20": 20, "resnet56": 56, "resnet110": 110}
    return depths.get(name)


@register_step("baselines", _parse_baselines, quick=lambda raw: {**raw, "epochs": 1})
def baselines_step(config: BaselinesStep, ctx: StepContext) -> dict[str, Any]:
    """ThinResNet (uniform width; "ThinResNet: A New Baseline for Structured Convolutional Networks
    Pruning") and a shallower ResNet at the pruned model's FLOPs, same budget."""

    name = ctx.pipeline.model
    spec = _spec(ctx, config.data)
    train_set, eval_set = spec.train_set(), spec.eval_sets()[0]
    classes = train_set.num_classes
    x = _example(ctx)
    pruned = _current(ctx)
    unpruned = _current(ctx, "baseline_model") if ctx.state.get("baseline_model") else None
    target = count_cost(pruned, x)
    original = count_cost(unpruned, x) if unpruned is not None else None
    channels = _input_size(ctx)[0]
    candidates: list[tuple[str, Any]] = []
    depth = _cifar_depth(name)
    if config.thin and (depth or name == "resnet50"):
        widths = range(2, 16) if depth else range(8, 64, 4)
        build = (lambda w: CifarResNet(depth, classes, width=w, in_chans=channels)) if depth else (
            lambda w: create_model("resnet50", num_classes=classes, width=w))
        best = _closest(widths, build, target.macs, x)
        candidates.append((f"ThinResNet ({name} width {best})", lambda: build(best)))
    if config.shallower and (depth or name == "resnet50"):
        if depth:
            depths = [d for d in range(8, depth, 6)]
            build_d = lambda d: CifarResNet(d, classes, in_chans=channels)  # noqa: E731
        else:
            depths = ["resnet18", "resnet34"]
            build_d = lambda d: create_model(f"torchvision:{d}", num_classes=classes)  # noqa: E731
        if depths:
            best_d = _closest(depths, build_d, target.macs, x)
            label = f"resnet{best_d}" if depth else best_d
            candidates.append((f"shallower ({label})", lambda: build_d(best_d)))
    if not candidates:
        ctx.log(f"    no width/depth family for {name!r}: baselines are built for resnet20/56/110 and resnet50")
    epochs = config.epochs or max(ctx.state.get("epochs_total", 1), 1)
    train_config = TrainConfig.from_dict({**(ctx.state.get("train_config") or {}), **config.train, "epochs": epochs})
    train_config = dataclasses.replace(train_config, threads=train_config.threads or ctx.pipeline.threads)
    rows = [{"model": "pruned", "macs": target.macs, "params": target.params,
             "top1": _top1(pruned, eval_set, threads=ctx.pipeline.threads), "epochs": ctx.state.get("epochs_total")}]
    if original:
        rows.insert(0, {"model": "unpruned", "macs": original.macs, "params": original.params,
                        "top1": _top1(unpruned, eval_set, threads=ctx.pipeline.threads),
                        "epochs": None})
    for label, make in candidates:
        torch.manual_seed(ctx.pipeline.seed)
        model = make()
        train(model, train_set, train_config, progress=ctx.progress)
        cost = count_cost(model, x)
        rows.append({"model": label, "macs": cost.macs, "params": cost.params,
                     "top1": _top1(model, eval_set, threads=ctx.pipeline.threads), "epochs": epochs})
        ctx.log(f"    {label}: top-1 {rows[-1]['top1']:.2%} at {cost.macs / target.macs:.2f}x the pruned MACs")
    base = original.macs if original else target.macs
    for row in rows:
        row["flops_ratio"] = row["macs"] / base
    return {"results": {"rows": rows, "epochs": epochs}}


def _closest(options: Any, build: Any, macs: float, x: torch.Tensor) -> Any:
    """The option whose model's MACs are closest to ``macs`` (log scale)."""

    return min(options, key=lambda o: abs(math.log(count_cost(build(o), x).macs / macs)))


# ---- gate ----------------------------------------------------------------------------------------


class GateFailed(StepFailed):
    """The gate step's verdict was not a pass; ``exit_code`` is the gate's (1 violated, 4 unmeasured)."""


@dataclass(frozen=True)
class GateStep:
    budgets: Any  # a file path, or the budgets mapping inline
    remeasure: bool = False


def _parse_gate(raw: dict[str, Any], where: str) -> GateStep:

    own, _ = _split(raw, {"budgets": None, "remeasure": False})
    budgets = own["budgets"]
    if isinstance(budgets, str):
        load_budgets(budgets)  # validated now: a wrong key fails before anything runs
    elif isinstance(budgets, dict):
        parse_budgets(yaml.safe_dump(budgets), "inline budgets")
    else:
        raise ValueError("'budgets' must be a budgets file path or an inline {confidence, rules} mapping")
    return GateStep(budgets, bool(own["remeasure"]))


@register_step("gate", _parse_gate)
def gate_step(config: GateStep, ctx: StepContext) -> dict[str, Any]:
    """Check the bench step's report (and the evaluate step's accuracy) against latency/accuracy budgets."""

    budgets = (load_budgets(config.budgets) if isinstance(config.budgets, str)
               else parse_budgets(yaml.safe_dump(config.budgets), "gate budgets"))
    results = json.loads((ctx.path("report") / "results.json").read_text())

    report = evaluate_gate(budgets, results, deployed_accuracy(ctx.state))
    junit = write_junit(report, ctx.run_dir / "gate-junit.xml")  # outside the step: kept when the gate fails
    for line in format_table(report).splitlines():
        ctx.log(f"    {line}")
    if report.exit_code:
        raise GateFailed(f"gate {report.verdict}: {len(report.failed)} failed, {len(report.unmeasured)} not measured "
                         f"(JUnit XML: {junit})", report.exit_code)
    return {"results": {"verdict": report.verdict, "checks": len(report.checks)}}


_STEP_KINDS = ("train", "prune", "finetune", "fold", "export", "evaluate", "bench", "baselines", "gate")
