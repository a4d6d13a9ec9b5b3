"""Does our latency agree with OpenVINO's own ``benchmark_app`` on the same IR?

    python -m benchmarks.openvino_agreement model.xml --threads 2 --seconds 15
    python -m benchmarks.openvino_agreement --onnx model.onnx --json agreement.json
    python -m benchmarks.openvino_agreement bundle_dir/          # openvino/model.xml + manifest.json

Both sides time the same IR on the CPU plugin with the same threads, the LATENCY hint, batch 1,
synchronous requests and f32 inference precision: ours through ``runtimes`` (``session.run`` on a
random-normal batch, :func:`benchmarks._timing.time_callable`), theirs in a ``benchmark_app``
subprocess. The runs alternate in rotating order (ours, theirs, then theirs, ours, ...) so that
drift falls on both alike. Each side's median is the median of its per-run medians; the verdict
is ``|ours / benchmark_app - 1| <= tolerance``. Exit status: 0 within tolerance, 1 outside it,
2 on an error (missing file or ``benchmark_app``, a failed run).

How ``benchmark_app`` is made to use our settings:

* ``-hint latency`` and ``-api sync``. benchmark_app refuses ``-nthreads`` together with a hint
  ("fine tune options"), so the thread count goes in a ``-load_config`` file, together with the
  other CPU properties our session compiled with (denormal flushing, core pinning), read back
  from our compiled model.
* ``-infer_precision f32`` on both sides: on CPUs with AVX512-BF16 or AMX the CPU plugin
  otherwise computes in bf16, which is a different computation, not a timing difference.
* ``-ip f32``: benchmark_app otherwise declares a 4-D input as a u8 image and adds a conversion
  to the graph; we feed float32.
* ``-data_shape [1,C,H,W] -inference_only true``: the IR keeps its dynamic batch, as our session
  compiles it (``-shape`` would reshape it to a static model, a different compiled graph); the
  input is filled once, outside the timed loop, as ours is.

After each run the compiled-model properties benchmark_app logs (its step 8) are compared with
ours; a difference is reported under ``settings_mismatch``. benchmark_app's median is the lower
median of its samples (``sorted[ceil(n/2) - 1]``) and its report rounds to 0.01 ms; the console
line, which has more digits below 1 ms, is used where it agrees with the report.

What differs by design: ours is the wall time of ``session.run`` from Python (binding the input,
copying the output out), benchmark_app's is the infer request's own ``latency``, taken inside
the call. On a 2-core AMD EPYC that is 35-45 us per call: under 1% of ResNet-50 (about 40 ms)
but about 10% of resnet20 (about 0.5 ms), so models under a few milliseconds sit above a 10%
tolerance for that reason alone (``min_ratio`` shows it too).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._benchmark_app import (
    AgreementError,
    benchmark_app_command,
    find_benchmark_app,
    parse_benchmark_app_report,
    parse_benchmark_app_stdout,
    run_benchmark_app,
)
from benchmarks._records import check_known_keys
from benchmarks._stats import summarize
from benchmarks._timing import rotation, time_callable, TimingConfig
from runtimes import (ArtifactError, BundleError, get_runtime, load_bundle, package_versions, RuntimeUnavailable,
                      SessionConfig)

__all__ = [
    "AgreementConfig", "AgreementError", "AgreementResult", "benchmark_app_command", "compare_with_benchmark_app",
    "find_benchmark_app", "format_table", "main", "parse_benchmark_app_report", "parse_benchmark_app_stdout",
    "resolve_model", "run_benchmark_app",
]

SCHEMA_VERSION = 1
# CPU properties of our compiled model that benchmark_app is given through -load_config
MIRRORED_PROPERTIES = ("INFERENCE_NUM_THREADS", "CPU_DENORMALS_OPTIMIZATION", "ENABLE_CPU_PINNING")
# compiled-model properties that must agree for the comparison to be like for like
COMPARED_PROPERTIES = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT",
                       "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING",
                       "SCHEDULING_CORE_TYPE", "CPU_DENORMALS_OPTIMIZATION")
_SIDES = ("ours", "benchmark_app")


@dataclass(frozen=True)
class AgreementConfig:
    """How to compare.

    Attributes:
        threads: CPU inference threads on both sides (OpenVINO's INFERENCE_NUM_THREADS).
        seconds: length of each timed run, on each side (benchmark_app's ``-t`` takes whole seconds).
        repeats: runs per side, interleaved in rotating order.
        tolerance: the largest accepted ``|ours / benchmark_app - 1|``.
        warmup: untimed calls before each of our runs (benchmark_app makes one, its "first inference").
        seed: seed of our random-normal input.
        input_shape: one sample's shape ``(C, H, W)``, for an IR whose non-batch dims are dynamic;
            ``None`` reads it from the IR (or the bundle's manifest).
    """

    threads: int = 2
    seconds: int = 15
    repeats: int = 2
    tolerance: float = 0.10
    warmup: int = 10
    seed: int = 0
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("threads", 1), ("seconds", 1), ("repeats", 1), ("warmup", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) \
                or not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be a fraction in (0, 1), e.g. 0.10, got {self.tolerance!r}")
        if self.input_shape is not None:
            shape = tuple(self.input_shape)
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
                raise ValueError(f"input_shape must be positive ints (C, H, W), got {self.input_shape!r}")
            object.__setattr__(self, "input_shape", shape)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AgreementConfig:
        """Inverse of :meth:`to_dict`. Raises ValueError on unknown keys or bad values."""
        check_known_keys(cls, data)
        kwargs = dict(data)
        if kwargs.get("input_shape") is not None:
            kwargs["input_shape"] = tuple(kwargs["input_shape"])
        return cls(**kwargs)


@dataclass
class AgreementResult:
    """Both medians, their ratio and the verdict, with what is needed to redo the comparison.

    Attributes:
        model: the IR that both sides ran.
        input_shape: the batch-1 input shape.
        ours_median_ms, benchmark_app_median_ms: median of each side's per-run medians, in ms.
        ratio: ``ours_median_ms / benchmark_app_median_ms``.
        passed: ``|ratio - 1| <= config["tolerance"]``.
        ours_medians_ms, benchmark_app_medians_ms, ratios: per run, in run order.
        min_ratio: ratio of the two sides' fastest calls: contention from other processes
            lengthens the median but rarely the minimum, so on a busy machine this tells a harness
            difference from noise. Informative only; the verdict is on the medians.
        run_spread: the largest ``max / min - 1`` of one side's per-run medians.
        noisy: ``run_spread > tolerance``: runs of the same side disagree by more than the
            tolerance, so the verdict is limited by noise; rerun on a quiet machine.
        ours_runs: our :class:`benchmarks._stats.LatencyStats` per run, raw samples included.
        benchmark_app_runs: what each benchmark_app run reported (see :func:`run_benchmark_app`).
        benchmark_app_command: the exact command line of the first run (later runs differ only in
            ``-report_folder``); ``benchmark_app_config`` is the ``-load_config`` file's content.
        settings_ours: our session's settings and the compared compiled-model properties.
        settings_mismatch: property -> ``[ours, benchmark_app]`` where the compiled models differ.
        environment: python, platform, CPU, package versions.
    """

    model: str
    input_shape: list[int]
    config: dict[str, Any]
    ours_median_ms: float
    benchmark_app_median_ms: float
    ratio: float
    passed: bool
    ours_medians_ms: list[float]
    benchmark_app_medians_ms: list[float]
    ratios: list[float]
    min_ratio: float
    run_spread: float
    noisy: bool
    benchmark_app_command: list[str]
    benchmark_app_config: dict[str, Any]
    settings_ours: dict[str, Any]
    settings_mismatch: dict[str, list[str]]
    environment: dict[str, Any]
    ours_runs: list[dict[str, Any]] = field(default_factory=list)
    benchmark_app_runs: list[dict[str, Any]] = field(default_factory=list)
    source: str | None = None  # what was given (an .onnx or a bundle), where the IR was derived from it
    schema_version: int = SCHEMA_VERSION

    @property
    def benchmark_app_command_line(self) -> str:
        return shlex.join(self.benchmark_app_command)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["benchmark_app_command_line"] = self.benchmark_app_command_line
        return out


# --- the comparison --------------------------------------------------------------------------

def resolve_model(source: str | os.PathLike, onnx: str | os.PathLike | None = None,
                  build_dir: str | os.PathLike | None = None) -> tuple[Path, tuple[int, ...] | None]:
    """The IR to compare and, for a bundle, one sample's shape from its manifest.

    Args:
        source: an IR ``.xml``, or a bundle directory (``manifest.json`` + ``openvino/model.xml``).
            Ignored when ``onnx`` is given.
        onnx: an ONNX file, converted to IR in ``build_dir`` by the openvino runtime.
        build_dir: where to build the IR from ``onnx``.

    Raises:
        FileNotFoundError: the file or directory does not exist (the message names it).
        runtimes.BundleError, runtimes.ArtifactError: a damaged bundle or ONNX file.
    """

    if onnx is not None:
        onnx = Path(onnx)
        if not onnx.is_file():
            raise FileNotFoundError(f"{onnx}: ONNX model not found")
        if build_dir is None:
            raise ValueError("building an IR from ONNX needs a build_dir")
        return Path(get_runtime("openvino").build(onnx, build_dir)), None
    path = Path(source)
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"{path}: a directory but not a bundle (no manifest.json)")
        bundle = load_bundle(path, verify=False, allow_failed_parity=True)
        xml = bundle.artifact("openvino")
        if not xml.is_file():
            raise FileNotFoundError(f"{xml}: the bundle's OpenVINO IR is missing")
        dims = bundle.manifest.get("input", {}).get("shape", [])[1:]
        shape = tuple(int(d) for d in dims) if dims and all(isinstance(d, int) for d in dims) else None
        return xml, shape
    if not path.is_file():
        raise FileNotFoundError(f"{path}: OpenVINO IR not found")
    return path, None


def _batch1_shape(xml: Path, session_shape: tuple[int | None, ...] | None,
                  sample_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if sample_shape is not None:
        return (1, *sample_shape)
    if session_shape is None or any(d is None for d in session_shape[1:]):
        shown = "unknown rank" if session_shape is None else \
            "(" + ", ".join("?" if d is None else str(d) for d in session_shape) + ")"
        raise ValueError(f"{xml}: the input shape {shown} has dynamic dims besides the batch; "
                         "pass the sample shape (--input-shape C,H,W)")
    if session_shape[0] not in (None, 1):
        raise ValueError(f"{xml}: the IR's batch is fixed at {session_shape[0]}; batch-1 latency needs batch 1 "
                         "or a dynamic batch")
    return (1, *(int(d) for d in session_shape[1:]))  # type: ignore[arg-type]


def _compiled_properties(session: Any, keys: Sequence[str]) -> dict[str, Any]:
    compiled = session.native
    supported = compiled.get_property("SUPPORTED_PROPERTIES")
    return {key: compiled.get_property(key) for key in keys if key in supported}


def _environment(session_settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": session_settings.get("device_name"),
        "cpu_count": os.cpu_count(),
        "openvino_build": session_settings.get("version"),
        "versions": {**package_versions(), "numpy": np.__version__},
    }


@contextlib.contextmanager
def _work_dir(path: str | os.PathLike | None) -> Iterator[Path]:
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
    else:
        with tempfile.TemporaryDirectory(prefix="ov-agreement-") as tmp:
            yield Path(tmp)


def compare_with_benchmark_app(xml: str | os.PathLike, config: AgreementConfig = AgreementConfig(),
                               work_dir: str | os.PathLike | None = None,
                               progress: Callable[[str], None] | None = None) -> AgreementResult:
    """Time ``xml`` with our harness and with benchmark_app, interleaved, and compare the medians.

    Args:
        xml: an OpenVINO IR (``.xml`` with its ``.bin``).
        config: threads, run length, repeats, tolerance.
        work_dir: where benchmark_app's ``-load_config`` file and reports go (kept); default a
            temporary directory, removed afterwards.
        progress: called with a short message before each run.

    Raises:
        FileNotFoundError: ``xml`` does not exist. runtimes.ArtifactError: it cannot be read.
        AgreementError: benchmark_app is missing or failed. ValueError: the input shape is not
        known (see ``AgreementConfig.input_shape``) or its batch is fixed above 1.
        runtimes.RuntimeUnavailable: openvino is not installed.
    """

    xml = Path(xml)
    if not xml.is_file():
        raise FileNotFoundError(f"{xml}: OpenVINO IR not found")
    say = progress or (lambda message: None)
    executable = find_benchmark_app()
    session = get_runtime("openvino").load(xml, SessionConfig(device="cpu", threads=config.threads, hint="latency",
                                                              precision="fp32"))
    with session, _work_dir(work_dir) as work:
        shape = _batch1_shape(xml, session.input_shape, config.input_shape)
        x = np.random.default_rng(config.seed).standard_normal(shape).astype(session.input_dtype)
        ours_props = _compiled_properties(session, COMPARED_PROPERTIES)
        mirrored = {k: v for k, v in _compiled_properties(session, MIRRORED_PROPERTIES).items()
                    if isinstance(v, (bool, int, str))}
        mirrored["INFERENCE_NUM_THREADS"] = config.threads
        bench_config = {"CPU": mirrored}
        config_file = work / "benchmark_app_config.json"
        config_file.write_text(json.dumps(bench_config, indent=1))
        timing = TimingConfig(warmup=config.warmup, min_runs=1, max_runs=10**9, min_seconds=float(config.seconds),
                              max_seconds=float(config.seconds))
        ours_runs: list[dict[str, Any]] = []
        theirs_runs: list[dict[str, Any]] = []
        commands: list[list[str]] = []
        for r in range(config.repeats):
            for side in rotation(list(_SIDES), r):
                if side == "ours":
                    say(f"run {r + 1}/{config.repeats}: ours ({config.seconds} s)")
                    ours_runs.append(summarize(time_callable(lambda: session.run(x), timing), batch_size=1).to_dict())
                else:
                    say(f"run {r + 1}/{config.repeats}: benchmark_app ({config.seconds} s)")
                    folder = work / f"report_{r}"
                    command = benchmark_app_command(executable, xml, shape, config.seconds, config_file, folder)
                    commands.append(command)
                    theirs_runs.append(run_benchmark_app(command, folder, timeout_s=config.seconds + 300))
        settings = session.settings

    ours_medians = [run["latency_ms_median"] for run in ours_runs]
    theirs_medians = [run["latency_ms_median"] for run in theirs_runs]
    ours_median, theirs_median = float(np.median(ours_medians)), float(np.median(theirs_medians))
    ratio = ours_median / theirs_median if theirs_median > 0 else math.inf
    ours_min = min(run["latency_ms_min"] for run in ours_runs)
    theirs_min = min(run.get("latency_ms_min", math.nan) for run in theirs_runs)
    spread = max(max(values) / min(values) - 1.0 for values in (ours_medians, theirs_medians))
    ours_text = {k: str(v) for k, v in ours_props.items()}
    mismatch = {}
    for run in theirs_runs:
        for key, value in ours_text.items():
            theirs = run["properties"].get(key)
            if theirs is not None and theirs != value:
                mismatch[key] = [value, theirs]
    return AgreementResult(
        model=str(xml), input_shape=list(shape), config=config.to_dict(),
        ours_median_ms=ours_median, benchmark_app_median_ms=theirs_median, ratio=ratio,
        passed=bool(abs(ratio - 1.0) <= config.tolerance),
        ours_medians_ms=ours_medians, benchmark_app_medians_ms=theirs_medians,
        ratios=[o / t if t > 0 else math.inf for o, t in zip(ours_medians, theirs_medians)],
        min_ratio=ours_min / theirs_min if theirs_min > 0 else math.inf, run_spread=spread,
        noisy=bool(spread > config.tolerance),
        benchmark_app_command=commands[0], benchmark_app_config=bench_config,
        settings_ours={**settings, "compiled_properties": ours_text}, settings_mismatch=mismatch,
        environment=_environment(settings), ours_runs=ours_runs, benchmark_app_runs=theirs_runs,
    )


# --- command line ----------------------------------------------------------------------------

def format_table(result: AgreementResult) -> str:
    """A small plain-text table of both medians and the verdict (rounded here, for printing only)."""
    def runs(values: Sequence[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in values)

    tolerance = result.config["tolerance"]
    verdict = "PASS" if result.passed else "FAIL"
    lines = [
        (f"model: {result.model}  input {result.input_shape}  threads {result.config['threads']}  "
         f"hint latency  f32  {result.config['repeats']} x {result.config['seconds']} s per side"),
        f"{'':<20}{'median ms':>12}   per-run medians (ms)",
        f"{'ours (runtimes)':<20}{result.ours_median_ms:>12.3f}   {runs(result.ours_medians_ms)}",
        f"{'benchmark_app':<20}{result.benchmark_app_median_ms:>12.3f}   {runs(result.benchmark_app_medians_ms)}",
        (f"{'ratio ours/bench':<20}{result.ratio:>12.3f}   {runs(result.ratios)}   "
         f"tolerance +/-{tolerance:.0%}: {verdict}"),
    ]
    lines.append(f"{'ratio of minima':<20}{result.min_ratio:>12.3f}   (informative: contention rarely moves the "
                 "fastest call)")
    if result.noisy:
        lines.append(f"warning: runs of the same side differ by {result.run_spread:.0%}, more than the tolerance: "
                     "the machine is too noisy for this verdict; rerun when it is quiet")
    for key, (ours, theirs) in sorted(result.settings_mismatch.items()):
        lines.append(f"warning: {key} differs: ours {ours}, benchmark_app {theirs}")
    lines.append(f"benchmark_app command: {result.benchmark_app_command_line}")
    lines.append(f"  with -load_config {json.dumps(result.benchmark_app_config)}")
    return "\n".join(lines)


def _shape_arg(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected C,H,W (e.g. 3,224,224), got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.openvino_agreement",
        description="Compare our OpenVINO median latency with benchmark_app's on the same IR (CPU, batch 1, "
                    "LATENCY hint, f32, same threads). Exit 0 within tolerance, 1 outside, 2 on error.")
    parser.add_argument("model", nargs="?", help="an IR .xml, or a bundle directory (openvino/model.xml + "
                                                 "manifest.json)")
    parser.add_argument("--onnx", help="an ONNX model instead: converted to IR in a temporary directory first")
    parser.add_argument("--threads", type=int, default=AgreementConfig.threads, help="CPU threads (default %(default)s)")
    parser.add_argument("--seconds", type=int, default=AgreementConfig.seconds,
                        help="seconds per timed run, each side (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=AgreementConfig.repeats,
                        help="runs per side, interleaved (default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=AgreementConfig.tolerance,
                        help="accepted |ours/benchmark_app - 1| (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=AgreementConfig.warmup,
                        help="untimed calls before each of our runs (default %(default)s)")
    parser.add_argument("--input-shape", type=_shape_arg, help="one sample's shape C,H,W where the IR's is dynamic")
    parser.add_argument("--work-dir", help="keep benchmark_app's config file and reports here")
    parser.add_argument("--json", help="write the result as JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 pass, 1 outside tolerance, 2 error)."""

    parser = _parser()
    args = parser.parse_args(argv)
    if (args.model is None) == (args.onnx is None):
        parser.error("give either an IR .xml / bundle directory, or --onnx model.onnx")
    try:
        config = AgreementConfig(threads=args.threads, seconds=args.seconds, repeats=args.repeats,
                                 tolerance=args.tolerance, warmup=args.warmup, input_shape=args.input_shape)
        with tempfile.TemporaryDirectory(prefix="ov-agreement-ir-") as build_dir:
            xml, sample_shape = resolve_model(args.model, args.onnx, build_dir)
            if config.input_shape is None and sample_shape is not None:
                config = dataclasses.replace(config, input_shape=sample_shape)
            result = compare_with_benchmark_app(xml, config, work_dir=args.work_dir,
                                                progress=lambda m: print(m, file=sys.stderr, flush=True))
            result.source = str(args.onnx if args.onnx is not None else args.model)
    except (AgreementError, ArtifactError, BundleError, RuntimeUnavailable, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=str))
        print(f"wrote {args.json}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
