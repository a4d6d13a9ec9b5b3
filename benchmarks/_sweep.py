"""The benchmark sweep: bundles x runtimes x devices x batch sizes -> a results dict.

For each device and runtime, one session per bundle (the baseline and each candidate) is opened
once; then, for each batch size, every session is warmed up at that shape and all of them are
timed in interleaved rounds (AB, BA, AB, ... see :func:`benchmarks._timing.interleaved`). Each
round gives one latency per bundle, so the same samples serve as every bundle's latency
distribution and as the pairs of the practical speedup (median of per-round ratios), which is
judged against the FLOPs ratio (:func:`benchmarks._speed_verdict.speed_verdict`). Memory is
measured afterwards, one fresh subprocess per runtime x batch size x bundle
(:func:`benchmarks._memory.measure_memory`), next to the theoretical TRM = MPS + FM * 4 * BS.

Precision is a dimension of every row: by default (``precision="auto"``) each bundle's artifact
is opened at the precision it computes in (an INT8 bundle may ship an FP32 artifact for a runtime
whose INT8 one was refused; :mod:`benchmarks._precision`), so a candidate may be INT8 where its
baseline is FP32. Its speedup row then carries the INT8 factor its export measured, and its
efficiency and speed verdict are judged against FLOPs ratio x INT8 factor.

The latency of one call is what a deployed numpy-in, numpy-out call costs: on a GPU it includes
copying the input to the device and the outputs back. Every output is fetched
(``Session.run_all``): a detector's several head outputs are all part of its inference.

The results dict follows ``benchmarks/results.schema.json``; :func:`benchmarks._report.write_report`
turns it into the report directory. Ctrl-C stops the sweep between measurements and returns what
was measured so far, marked ``"interrupted": true``.
"""
from __future__ import annotations

import dataclasses
import datetime
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks._env import available_cores, collect_environment
from benchmarks._precision import (applied_int8_factor, artifact_precision, DEFAULT_PRECISION, int8_by_runtime,
                                   manifest_accuracy, precision_problem, REQUESTS)
from benchmarks._records import check_known_keys
from benchmarks._speed_verdict import speed_verdict
from benchmarks._stats import efficiency, paired_speedup, summarize
from benchmarks._timing import has_subnormals, interleaved, TimingConfig
from runtimes import BundleError, get_runtime, list_runtimes, load_bundle, RUNTIME_TARGET, SessionConfig
from benchmarks._memory import is_out_of_memory, measure_memory, MemoryOOM
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["BenchBundle", "BenchConfig", "DEFAULT_BATCH_SIZES", "SCHEMA_VERSION", "load_bench_bundles",
           "run_benchmark"]

SCHEMA_VERSION = 2  # 2: precision on every row, artifact precision, accuracy and INT8 factor per bundle
BENCH_DEVICES = ("cpu", "cuda")
DEFAULT_BATCH_SIZES = {"cpu": (1, 2, 4, 8, 16, 32, 64), "cuda": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)}
DEFAULT_TIMING = TimingConfig(warmup=3, min_runs=10, max_runs=500, min_seconds=2.0, max_seconds=20.0)

