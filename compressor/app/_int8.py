"""INT8 for each runtime, kept only where it is accurate enough and measurably faster.

For every export target, :func:`quantize_targets` builds the FP32 artifact and an INT8 one from a
calibration set (onnxruntime: static QDQ; OpenVINO: NNCF; TensorRT: explicit Q/DQ; see
:mod:`runtimes._quantize`), then decides which one ships:

1. **Accuracy budget** (``max_accuracy_drop``): both artifacts are scored on the evaluation split
   *on the runtime itself*. Over budget, every quantized layer's sensitivity is measured as in
   NNCF's accuracy control: the INT8 model is rebuilt with that layer alone in FP32 and the
   error of its logits against FP32's is taken on a ranking subset. The most sensitive layers
   go back to FP32, the smallest such set that holds the budget (doubling, then bisection),
   until the budget holds or every layer is FP32, in which case FP32 ships.
2. **Parity floors**: INT8 must agree with FP32 on held-out samples (mean cosine, top-1
   agreement: the floors the bundle's parity check applies); below them FP32 ships.
3. **Speed guard** (``min_int8_speedup``): INT8 and FP32 are timed interleaved on the runtime at
   the deployment batch size (median of per-round ratios, bootstrap CI). INT8 ships only if it
   is at least that much faster; the idea is ModelOpt's, which keeps a quantization only when it
   pays.

Every decision, its figures and the layers kept in FP32 with their reason go to the manifest.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import flush_denormals, interleaved, paired_speedup, TimingConfig
from compressor.common.config import JsonConfig
from compressor.common.errors import CompressorError
from compressor.training import DatasetError, digits_detect_dataset, parse_data_spec
from runtimes import (CALIBRATION_METHODS, Calibration, check_calibration, compare, get_runtime,
                      quantizable_layers, SessionConfig, TARGET_RUNTIME)

__all__ = ["Int8Config", "Int8Data", "Int8Error", "TargetDecision", "load_int8_data", "quantize_targets"]

MIN_CALIBRATION_SAMPLES = 32  # fewer gives ranges from a handful of images: a calibration, not a measurement
RANKING_SAMPLES = 128  # the subset the per-layer sensitivity is measured on
GUARD_TIMING = TimingConfig(warmup=5, min_runs=20, min_seconds=1.0, max_seconds=6.0)
INT8_TARGETS = ("onnx", "openvino", "tensorrt")

# (fp32 session, int8 session, batch) -> {"fp32_ms_median", "int8_ms_median", "speedup", "speedup_ci", "rounds"}
SpeedMeasure = Callable[[Any, Any, np.ndarray], dict[str, Any]]


class Int8Error(CompressorError, ValueError):
    """Bad INT8 options or calibration data; the message names the flag, spec or file."""


@dataclass(frozen=True)
class Int8Config(JsonConfig):
    """How an INT8 export calibrates, what accuracy it may lose and what speedup it must bring.

    Args:
        calib_data: a data spec: ``digits``, ``digits:0-4``, ``folder:PATH``, ``digits-detect``,
            or ``npy:FILE`` (an array ``(N, C, H, W)`` of preprocessed float inputs).
        calib_samples: calibration samples (default 300, NNCF's default subset size).
        calib_method: onnxruntime's calibrator: ``minmax``, ``entropy`` or ``percentile``.
        max_accuracy_drop: top-1 (a fraction) INT8 may lose against FP32 on the evaluation
            split, measured on each runtime; None: not measured.
        min_int8_speedup: INT8 ships only if at least this much faster than FP32 (1.1).
        guard_batch_size: the deployment batch size the speed guard times at.
        min_cosine, min_top1_agreement: the INT8 parity floors against the FP32 model.
        held_out_samples: evaluation-split samples the parity check runs on.
        seed: picks the calibration subset.
    """

    calib_data: str = "digits"
    calib_samples: int = 300
    calib_method: str = "minmax"
    max_accuracy_drop: float | None = None
    min_int8_speedup: float = 1.1
    guard_batch_size: int = 1
    min_cosine: float = 0.99
    min_top1_agreement: float = 0.98
    held_out_samples: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calib_samples < MIN_CALIBRATION_SAMPLES:
            raise Int8Error(f"--calib-samples must be at least {MIN_CALIBRATION_SAMPLES}, got {self.calib_samples}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise Int8Error(f"--calib-method must be one of {sorted(CALIBRATION_METHODS)}, got {self.calib_method!r}")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop < 1:
            raise Int8Error(f"--max-accuracy-drop is a fraction of top-1 in [0, 1), e.g. 0.01; "
                            f"got {self.max_accuracy_drop}")
        if not self.min_int8_speedup > 0:
            raise Int8Error(f"--min-int8-speedup must be positive, got {self.min_int8_speedup}")
        if self.guard_batch_size < 1 or self.held_out_samples < 1:
            raise Int8Error("the guard's batch size and the held-out sample count must be positive")
        for name in ("min_cosine", "min_top1_agreement"):
            if not 0 < getattr(self, name) <= 1:
                raise Int8Error(f"{name} must be in (0, 1], got {getattr(self, name)}")

    @property
    def floors(self) -> dict[str, float]:
        return {"cosine": self.min_cosine, "top1_agreement": self.min_top1_agreement}


@dataclass
class Int8Data:
    """The calibration set, and the labelled evaluation split (None where the data has no labels
    for a top-1: detection, a .npy file) whose first samples also serve as held-out parity inputs."""

    calibration: Calibration
    eval_x: np.ndarray
    eval_y: np.ndarray | None


@dataclass
class TargetDecision:
    """What ships for one export target, and why."""

    target: str
    precision: str  # "int8" or "fp32"
    reason: str
    artifact: Path
    accuracy: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    fp32_layers: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.precision, "reason": self.reason, "accuracy": self.accuracy, "speed": self.speed,
                "fp32_layers": self.fp32_layers}


# ---------------------------------------------------------------------------------------- data


def _stack(dataset: Any, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    images, labels = [], []
    for i in indices:
        item = dataset[int(i)]
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
        images.append(np.asarray(image.numpy() if isinstance(image, torch.Tensor) else image, dtype=np.float32))
        labels.append(label)
    y = None if any(not isinstance(v, (int, np.integer, torch.Tensor)) or (isinstance(v, torch.Tensor) and v.ndim)
                    for v in labels) else np.asarray([int(v) for v in labels])
    return np.stack(images), y


def _subset(n: int, want: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n)[:want])


def load_int8_data(config: Int8Config, input_size: Sequence[int]) -> Int8Data:
    """Calibration samples from the spec's training split (a seeded subset), the evaluation split.

    Raises:
        Int8Error: an unknown spec, a missing file, too few samples, or samples whose shape is
            not the model's input.
    """
    spec, want = config.calib_data, config.calib_samples
    kind, _, rest = spec.partition(":")
    size = tuple(int(v) for v in input_size)
    try:
        if kind == "npy":
            return _npy_data(Path(rest), config, size)
        if kind == "digits-detect":
            train, test = (digits_detect_dataset(split, size=size[-1]) for split in ("train", "test"))
        else:
            data = parse_data_spec(spec, size)
            if data.task != "classification":
                raise Int8Error(f"--calib-data {spec}: INT8 calibrates on classification or detection images; "
                                f"{data.kind} is a re-identification set")
            train, test = data.train_set(), data.eval_sets()[0]
    except DatasetError as err:
        raise Int8Error(f"--calib-data {spec}: {err}") from None
    if len(train) < want:
        raise Int8Error(f"--calib-data {spec} has {len(train)} training samples; --calib-samples asks for {want}. "
                        f"Lower --calib-samples (at least {MIN_CALIBRATION_SAMPLES}) or give more data")
    x, _ = _stack(train, _subset(len(train), want, config.seed))
    eval_x, eval_y = _stack(test, range(len(test)))
    if kind == "digits-detect":
        eval_y = None
    return Int8Data(_calibration(x, config, spec, size), eval_x, eval_y)


def _npy_data(path: Path, config: Int8Config, size: tuple[int, ...]) -> Int8Data:
    """``npy:FILE``: calibration samples the user preprocessed; no labels, so no accuracy budget.
    Loaded without pickle (a .npy of objects is refused)."""
    if not path.is_file():
        raise Int8Error(f"--calib-data npy:{path}: file not found")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise Int8Error(f"--calib-data npy:{path}: not a numeric .npy array ({err})") from None
    if array.ndim != len(size) + 1 or array.dtype.kind not in "fiu":
        raise Int8Error(f"--calib-data npy:{path} holds an array of shape {array.shape} ({array.dtype}); "
                        f"expected (N, {', '.join(map(str, size))}) floats")
    if len(array) < config.calib_samples:
        raise Int8Error(f"--calib-data npy:{path} has {len(array)} samples; --calib-samples asks for "
                        f"{config.calib_samples}")
    chosen = _subset(len(array), config.calib_samples, config.seed)
    x = array[chosen].astype(np.float32)
    held = array[np.setdiff1d(np.arange(len(array)), chosen)]
    return Int8Data(_calibration(x, config, f"npy:{path}", size), (held if len(held) else x).astype(np.float32), None)


def _calibration(x: np.ndarray, config: Int8Config, spec: str, size: tuple[int, ...]) -> Calibration:
    if tuple(x.shape[1:]) != size:
        raise Int8Error(f"--calib-data {spec} gives samples of shape {tuple(x.shape[1:])}; the model takes {size}")
    return Calibration(x, config.calib_method, (), spec)


# ------------------------------------------------------------------------------------- deciding


class _Target:
    """One target's runtime, its FP32 artifact, and INT8 builds on demand."""

    def __init__(self, target: str, onnx_path: Path, work: Path, threads: int | None, build: dict[str, Any]):
        self.target, self.onnx_path, self.work, self.threads, self.build_args = target, onnx_path, work, threads, build
        self.runtime_name = TARGET_RUNTIME[target]
        self.device = "cuda" if target == "tensorrt" else "cpu"
        # sessions take turns in the guard: onnxruntime's spinning pool would slow the other one
        options = {"allow_spinning": False} if self.runtime_name == "onnxruntime" else {}
        self.runtime = get_runtime(self.runtime_name, **options)
        self.fp32 = self.runtime.build(onnx_path, work / f"{target}-fp32", precision="fp32", **build)
        self._builds = 0

    def int8(self, calibration: Calibration) -> Path:
        self._builds += 1
        return self.runtime.build(self.onnx_path, self.work / f"{self.target}-int8-{self._builds}",
                                  precision="int8", calibration=calibration, **self.build_args)

    def open(self, artifact: Path, precision: str) -> Any:
        return self.runtime.load(artifact, SessionConfig(device=self.device, threads=self.threads,
                                                         precision=precision))

    def outputs(self, artifact: Path, precision: str, x: np.ndarray, batch: int = 64) -> np.ndarray:
        with self.open(artifact, precision) as session:
            return np.concatenate([session.run(x[i:i + batch]) for i in range(0, len(x), batch)])


def _top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())


def _rank_layers(t: _Target, calibration: Calibration, layers: list[str], x: np.ndarray, reference: np.ndarray,
                 all_int8: np.ndarray, progress: Callable[[str], None]) -> list[tuple[str, float]]:
    """``(layer, error reduction)`` by how much keeping that layer alone in FP32 brings the INT8
    logits closer to FP32's (``reference``; mean squared error on ``x``), most sensitive first.
    ``all_int8``: the fully quantized model's logits on ``x``, the error to reduce."""
    def error(out: np.ndarray) -> float:
        return float(np.mean((out - reference) ** 2))

    base = error(all_int8)
    gains = []
    for i, layer in enumerate(layers):
        progress(f"{t.target}: sensitivity of layer {i + 1}/{len(layers)} ({layer})")
        alone = error(t.outputs(t.int8(calibration.with_exclude((layer,))), "int8", x))
        gains.append((layer, (base - alone) / base if base > 0 else 0.0))
    return sorted(gains, key=lambda g: -g[1])


def _hold_budget(t: _Target, data: Int8Data, config: Int8Config, fp32_out: np.ndarray, int8_out: np.ndarray,
                 progress: Callable[[str], None]) -> tuple[Path | None, np.ndarray | None, list[dict[str, Any]], int]:
    """Move the most sensitive layers to FP32 until the drop holds the budget.

    ``fp32_out``, ``int8_out``: the FP32 and the fully quantized model's logits on the evaluation
    split. Returns ``(artifact, its logits on the evaluation split, the layers kept in FP32 with
    their reason, the number of layers)``; artifact and logits are None when every layer had to go back.
    """
    layers = quantizable_layers(t.onnx_path)
    fp32_top1 = _top1(fp32_out, data.eval_y)
    rank = slice(0, RANKING_SAMPLES)
    ranked = _rank_layers(t, data.calibration, layers, data.eval_x[rank], fp32_out[rank], int8_out[rank], progress)
    tried: dict[int, tuple[Path, np.ndarray]] = {}

    def attempt(k: int) -> bool:
        exclude = tuple(layer for layer, _ in ranked[:k])
        artifact = t.int8(data.calibration.with_exclude(exclude))
        tried[k] = (artifact, t.outputs(artifact, "int8", data.eval_x))
        top1 = _top1(tried[k][1], data.eval_y)
        progress(f"{t.target}: {k} layer(s) in FP32 -> top-1 {top1:.2%} (FP32 {fp32_top1:.2%})")
        return fp32_top1 - top1 <= config.max_accuracy_drop

    lo, k = 0, 1  # attempt(lo) failed (lo = 0: the full INT8 model, measured before)
    while not attempt(k):
        if k >= len(layers) - 1:
            return None, None, [], len(layers)
        lo, k = k, min(2 * k, len(layers) - 1)
    while k - lo > 1:
        mid = (lo + k) // 2
        lo, k = (lo, mid) if attempt(mid) else (mid, k)
    artifact, outputs = tried[k]
    kept = [{"layer": layer, "rank": i + 1, "why": f"keeping it alone in FP32 removes {gain:.0%} of the INT8 "
             f"output error (sensitivity rank {i + 1} of {len(layers)})"} for i, (layer, gain) in enumerate(ranked[:k])]
    return artifact, outputs, kept, len(layers)