def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _runtime_target(runtime: str) -> str:
    """The bundle artifact a runtime loads (``onnxruntime`` -> ``onnx``, ...)."""

    return RUNTIME_TARGET[runtime]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how.

    Attributes:
        runtimes: runtime names (``runtimes.list_runtimes()``); ``None`` takes every runtime that
            every bundle has an artifact for.
        devices: ``"cpu"`` and/or ``"cuda"``. A runtime that cannot use a device is skipped with
            the reason (TensorRT on the CPU, OpenVINO on CUDA, a missing package).
        batch_sizes: ``None`` means 1..64 on the CPU and 1..512 on CUDA (stopping at the first
            out-of-memory, which is recorded).
        threads: intra-op CPU threads of every session; ``None`` uses the cores available to this
            process. Always recorded.
        hint: OpenVINO's performance hint, ``"latency"`` or ``"throughput"``.
        precision: ``"auto"`` opens each bundle's artifact at its own precision
            (:meth:`BenchBundle.artifact_precision`); ``"fp32"``, ``"fp16"`` or ``"int8"`` forces
            it on every artifact (the runtimes refuse an artifact built otherwise, but OpenVINO runs
            an FP32 IR in FP16).
        timing: warm-up and the bounds of the interleaved timed rounds at each batch size.
        memory: measure runtime memory in fresh subprocesses (one per runtime x batch x bundle).
        memory_runs: batches run in each memory subprocess.
        memory_timeout_s: seconds before a memory subprocess is killed.
        inputs: a ``.npy`` file of real samples ``(N, C, H, W)``, cycled to fill each batch;
            ``None`` draws random-normal batches (seeded).
        seed: seed of the random inputs and of the bootstrap confidence intervals.
        runtime_options: constructor options per runtime, e.g. ``{"onnxruntime":
            {"allow_spinning": True}}`` (see ``runtimes.get_runtime``). Unless set here,
            onnxruntime's spinning is turned off on the CPU when several bundles take turns: each
            session's private thread pool would otherwise spin after its run on the cores the
            next session needs, and slow it down.
    """

    runtimes: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("cpu",)
    batch_sizes: tuple[int, ...] | None = None
    threads: int | None = None
    hint: str = "latency"
    precision: str = "auto"
    timing: TimingConfig = DEFAULT_TIMING
    memory: bool = True
    memory_runs: int = 2
    memory_timeout_s: float = 600.0
    inputs: str | None = None
    seed: int = 0
    runtime_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:

        if not isinstance(self.runtime_options, dict):
            raise TypeError(f"runtime_options must be a dict, got {type(self.runtime_options).__name__}")
        for name, options in self.runtime_options.items():
            if not isinstance(options, dict):
                raise ValueError(f"runtime_options[{name!r}] must be a dict of constructor options, got {options!r}")
            try:
                get_runtime(name, **options)  # an unknown runtime or option fails here, named
            except TypeError as err:
                raise ValueError(f"runtime_options[{name!r}]: {err}") from None

        if self.runtimes is not None:
            if not self.runtimes:
                raise ValueError("runtimes is empty; name at least one, or pass None for every runtime")
            known = list_runtimes()
            for name in self.runtimes:
                if name not in known:
                    raise ValueError(f"unknown runtime {name!r}; known runtimes: {', '.join(known)}")
            if len(set(self.runtimes)) != len(self.runtimes):
                raise ValueError(f"runtimes has duplicates: {list(self.runtimes)}")
        if not self.devices or any(d not in BENCH_DEVICES for d in self.devices):
            raise ValueError(f"devices must be among {', '.join(map(repr, BENCH_DEVICES))}, got {list(self.devices)}")
        if self.batch_sizes is not None:
            if not self.batch_sizes:
                raise ValueError("batch_sizes is empty; pass None for the device's default sweep")
            for bs in self.batch_sizes:
                _check_positive_int(f"batch size {bs!r} in batch_sizes", bs)
            if len(set(self.batch_sizes)) != len(self.batch_sizes):
                raise ValueError(f"batch_sizes has duplicates: {list(self.batch_sizes)}")
        if self.threads is not None:
            _check_positive_int("threads", self.threads)
        if self.hint not in ("latency", "throughput"):
            raise ValueError(f"hint must be 'latency' or 'throughput', got {self.hint!r}")
        if self.precision not in REQUESTS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, REQUESTS))}, got {self.precision!r}")
        if not isinstance(self.timing, TimingConfig):
            raise TypeError(f"timing must be a TimingConfig, got {type(self.timing).__name__}")
        _check_positive_int("memory_runs", self.memory_runs)
        if not isinstance(self.memory_timeout_s, (int, float)) or not self.memory_timeout_s > 0:
            raise ValueError(f"memory_timeout_s must be positive, got {self.memory_timeout_s!r}")

    def batch_sizes_for(self, device: str) -> tuple[int, ...]:
        return tuple(self.batch_sizes) if self.batch_sizes is not None else DEFAULT_BATCH_SIZES[device]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("runtimes", "devices", "batch_sizes"):
            out[key] = list(out[key]) if out[key] is not None else None
        out["timing"] = self.timing.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        """Inverse of :meth:`to_dict`. Raises ValueError on unknown keys or bad values."""
        check_known_keys(cls, data)
        kwargs = dict(data)
        for key in ("runtimes", "devices", "batch_sizes"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(kwargs[key])
        if isinstance(kwargs.get("timing"), dict):
            kwargs["timing"] = TimingConfig.from_dict(kwargs["timing"])
        return cls(**kwargs)


@dataclass(frozen=True)
class BenchBundle:
    """A loaded, verified bundle and the facts the sweep needs from its manifest."""

    name: str
    role: str  # "baseline" | "candidate"
    path: Path
    input_shape: tuple[int, ...]
    manifest: dict[str, Any] = field(repr=False)

    @property
    def cost(self) -> dict[str, Any]:
        return self.manifest.get("cost") or {}

    def artifact(self, runtime: str) -> Path | None:
        rel = (self.manifest.get("artifacts") or {}).get(_runtime_target(runtime))
        return self.path / rel if rel is not None else None

    def artifact_precision(self, runtime: str) -> str:
        """The precision ``runtime``'s artifact computes in (``artifact_precision`` of the manifest,
        else its ``precision``, else fp32): an INT8 bundle ships FP32 where its INT8 was refused."""
        return artifact_precision(self.manifest, _runtime_target(runtime))

    def precision_for(self, runtime: str, requested: str = "auto") -> str:
        """The precision to open ``runtime``'s artifact at: its own for ``"auto"``, else ``requested``."""
        return self.artifact_precision(runtime) if requested == "auto" else requested

    def int8_factor(self, runtime: str) -> float | None:
        """The INT8-over-FP32 speedup the export's speed guard measured on ``runtime``, or None."""
        return (int8_by_runtime(self.manifest)[0] or {}).get(runtime)

    @property
    def alignment(self) -> int | None:
        """The channel multiple the recipe's pruning steps rounded to (the smallest over the steps);
        None when a step's is unknown or nothing was pruned. See :func:`_step_alignment`."""
        steps = (self.manifest.get("recipe") or {}).get("history") or []
        configs = [c for s in steps if isinstance(s, dict)
                   for c in (s.get("config"), (s.get("recipe") or {}).get("prune")) if isinstance(c, dict)]
        values = [_step_alignment(c) for c in configs]
        return min(values) if values and None not in values else None

    def theoretical_trm_bytes(self, batch_size: int) -> int | None:
        mps, fm = self.cost.get("mps_bytes"), self.cost.get("fm_elements")
        return int(mps + fm * 4 * batch_size) if mps is not None and fm is not None else None

    def to_dict(self) -> dict[str, Any]:
        weights = self.manifest.get("weights") or {}
        factors, decisions = int8_by_runtime(self.manifest)
        return {
            "name": self.name, "role": self.role, "path": str(self.path), "input_shape": list(self.input_shape),
            **{key: _as_int(self.cost.get(key)) for key in ("flops", "params", "mps_bytes", "fm_elements")},
            "weights_trained": weights.get("trained"),
            "source": self.manifest.get("source"),
            "artifacts": dict(self.manifest.get("artifacts") or {}),
            "precision": self.manifest.get("precision") or DEFAULT_PRECISION,
            "artifact_precision": {t: artifact_precision(self.manifest, t) for t in self.manifest.get("artifacts", {})},
            "accuracy": manifest_accuracy(self.manifest), "int8_factor": factors, "int8_decision": decisions,
        }