def measure_speed(fp32_session: Any, int8_session: Any, x: np.ndarray,
                  timing: TimingConfig = GUARD_TIMING) -> dict[str, Any]:
    """INT8 against FP32, interleaved rounds on one runtime: medians and the paired speedup."""
    with flush_denormals():
        samples = interleaved({"fp32": lambda: fp32_session.run_all(x), "int8": lambda: int8_session.run_all(x)},
                              timing)
    stats = paired_speedup(samples["fp32"], samples["int8"])
    return {"fp32_ms_median": float(np.median(samples["fp32"])), "int8_ms_median": float(np.median(samples["int8"])),
            "speedup": stats.speedup_median, "speedup_ci": list(stats.speedup_ci), "rounds": stats.rounds}


def _decide(t: _Target, data: Int8Data, config: Int8Config, progress: Callable[[str], None],
            measure: SpeedMeasure) -> TargetDecision:
    progress(f"{t.target}: building INT8 ({len(data.calibration.samples)} calibration samples)")
    artifact = t.int8(data.calibration)
    # every comparison below is on a prefix of the evaluation split: each artifact runs over it once
    budget = config.max_accuracy_drop is not None
    x = data.eval_x if budget else data.eval_x[:config.held_out_samples]
    fp32_out, int8_out = t.outputs(t.fp32, "fp32", x), t.outputs(artifact, "int8", x)
    accuracy: dict[str, Any] = {}
    kept: list[dict[str, Any]] = []
    if budget:
        fp32_top1, int8_top1 = _top1(fp32_out, data.eval_y), _top1(int8_out, data.eval_y)
        accuracy = {"metric": "top1", "samples": int(len(data.eval_x)), "fp32": fp32_top1, "int8_all_layers": int8_top1,
                    "budget": config.max_accuracy_drop}
        if fp32_top1 - int8_top1 > config.max_accuracy_drop:
            progress(f"{t.target}: INT8 loses {fp32_top1 - int8_top1:.2%} top-1 (budget "
                     f"{config.max_accuracy_drop:.2%}); ranking layers by sensitivity")
            artifact, int8_out, kept, count = _hold_budget(t, data, config, fp32_out, int8_out, progress)
            if artifact is None:
                accuracy.update({"int8": None, "drop": None})
                return TargetDecision(t.target, "fp32", f"accuracy budget: INT8 loses more than "
                                      f"{config.max_accuracy_drop:.2%} top-1 until all {count} layers are FP32; "
                                      "FP32 ships", t.fp32, accuracy)
            int8_top1 = _top1(int8_out, data.eval_y)
        accuracy.update({"int8": int8_top1, "drop": fp32_top1 - int8_top1})
    # the floors the bundle's own parity check will demand: below them, INT8 is not shipped on this runtime
    held = slice(0, config.held_out_samples)
    agreement = compare(fp32_out[held], int8_out[held], runtime=t.runtime_name, device=t.device, precision="int8",
                        floors=config.floors)
    if not agreement.passed:
        return TargetDecision(t.target, "fp32", f"parity floor: INT8 {agreement.describe()}; FP32 ships", t.fp32,
                              accuracy, {}, kept)
    x = data.eval_x[:config.guard_batch_size]
    if len(x) < config.guard_batch_size:
        x = np.resize(data.eval_x, (config.guard_batch_size, *data.eval_x.shape[1:])).astype(np.float32)
    progress(f"{t.target}: timing INT8 against FP32 at batch {config.guard_batch_size}")
    with contextlib.ExitStack() as stack:
        fp32_session = stack.enter_context(t.open(t.fp32, "fp32"))
        int8_session = stack.enter_context(t.open(artifact, "int8"))
        speed = {**measure(fp32_session, int8_session, x), "runtime": t.runtime_name, "device": t.device,
                 "batch_size": config.guard_batch_size, "threads": t.threads,
                 "min_int8_speedup": config.min_int8_speedup}
    figures = (f"{speed['speedup']:.2f}x ({speed['fp32_ms_median']:.3f} ms FP32 -> {speed['int8_ms_median']:.3f} ms "
               f"INT8, batch {config.guard_batch_size})")
    if speed["speedup"] < config.min_int8_speedup:
        return TargetDecision(t.target, "fp32", f"speed guard: INT8 is only {figures} on {t.runtime_name}, under "
                              f"the required {config.min_int8_speedup:g}x; FP32 ships", t.fp32, accuracy, speed, kept)
    why = f"INT8 is {figures} on {t.runtime_name}"
    if accuracy:
        why += f", top-1 {accuracy['int8']:.2%} against FP32 {accuracy['fp32']:.2%}"
    return TargetDecision(t.target, "int8", why + (f", {len(kept)} layer(s) kept in FP32" if kept else ""),
                          artifact, accuracy, speed, kept)


def quantize_targets(onnx_path: Path, targets: Sequence[str], data: Int8Data, config: Int8Config, work: Path, *,
                     threads: int | None = None, build: dict[str, Any] | None = None,
                     progress: Callable[[str], None] | None = None,
                     measure: SpeedMeasure = measure_speed) -> dict[str, TargetDecision]:
    """Decide, for each INT8-capable target, whether INT8 or FP32 ships (see the module docstring).

    Args:
        onnx_path: the exported (folded) FP32 model.
        targets: export targets; ``torch`` is skipped (it ships FP32).
        data: from :func:`load_int8_data`.
        work: a scratch directory for the candidate artifacts.
        build: the batch range passed to ``Runtime.build`` (TensorRT's profile).
        measure: the speed guard's timer (tests pass a fake one).

    Raises:
        Int8Error: an accuracy budget without labelled evaluation data; calibration samples that
            do not fit the model.
    """
    say = progress or (lambda message: None)
    if config.max_accuracy_drop is not None and data.eval_y is None:
        raise Int8Error(f"--max-accuracy-drop needs labelled evaluation data for a top-1; --calib-data "
                        f"{config.calib_data} has none")
    try:
        check_calibration(onnx_path, data.calibration)
    except ValueError as err:
        raise Int8Error(f"--calib-data {config.calib_data}: {err}") from None
    decisions = {}
    for target in targets:
        if target in INT8_TARGETS:
            t = _Target(target, Path(onnx_path), Path(work), threads, build or {})
            decisions[target] = _decide(t, data, config, say, measure)
    return decisions