def _step_alignment(prune_config: dict[str, Any]) -> int | None:
    """A pruning step's ``round_to``; for ``"auto"``, the largest per-kind alignment it resolved to."""
    round_to = prune_config.get("round_to")
    if round_to == "auto":
        round_to = max(((prune_config.get("alignment") or {}).get("kinds") or {}).values(), default=None)
    return round_to if isinstance(round_to, int) and not isinstance(round_to, bool) and round_to >= 1 else None


def _as_int(value: Any) -> int | None:
    return int(round(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def load_bench_bundles(candidates: Sequence[str | Path], baseline: str | Path | None = None) -> list[BenchBundle]:
    """Load and verify the bundles: the baseline first (if any), then the candidates.

    Raises:
        ValueError: no candidates, the same directory twice, or bundles whose inputs differ
            (a paired comparison needs the same input).
        runtimes.BundleError: a bundle is missing, incomplete, tampered with or failed parity;
            the message names the directory.
    """

    if not candidates:
        raise ValueError("give at least one bundle to benchmark")
    paths = ([("baseline", baseline)] if baseline is not None else []) + [("candidate", c) for c in candidates]
    resolved = [Path(p).resolve() for _, p in paths]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"a bundle is given twice: {[str(p) for p in resolved]}")
    out: list[BenchBundle] = []
    names: set[str] = set()
    for (role, raw), path in zip(paths, resolved):
        if not path.exists():
            raise BundleError(f"{role} bundle {raw} does not exist")
        if not path.is_dir():
            raise BundleError(f"{role} bundle {raw} is not a directory (export one with `compressor export`)")
        manifest = load_bundle(path).manifest
        shape = manifest.get("input", {}).get("shape")
        if not isinstance(shape, list) or len(shape) < 2:
            raise BundleError(f"{path}/manifest.json has no input shape (input.shape)")
        problem = precision_problem(manifest)
        if problem:
            raise BundleError(f"{path}/manifest.json: {problem}")
        name, k = path.name, 2
        while name in names:
            name, k = f"{path.name}-{k}", k + 1
        names.add(name)
        out.append(BenchBundle(name, role, path, tuple(int(d) for d in shape[1:]), manifest))
    first = out[0]
    for other in out[1:]:
        if other.input_shape != first.input_shape:
            raise ValueError(f"{other.role} bundle {other.path} takes input {list(other.input_shape)} but {first.role} "
                             f"bundle {first.path} takes {list(first.input_shape)}; a paired comparison needs the "
                             "same input shape")
    return out


class _Inputs:
    """One float32 batch per batch size: random normal (seeded) or real samples cycled."""

    def __init__(self, shape: tuple[int, ...], path: str | None, seed: int):
        self.shape, self.seed = shape, seed
        self.samples: np.ndarray | None = None
        if path is not None:
            file = Path(path)
            if not file.is_file():
                raise FileNotFoundError(f"inputs file {file} does not exist")
            try:
                arr = np.load(file, allow_pickle=False)
            except (ValueError, OSError) as err:
                raise ValueError(f"inputs file {file} is not a readable .npy array: {err}") from err
            if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape or arr.shape[0] < 1:
                raise ValueError(f"inputs file {file} holds shape {list(arr.shape)}; the bundles take "
                                 f"[N, {', '.join(map(str, shape))}]")
            if arr.dtype.kind not in "fiu":
                raise ValueError(f"inputs file {file} holds {arr.dtype}; need numbers")
            self.samples = arr.astype(np.float32)

    @property
    def description(self) -> str:
        return "random-normal" if self.samples is None else f"samples from file ({len(self.samples)} samples)"

    def batch(self, batch_size: int) -> np.ndarray:
        if self.samples is None:
            rng = np.random.default_rng([self.seed, batch_size])
            return rng.standard_normal((batch_size, *self.shape), dtype=np.float32)
        return np.ascontiguousarray(self.samples[np.arange(batch_size) % len(self.samples)])


def _is_out_of_memory(err: BaseException) -> bool:
    """Whether an exception says the device or the host ran out of memory."""

    return isinstance(err, (MemoryError, MemoryOOM)) or is_out_of_memory(f"{type(err).__name__}: {err}")


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"


class _Progress:
    """A rich progress bar with an ETA (or nothing, when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled:

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self._task = self._bar.add_task("benchmark", total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, steps)


class _Sweep:
    """Holds the results dict while it is being filled, so an interrupt keeps what was measured."""

    def __init__(self, bundles: list[BenchBundle], config: BenchConfig, threads: int):
        self.bundles, self.config, self.threads = bundles, config, threads
        self.baseline = bundles[0] if bundles[0].role == "baseline" else None
        self.inputs = _Inputs(bundles[0].input_shape, config.inputs, config.seed)
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "kind": "cnn-compressor-benchmark",
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "complete": False,
            "interrupted": False,
            "environment": collect_environment(config.devices),
            "config": {**config.to_dict(), "threads": threads, "inputs_description": self.inputs.description,
                       "runtimes": list(config.runtimes or ()),
                       "batch_sizes": sorted({bs for d in config.devices for bs in config.batch_sizes_for(d)}),
                       "batch_sizes_by_device": {d: list(config.batch_sizes_for(d)) for d in config.devices}},
            "bundles": [b.to_dict() for b in bundles],
            "latency": [], "speedup": [], "memory": [], "skipped": [], "warnings": [],
        }

    def warn(self, message: str) -> None:
        if message not in self.results["warnings"]:
            self.results["warnings"].append(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # --- planning ------------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, str]]:
        """The (device, runtime) pairs to measure; the others are recorded as skipped."""

        explicit = self.config.runtimes is not None
        names = list(self.config.runtimes) if explicit else [
            name for name in ("torch", "onnxruntime", "openvino", "tensorrt")
            if all(b.artifact(name) is not None for b in self.bundles)]
        if explicit:
            for name in names:
                lacking = [str(b.path) for b in self.bundles if b.artifact(name) is None]
                if lacking:
                    raise ValueError(f"runtime {name!r} needs the {_runtime_target(name)!r} artifact, which bundle(s) "
                                     f"{', '.join(lacking)} lack; re-export with `compressor export ... --to "
                                     f"{_runtime_target(name)},...` or drop {name!r} from the runtimes")
        elif not names:
            raise ValueError("the bundles share no artifact a runtime can load")
        self.results["config"]["runtimes"] = names
        pairs = []
        for device in self.config.devices:
            for name in names:
                reason = get_runtime(name).is_available(device=device)
                if reason is None and name == "tensorrt" and device == "cpu":
                    reason = "TensorRT runs on CUDA devices only"
                if reason is None:
                    pairs.append((device, name))
                else:
                    self.results["skipped"].append({"runtime": name, "device": device, "reason": reason})
                    self.warn(f"skipping {name} on {device}: {reason}")
        if not pairs:
            raise ValueError("none of the requested runtimes can run here: "
                             + "; ".join(f"{s['runtime']} on {s['device']}: {s['reason']}"
                                         for s in self.results["skipped"]))
        return pairs

    def steps(self, pairs: list[tuple[str, str]]) -> int:
        per_pair = {device: len(self.config.batch_sizes_for(device)) for device in self.config.devices}
        memory = len(self.bundles) if self.config.memory else 0
        return sum(per_pair[device] * (1 + memory) for device, _ in pairs)

    # --- latency -------------------------------------------------------------------------------
    def _open(self, device: str, runtime: str) -> dict[str, Any]:

        options = dict(self.config.runtime_options.get(runtime, {}))
        if runtime == "onnxruntime" and device == "cpu" and len(self.bundles) > 1 \
                and "allow_spinning" not in options:
            options["allow_spinning"] = False
            self.warn("onnxruntime: intra-op spinning is off because several sessions take turns on the CPU "
                      "(each one's spinning pool would slow the next); a lone deployed session may be faster at "
                      "small batches with it on (runtime_options={'onnxruntime': {'allow_spinning': True}})")
        rt = get_runtime(runtime, **options)
        sessions: dict[str, Any] = {}
        try:
            for bundle in self.bundles:
                session_config = SessionConfig(device=device, threads=self.threads if device == "cpu" else None,
                                               hint=self.config.hint, precision=self.precision(bundle, runtime))
                sessions[bundle.name] = rt.load(bundle.artifact(runtime), session_config)
        except BaseException:
            for session in sessions.values():
                session.close()
            raise
        for name, session in sessions.items():
            if device == "cpu" and session.settings.get("flush_denormal") is False:
                self.warn(f"{runtime} does not flush subnormal floats for {name}; CPU timings of random-weight "
                          "models may be distorted")
        return sessions

    def precision(self, bundle: BenchBundle, runtime: str) -> str:
        """The precision ``bundle``'s artifact is opened at on ``runtime``."""
        return bundle.precision_for(runtime, self.config.precision)

    def _row(self, device: str, runtime: str, batch_size: int, bundle: str, **fields: Any) -> dict[str, Any]:
        return {"runtime": runtime, "device": device, "batch_size": batch_size, "bundle": bundle, **fields}

    def _bundle_row(self, device: str, runtime: str, batch_size: int, bundle: BenchBundle,
                    **fields: Any) -> dict[str, Any]:
        """A latency or memory row: its key and the precision the artifact was opened at."""
        return self._row(device, runtime, batch_size, bundle.name, precision=self.precision(bundle, runtime), **fields)

    def latency(self, device: str, runtime: str, progress: _Progress) -> dict[int, str]:
        """Time every batch size; returns ``{batch size: "oom" | "error"}`` for those that failed."""
        batch_sizes = self.config.batch_sizes_for(device)
        failed: dict[int, str] = {}
        try:
            sessions = self._open(device, runtime)
        except Exception as err:  # noqa: BLE001 - recorded per row, the sweep goes on
            for bs in batch_sizes:
                self._record_failure(device, runtime, bs, "error", f"loading failed: {_describe(err)}")
                failed[bs] = "error"
                progress.advance()
            self.warn(f"{runtime} on {device} could not load the bundles: {_describe(err)}")
            return failed
        oom_at: int | None = None
        try:
            for bs in batch_sizes:
                progress.describe(f"{runtime}/{device} latency, batch {bs}")
                if oom_at is not None and bs > oom_at:
                    self._record_failure(device, runtime, bs, "oom", f"skipped: batch {oom_at} already ran out "
                                                                     "of memory")
                    failed[bs] = "oom"
                else:
                    status = self._time_batch(device, runtime, bs, sessions)
                    if status != "ok":
                        failed[bs] = status
                        if status == "oom":
                            oom_at = bs if oom_at is None else min(oom_at, bs)
                progress.advance()
        finally:
            for session in sessions.values():
                session.close()
        return failed

    def _record_failure(self, device: str, runtime: str, bs: int, status: str, error: str) -> None:
        for b in self.bundles:
            self.results["latency"].append(self._bundle_row(device, runtime, bs, b, status=status, error=error,
                                                            stats=None, settings=None))

    def _time_batch(self, device: str, runtime: str, bs: int, sessions: dict[str, Any]) -> str:
        x = self.inputs.batch(bs)
        fns: dict[str, Callable[[], Any]] = {name: (lambda s=s: s.run_all(x)) for name, s in sessions.items()}
        try:
            for name, fn in fns.items():
                if device == "cpu" and any(has_subnormals(out) for out in fn()):
                    self.warn(f"{name} produces subnormal outputs on {runtime}; CPU timings may be distorted "
                              "(random weights?)")
            samples = interleaved(fns, self.config.timing, device="cuda" if device == "cuda" else "cpu")
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - an OOM or a failure at one batch is a result
            status = "oom" if _is_out_of_memory(err) else "error"
            self._record_failure(device, runtime, bs, status, _describe(err))
            if device == "cuda" and runtime == "torch":
                import torch  # optional SDK: torch

                torch.cuda.empty_cache()
            return status
        for bundle in self.bundles:
            stats = summarize(samples[bundle.name], bs, seed=self.config.seed)
            self.results["latency"].append(self._bundle_row(device, runtime, bs, bundle, status="ok", error=None,
                                                            stats=stats.to_dict(),
                                                            settings=sessions[bundle.name].settings))
        if self.baseline is not None:
            for cand in self.bundles[1:]:
                self.results["speedup"].append(self._speedup_row(device, runtime, bs, cand, samples))
        return "ok"

    def _speedup_row(self, device: str, runtime: str, bs: int, cand: BenchBundle,
                     samples: dict[str, Any]) -> dict[str, Any]:
        """The paired speedup of ``cand`` over the baseline, set against the FLOPs ratio and, when the
        candidate computes in INT8 and the baseline does not, its INT8 factor too."""
        base = self.baseline
        speed = paired_speedup(samples[base.name], samples[cand.name], seed=self.config.seed)
        base_flops, flops = base.cost.get("flops"), cand.cost.get("flops")
        theoretical = base_flops / flops if base_flops and flops else None
        precision, base_precision = self.precision(cand, runtime), self.precision(base, runtime)
        factor = applied_int8_factor(precision, base_precision, cand.int8_factor(runtime))
        expected = theoretical * (factor or 1.0) if theoretical else None
        verdict = speed_verdict(speed.speedup_median, expected, ci=speed.speedup_ci, runtime=runtime,
                                batch_size=bs, alignment=cand.alignment, int8_factor=factor) if expected else None
        return self._row(device, runtime, bs, cand.name, baseline=base.name, practical=speed.to_dict(),
                         theoretical=theoretical,
                         efficiency=efficiency(speed.speedup_median, expected) if expected else None,
                         verdict=verdict.to_dict() if verdict else None, precision=precision,
                         baseline_precision=base_precision, int8_factor=factor)

    # --- memory --------------------------------------------------------------------------------
    def memory(self, device: str, runtime: str, failed: dict[int, str], progress: _Progress) -> None:
        for bs in self.config.batch_sizes_for(device):
            for bundle in self.bundles:
                progress.describe(f"{runtime}/{device} memory, batch {bs}, {bundle.name}")
                row = self._bundle_row(device, runtime, bs, bundle,
                                       theoretical_bytes=bundle.theoretical_trm_bytes(bs))
                if bs in failed:
                    row.update(status=failed[bs],
                               error="not measured: the latency run at this batch size failed",
                               measured_bytes=None, peak_bytes=None, detail=None)
                else:
                    row.update(self._measure(measure_memory, device, runtime, bs, bundle))
                self.results["memory"].append(row)
                progress.advance()

    def _measure(self, measure: Callable[..., Any], device: str, runtime: str, bs: int,
                 bundle: BenchBundle) -> dict[str, Any]:
        try:
            result = measure(runtime, bundle.artifact(runtime), bundle.input_shape, bs, threads=self.threads,
                             runs=self.config.memory_runs, timeout_s=self.config.memory_timeout_s, device=device,
                             seed=self.config.seed, precision=self.precision(bundle, runtime))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - recorded, the sweep goes on
            return {"status": "oom" if _is_out_of_memory(err) else "error",
                    "error": _describe(err), "measured_bytes": None, "peak_bytes": None, "detail": None}
        detail = result.to_dict()
        peak = detail.get("device_peak_bytes") if device == "cuda" else detail.get("peak_rss_bytes")
        return {"status": "ok", "error": None, "measured_bytes": int(result.increase_bytes),
                "peak_bytes": int(peak) if peak is not None else None, "detail": detail}


def run_benchmark(candidates: Sequence[str | Path], baseline: str | Path | None = None,
                  config: BenchConfig | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Measure the bundles and return the results dict (``benchmarks/results.schema.json``).

    Args:
        candidates: bundle directories written by ``compressor export`` (pruned models, say).
        baseline: the bundle they are compared with (the unpruned model); without it there are
            no speedup rows.
        config: runtimes, devices, batch sizes, threads, timing, memory; default ``BenchConfig()``.
        progress: show a progress bar with an ETA.

    Returns:
        The results. ``complete`` is False and ``interrupted`` True when Ctrl-C stopped the
        sweep; what was measured until then is kept. Failures at one batch size (out of memory,
        a runtime error) are rows with their status, not exceptions.

    Raises:
        ValueError: bad config, bundles with different input shapes, a requested runtime whose
            artifact a bundle lacks, or no runtime that can run.
        runtimes.BundleError: a bundle is missing or invalid (the message names it).
        FileNotFoundError: the inputs file is missing.
    """
    config = BenchConfig() if config is None else config
    if not isinstance(config, BenchConfig):
        raise TypeError(f"config must be a BenchConfig, got {type(config).__name__}")
    bundles = load_bench_bundles(candidates, baseline)
    threads = config.threads if config.threads is not None else available_cores()
    sweep = _Sweep(bundles, config, threads)
    pairs = sweep.plan()
    if any(b.to_dict()["weights_trained"] is False for b in bundles):
        sweep.warn("some bundles have random (untrained) weights: their latencies are honest only because "
                   "denormals are flushed, and any accuracy figure would be meaningless")
    try:
        with _Progress(sweep.steps(pairs), progress) as bar:
            for device, runtime in pairs:
                failed = sweep.latency(device, runtime, bar)
                if config.memory:
                    sweep.memory(device, runtime, failed, bar)
    except KeyboardInterrupt:
        sweep.results["interrupted"] = True
        return sweep.results
    sweep.results["complete"] = True
    return sweep.results

