"""One prepared GPU check: every CUDA path of the toolchain, timed, written to one folder.

Run it on a CUDA machine from a copy of the working tree (nothing pip-installed)::

    bash benchmarks/gpu_check.sh "$OUT/gpu"       # = PYTHONPATH=. python benchmarks/gpu_check.py --output DIR

Parts, in order; each is recorded in ``results.json`` as ok, skipped (with the reason) or failed
(with the error):

1. ``environment``: GPU, driver, CUDA/cuDNN and torch versions; which optional packages import.
2. ``model``: torchvision ResNet-50 with random weights (``--model``: any ``models.create_model`` name).
3. ``prune``: the model pruned by our engine to 50% of its FLOPs (L2, an explicit ``round_to``),
   and the theoretical speedup (the FLOPs ratio).
4. ``torch_latency``: eager torch, fp32 (TF32 off) and fp16 (``.half()``), batch 1..512. Each
   batch is warmed up, then both models are timed in interleaved rounds with CUDA events (the
   input already on the device: no host-device copies). Median latency, throughput, and the
   practical speedup (median of per-round ratios) against the theoretical one: the
   practical-vs-theoretical curve against batch size of "FALF ConvNets: Fatuous auxiliary loss
   based filter-pruning for efficient deep CNNs". The sweep stops at the first
   out-of-memory, which is recorded as a result.
5. ``torch_memory``: the allocator's peak per batch size, one model on the device at a time.
6. ``onnxruntime_cuda``: both models exported to ONNX (legacy exporter), timed at batch 1 and 32
   with onnxruntime's CUDA provider through ``runtimes`` (numpy in and out: copies included).
7. ``tensorrt``: fp16 engines built from the ONNX by ``runtimes.get_runtime("tensorrt")``, timed.
8. ``bench_harness``: ``benchmarks.run_benchmark`` on the torch runtime on CUDA, with its report
   in ``bench_report/``.

Only torch is required. A part whose package is missing (torchvision, scipy for the pruning
engine, a CUDA build of onnxruntime, tensorrt, PyYAML for ``import benchmarks``) is skipped with
the reason. The timing loops and statistics (``benchmarks/_timing.py``, ``_stats.py``) are loaded
without ``benchmarks/__init__.py``, which imports PyYAML. A global time budget (``--budget-s``)
skips the parts it no longer leaves time for. ``results.json`` and ``summary.md`` are rewritten
atomically after every part, so a killed run leaves what it measured. ``--device cpu`` runs the
same code on the CPU (a dry run of the code paths before spending GPU time; the CUDA-only parts
skip).

Exit codes: 0 every part ran, or was skipped for a stated missing dependency; 1 a part failed;
2 no CUDA device (``results.json`` says why); 3 nothing failed, but the time budget skipped or cut
short a part; 130 interrupted (SIGINT/SIGTERM; what was measured is kept).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import gc
import importlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from compressor.deploy import ExportConfig
from compressor.app import export_bundle
from runtimes import BundleConfig
import shutil
import inspect

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # run as a file: find the project, and let no benchmarks/*.py shadow a package
    sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]

SCHEMA_VERSION = 1
EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SESSION_BATCH_SIZES = (1, 32)
PROJECT_PACKAGES = ("compressor", "runtimes", "benchmarks", "models")
OPTIONAL_PACKAGES = ("torchvision", "numpy", "onnx", "onnxruntime", "openvino", "tensorrt", "rich", "jsonschema",
                     "matplotlib", "scipy", "yaml", "sklearn", "pynvml")
# precision -> (torch dtype name, TF32 allowed in convs and matmuls)
PRECISIONS = {"fp32": ("float32", False), "tf32": ("float32", True), "fp16": ("float16", False)}
_OOM = re.compile(r"out of memory|CUDNN_STATUS_(ALLOC_FAILED|NOT_ENOUGH_WORKSPACE)|CUBLAS_STATUS_ALLOC_FAILED|"
                  r"failed to allocate memory", re.IGNORECASE)


class Skip(Exception):
    """A part cannot run. ``kind``: ``dependency`` (a package or device is missing), ``budget``,
    ``prerequisite`` (an earlier part failed), ``not_selected``, ``interrupted`` or ``no_cuda``."""

    def __init__(self, reason: str, kind: str = "dependency"):
        super().__init__(reason)
        self.reason, self.kind = reason, kind


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:600]}"


def is_out_of_memory(err: BaseException) -> bool:
    """torch's OutOfMemoryError, MemoryError, or a runtime's error that says it ran out of memory."""
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or bool(_OOM.search(str(err)))


def import_or_skip(module: str) -> types.ModuleType:
    """Import ``module``; a missing third-party package raises :class:`Skip` naming it.

    A broken project module (a syntax error, a missing project file) is a failure, not a skip.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = (err.name or "").split(".")[0]
        if not missing or missing in PROJECT_PACKAGES:
            raise
        raise Skip(f"`import {module}` needs {missing!r}, which is not installed ({_describe(err)})") from err


@functools.cache
def harness() -> types.SimpleNamespace:
    """``benchmarks/_timing.py`` and ``_stats.py`` (numpy only), loaded as a private package so that
    ``benchmarks/__init__.py`` (PyYAML, ...) is not imported."""
    name = "_gpu_check_harness"
    package = types.ModuleType(name)
    package.__path__ = [str(ROOT / "benchmarks")]
    sys.modules.setdefault(name, package)
    return types.SimpleNamespace(timing=importlib.import_module(f"{name}._timing"),
                                 stats=importlib.import_module(f"{name}._stats"),
                                 env=importlib.import_module(f"{name}._env"))


def sweep_batches(run: Callable[[int], dict[str, Any]], batch_sizes: Sequence[int], *,
                  time_left: Callable[[], float] = lambda: math.inf, growth: float = 2.5,
                  after_oom: Callable[[], None] | None = None) -> dict[str, Any]:
    """Call ``run(batch_size)`` for each batch size, in order, one row each.

    The sweep stops at the first out-of-memory (a row with status ``out_of_memory``; ``after_oom``
    is called once the exception, and the tensors its traceback holds, are released), at the first
    other error (status ``failed``), or when ``time_left()`` seconds are fewer than ``growth`` times
    the previous batch's wall time (the remaining batches become ``skipped`` rows).

    Returns:
        ``{"rows": [{"batch_size", "status", "wall_s", "error"?, **run's dict}], "stopped": None
        or {"batch_size", "why": "out of memory" | "error" | "time budget"}}``.
    """
    rows: list[dict[str, Any]] = []
    stopped: dict[str, Any] | None = None
    last_s = 0.0
    for i, bs in enumerate(batch_sizes):
        if time_left() < growth * last_s:
            rows += [{"batch_size": b, "status": "skipped", "reason": "time budget"} for b in batch_sizes[i:]]
            stopped = {"batch_size": bs, "why": "time budget"}
            break
        start = time.perf_counter()
        oom = False
        try:
            row = {"batch_size": bs, "status": "ok", **run(bs)}
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - an OOM or a failure at one batch size is a result
            oom = is_out_of_memory(err)
            row = {"batch_size": bs, "status": "out_of_memory" if oom else "failed", "error": _describe(err)}
            if not oom:
                row["traceback"] = traceback.format_exc(limit=8)
            stopped = {"batch_size": bs, "why": "out of memory" if oom else "error"}
        last_s = time.perf_counter() - start
        rows.append({**row, "wall_s": last_s})
        if oom and after_oom is not None:
            after_oom()
        if stopped is not None:
            break
    return {"rows": rows, "stopped": stopped}


def latency_row(samples: dict[str, list[float]], batch_size: int, theoretical: float | None,
                baseline: str = "unpruned", candidate: str = "pruned") -> dict[str, Any]:
    """Statistics of one batch size's interleaved samples (ms per call), and the practical speedup
    of ``candidate`` over ``baseline`` (median of per-round ratios) against ``theoretical``."""
    stats = harness().stats
    row: dict[str, Any] = {"models": {n: stats.summarize(s, batch_size).to_dict() for n, s in samples.items()},
                           "speedup": None}
    if baseline in samples and candidate in samples:
        speed = stats.paired_speedup(samples[baseline], samples[candidate])
        row["speedup"] = {"practical": speed.speedup_median, "practical_ci": list(speed.speedup_ci),
                          "rounds": speed.rounds, "theoretical": theoretical,
                          "efficiency": speed.speedup_median / theoretical if theoretical else None}
    return row


def speedup_curve(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The practical-vs-theoretical speedup per batch size, from :func:`sweep_batches` rows."""
    return [{"batch_size": r["batch_size"], **r["speedup"]} for r in rows
            if r.get("status") == "ok" and r.get("speedup")]


def _sweep_errors(sweep: dict[str, Any], what: str) -> list[str]:
    return [f"{what} batch {r['batch_size']}: {r['error']}" for r in sweep["rows"] if r["status"] == "failed"]


class Check:
    """The run's state: options, the deadline, the models, and the results being filled."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.output)
        self.deadline = time.monotonic() + args.budget_s
        self.device = args.device
        self.torch: Any = None
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.models: dict[str, Any] = {}  # "unpruned" / "pruned" -> eval-mode CPU model, once its part ran
        self.missing = {"unpruned": Skip("the model part did not run", "prerequisite"),
                        "pruned": Skip("the prune part did not run", "prerequisite")}
        self.theoretical: float | None = None
        self.costs: dict[str, dict[str, Any]] = {}
        self._onnx: dict[str, Path] = {}
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "kind": "gpu_check", "status": "running", "exit_code": None,
            "started_utc": _utc_now(), "finished_utc": None, "wall_s": None,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()},
            "parts": {},
        }
        self._start = time.perf_counter()

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def need(self, *names: str) -> None:
        """Raise Skip, with the reason its part gave, unless the named models were built."""
        for name in names:
            if name not in self.models:
                raise Skip(f"needs the {name} model: {self.missing[name].reason}", self.missing[name].kind)

    @property
    def timer_device(self) -> str:
        return "cuda" if self.device == "cuda" else "cpu"

    def timing(self) -> Any:
        a = self.args
        return harness().timing.TimingConfig(warmup=a.warmup, min_runs=a.min_rounds, max_runs=a.max_rounds,
                                             min_seconds=a.seconds_per_batch,
                                             max_seconds=max(3.0, 6 * a.seconds_per_batch))

    def free(self) -> None:
        gc.collect()
        if self.torch is not None and self.torch.cuda.is_initialized():
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    def on_device(self, name: str, precision: str) -> Any:
        dtype_name, tf32 = PRECISIONS[precision]
        if self.device == "cuda":  # process-wide switches: set before every sweep, recorded in its figures
            self.torch.backends.cudnn.allow_tf32 = tf32
            self.torch.backends.cuda.matmul.allow_tf32 = tf32
        return copy.deepcopy(self.models[name]).to(self.device, getattr(self.torch, dtype_name))

    def onnx_file(self, name: str) -> Path:
        """The model exported to ONNX once (legacy exporter: fast), with a dynamic batch dim."""
        if name not in self._onnx:

            path = self.work / f"{name}.onnx"
            example = self.torch.zeros(1, *self.args.input_size)
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(self.torch.onnx.export).parameters else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.torch.onnx.export(self.models[name], (example,), str(path), opset_version=17, **legacy,
                                       input_names=["input"], output_names=["output"],
                                       dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
            self._onnx[name] = path
        return self._onnx[name]

    def write(self) -> None:
        self.results["wall_s"] = time.perf_counter() - self._start
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.out / "results.json", json.dumps(_plain(self.results), indent=1, allow_nan=False))
        _atomic_write(self.out / "summary.md", render_summary(self.results))


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(obj: Any) -> Any:
    """JSON-safe: tuples as lists, numpy scalars as Python numbers, NaN/inf as None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the figures from other users of the folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- parts ---------------------------------------------------------------------------------------
def part_environment(check: Check, fig: dict[str, Any]) -> None:
    env = harness().env
    sha, dirty = env.git_revision()
    fig.update(python=platform.python_version(), platform=platform.platform(), cpu_model=env.cpu_model(),
               cpu_cores_available=env.available_cores(), git_sha=sha, git_dirty=dirty, packages={})
    for name in OPTIONAL_PACKAGES + PROJECT_PACKAGES:
        try:
            with warnings.catch_warnings():  # deprecation notices of __version__ and of import-time APIs
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                fig["packages"][name] = {"imports": True, "version": getattr(module, "__version__", None)}
        except Exception as err:  # noqa: BLE001 - recorded: that it does not import is the finding
            fig["packages"][name] = {"imports": False, "error": _describe(err)}
    if fig["packages"]["onnxruntime"]["imports"]:
        fig["onnxruntime_providers"] = sys.modules["onnxruntime"].get_available_providers()
    torch = check.torch
    fig.update(torch=torch.__version__, torch_cuda_build=torch.version.cuda, torch_threads=torch.get_num_threads(),
               cuda_available=torch.cuda.is_available(), cudnn=torch.backends.cudnn.version())
    if torch.cuda.is_available():
        get_driver = getattr(torch._C, "_cuda_getDriverVersion", None)  # the CUDA driver API version, e.g. 12080
        fig.update(device_count=torch.cuda.device_count(), cuda_driver_api_version=get_driver() if get_driver else None,
                   nvidia_driver=_nvidia_smi_driver(), gpus=[])
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            fig["gpus"].append({"index": i, "name": p.name, "capability": f"{p.major}.{p.minor}",
                                "total_memory_bytes": p.total_memory, "multiprocessors": p.multi_processor_count})


def _nvidia_smi_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def part_model(check: Check, fig: dict[str, Any]) -> None:
    models = import_or_skip("models")
    try:
        model = models.create_model(check.args.model)
    except ImportError as err:  # torchvision or timm
        raise Skip(f"{check.args.model} needs a package that does not import ({_describe(err)})") from err
    check.models["unpruned"] = model.eval()
    fig.update(model=check.args.model, input_size=list(check.args.input_size), weights="random-init, seed 0",
               params=sum(p.numel() for p in model.parameters()))


def part_prune(check: Check, fig: dict[str, Any]) -> None:
    check.need("unpruned")
    compressor = import_or_skip("compressor")
    a, torch = check.args, check.torch
    example = torch.randn(1, *a.input_size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    pruned = compressor.prune(check.models["unpruned"], example, "l2", target_flops=a.target_flops,
                              round_to=a.round_to).model  # explicit: round_to="auto" would probe CPU runtimes
    fig.update(criterion="l2", target_flops=a.target_flops, round_to=a.round_to, prune_s=time.perf_counter() - start)
    for name, model in (("unpruned", check.models["unpruned"]), ("pruned", pruned)):
        cost = compressor.count_cost(model, example).to_dict()
        check.costs[name] = {k: cost[k] for k in ("flops", "params", "mps_bytes", "fm_elements")}
    fig["cost"] = check.costs
    check.theoretical = check.costs["unpruned"]["flops"] / check.costs["pruned"]["flops"]
    fig.update(flops_ratio=1 / check.theoretical, theoretical_speedup=check.theoretical)
    check.models["pruned"] = pruned.eval()


def part_torch_latency(check: Check, fig: dict[str, Any]) -> None:
    check.need("unpruned")
    torch, timing = check.torch, check.timing()
    fig.update(timer="CUDA events" if check.device == "cuda" else "perf_counter", timing=timing.to_dict(),
               input="random normal, already on the device (no host-device copies)",
               cudnn_benchmark=torch.backends.cudnn.benchmark, theoretical_speedup=check.theoretical,
               models=list(check.models),
               pruned_missing=None if "pruned" in check.models else check.missing["pruned"].reason)
    errors = []
    for precision in check.args.precisions:
        variants = {name: check.on_device(name, precision) for name in check.models}
        dtype = getattr(torch, PRECISIONS[precision][0])

        def run(bs: int) -> dict[str, Any]:
            x = torch.randn(bs, *check.args.input_size, device=check.device, dtype=dtype)
            fns = {name: (lambda m=m: m(x)) for name, m in variants.items()}
            with torch.inference_mode():
                samples = harness().timing.interleaved(fns, timing, device=check.timer_device)
            return latency_row(samples, bs, check.theoretical)

        sweep = sweep_batches(run, check.args.batch_sizes, time_left=check.time_left, after_oom=check.free)
        fig[precision] = {"tf32": PRECISIONS[precision][1], **sweep, "speedup_curve": speedup_curve(sweep["rows"])}
        errors += _sweep_errors(sweep, precision)
        del variants
        check.free()
    if errors:
        raise RuntimeError("; ".join(errors))


def part_torch_memory(check: Check, fig: dict[str, Any]) -> None:
    if check.device != "cuda":
        raise Skip("the allocator peak is a CUDA measurement (--device cpu)")
    check.need("unpruned")
    torch = check.torch
    fig["method"] = ("one model on the device; one warm-up call, then reset_peak_memory_stats, one call, "
                     "max_memory_allocated (weights + activations + cuDNN workspace)")
    errors = []
    for precision in check.args.precisions:
        fig[precision] = {}
        for name in check.models:
            model = check.on_device(name, precision)
            dtype = getattr(torch, PRECISIONS[precision][0])
            cost = check.costs.get(name)

            def run(bs: int) -> dict[str, Any]:
                with torch.inference_mode():
                    x = torch.randn(bs, *check.args.input_size, device="cuda", dtype=dtype)
                    model(x)  # cuDNN's autotuning allocates on the first call at a shape
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    resident = torch.cuda.memory_allocated()
                    model(x)
                    torch.cuda.synchronize()
                row = {"resident_bytes": resident, "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                       "peak_reserved_bytes": torch.cuda.max_memory_reserved()}
                row["peak_over_resident_bytes"] = row["peak_allocated_bytes"] - resident
                if cost and dtype == torch.float32:  # FALF ConvNets eq. 10: TRM = MPS + FM * 4 * BS
                    row["theoretical_trm_bytes"] = cost["mps_bytes"] + cost["fm_elements"] * 4 * bs
                return row

            sweep = sweep_batches(run, check.args.batch_sizes, time_left=check.time_left, after_oom=check.free)
            fig[precision][name] = sweep
            errors += _sweep_errors(sweep, f"{precision} {name}")
            del model
            check.free()
    if errors:
        raise RuntimeError("; ".join(errors))


def _time_sessions(check: Check, sessions: dict[str, Any]) -> dict[str, Any]:
    timing = check.timing()

    def run(bs: int) -> dict[str, Any]:
        x = np.random.default_rng([0, bs]).standard_normal((bs, *check.args.input_size), dtype=np.float32)
        fns = {name: (lambda s=s: s.run(x)) for name, s in sessions.items()}
        samples = harness().timing.interleaved(fns, timing, device=check.timer_device)
        return latency_row(samples, bs, check.theoretical)

    sweep = sweep_batches(run, check.args.session_batch_sizes, time_left=check.time_left, after_oom=check.free)
    return {**sweep, "speedup_curve": speedup_curve(sweep["rows"]), "timing": timing.to_dict()}


def part_onnxruntime(check: Check, fig: dict[str, Any]) -> None:
    check.need("unpruned")
    runtimes = import_or_skip("runtimes")
    rt = runtimes.get_runtime("onnxruntime")
    reason = rt.is_available(check.device)
    if reason:
        raise Skip(f"onnxruntime on {check.device}: {reason}")
    sessions: dict[str, Any] = {}
    try:
        for name in check.models:
            sessions[name] = rt.load(check.onnx_file(name), runtimes.SessionConfig(device=check.device))
        fig["settings"] = {name: s.settings for name, s in sessions.items()}
        fallen = [n for n, s in sessions.items() if s.settings["device"] != check.device]
        if fallen:  # onnxruntime falls back to the CPU when the CUDA provider's libraries do not load
            raise Skip(f"onnxruntime lists CUDAExecutionProvider but ran {fallen} with providers "
                       f"{sessions[fallen[0]].settings['providers']}: its CUDA/cuDNN libraries did not load")
        fig["fp32"] = _time_sessions(check, sessions)
    finally:
        for session in sessions.values():
            session.close()
    errors = _sweep_errors(fig["fp32"], "fp32")
    if errors:
        raise RuntimeError("; ".join(errors))


def part_tensorrt(check: Check, fig: dict[str, Any]) -> None:
    check.need("unpruned")
    runtimes = import_or_skip("runtimes")
    rt = runtimes.get_runtime("tensorrt")
    reason = rt.is_available(check.device)
    if reason:
        raise Skip(f"tensorrt on {check.device}: {reason}")
    import_or_skip("onnx")  # the adapter reads the ONNX before parsing it
    top = max(check.args.session_batch_sizes)
    errors = []
    for precision in check.args.trt_precisions:
        fig[precision] = {"build_s": {}, "settings": {}}
        sessions: dict[str, Any] = {}
        try:
            for name in check.models:
                if check.time_left() < 90:  # a ResNet-50 engine takes tens of seconds to build
                    fig["truncated"] = f"time budget: no {precision} engine for {name} and after"
                    break
                start = time.perf_counter()
                engine = rt.build(check.onnx_file(name), check.work / f"trt_{name}_{precision}", precision=precision,
                                  min_batch=1, opt_batch=top, max_batch=top)
                fig[precision]["build_s"][name] = time.perf_counter() - start
                sessions[name] = rt.load(engine, runtimes.SessionConfig(device="cuda", precision=precision))
                fig[precision]["settings"][name] = sessions[name].settings
            if "truncated" in fig:
                break
            fig[precision].update(_time_sessions(check, sessions))
        finally:
            for session in sessions.values():
                session.close()
        errors += _sweep_errors(fig[precision], precision)
    if errors:
        raise RuntimeError("; ".join(errors))


def part_bench_harness(check: Check, fig: dict[str, Any]) -> None:
    check.need("unpruned", "pruned")
    benchmarks = import_or_skip("benchmarks")

    a, bundles = check.args, {}
    fig["export_s"] = {}
    for name, model in check.models.items():
        start = time.perf_counter()
        exported = export_bundle(model, check.work / f"bundle_{name}", tuple(a.input_size),
                                 BundleConfig(targets=("torch",), batch_sizes=(1,), threads=a.threads),
                                 ExportConfig(exporter="torchscript"),  # fast, and needs no onnxscript
                                 source=f"{a.model} ({name}, gpu_check)",
                                 weights={"origin": "random-init", "trained": False})
        fig["export_s"][name] = time.perf_counter() - start
        bundles[name] = exported.bundle.path
    timing = benchmarks.TimingConfig(warmup=a.warmup, min_runs=a.min_rounds, max_runs=a.max_rounds,
                                     min_seconds=a.seconds_per_batch, max_seconds=max(3.0, 6 * a.seconds_per_batch))
    config = benchmarks.BenchConfig(runtimes=("torch",), devices=(check.device,), batch_sizes=a.session_batch_sizes,
                                    threads=a.threads, timing=timing, memory=a.bench_memory, memory_timeout_s=180.0)
    with warnings.catch_warnings():  # its warnings are in results["warnings"], recorded below
        warnings.simplefilter("ignore", RuntimeWarning)
        results = benchmarks.run_benchmark([bundles["pruned"]], bundles["unpruned"], config, progress=False)
    fig["speedup"] = [{"runtime": r["runtime"], "device": r["device"], "batch_size": r["batch_size"],
                       "practical": r["practical"]["speedup_median"] if r["practical"] else None,
                       "theoretical": r["theoretical"], "efficiency": r["efficiency"]} for r in results["speedup"]]
    fig["latency"] = [{"runtime": r["runtime"], "device": r["device"], "batch_size": r["batch_size"],
                       "bundle": r["bundle"], "status": r["status"], "error": r["error"],
                       "latency_ms_median": r["stats"]["latency_ms_median"] if r["stats"] else None}
                      for r in results["latency"]]
    fig["memory"] = [{k: r.get(k) for k in ("runtime", "device", "batch_size", "bundle", "status", "error",
                                            "measured_bytes", "peak_bytes", "theoretical_bytes")}
                     for r in results["memory"]]
    fig.update(warnings=results["warnings"], skipped=results["skipped"], complete=results["complete"])
    try:
        benchmarks.write_report(results, check.out / "bench_report")
        fig["report"] = "bench_report/ (results.json, results.csv, summary.md, plots, report.html)"
    except ModuleNotFoundError as err:  # matplotlib or jsonschema: keep the raw results instead
        _atomic_write(check.out / "bench_results.json", json.dumps(_plain(results), indent=1, allow_nan=False))
        fig["report"] = f"not written ({_describe(err)}); raw results in bench_results.json"
    failed = [f"{r['bundle']} batch {r['batch_size']}: {r['error']}" for r in fig["latency"] + fig["memory"]
              if r["status"] not in ("ok", "oom")]
    if failed:
        raise RuntimeError("; ".join(failed))


# name -> (function, seconds it needs at least, what it measures)
PARTS: dict[str, tuple[Callable[[Check, dict[str, Any]], None], float, str]] = {
    "environment": (part_environment, 0.0, "GPU, driver, versions, optional packages"),
    "model": (part_model, 5.0, "the model, random weights"),
    "prune": (part_prune, 10.0, "pruned to the FLOPs target by our engine; theoretical speedup"),
    "torch_latency": (part_torch_latency, 30.0, "torch CUDA latency, throughput, speedup per batch"),
    "torch_memory": (part_torch_memory, 10.0, "allocator peak memory per batch"),
    "onnxruntime_cuda": (part_onnxruntime, 30.0, "onnxruntime CUDA provider latency"),
    "tensorrt": (part_tensorrt, 90.0, "TensorRT engines through runtimes, latency"),
    "bench_harness": (part_bench_harness, 90.0, "benchmarks.run_benchmark on the torch runtime"),
}


def run_part(check: Check, name: str) -> dict[str, Any]:
    fn, needs_s, _ = PARTS[name]
    part: dict[str, Any] = {"status": "running", "reason": None, "skip_kind": None, "error": None,
                            "wall_s": None, "figures": {}}
    check.results["parts"][name] = part
    start = time.perf_counter()
    try:
        if name not in check.args.parts:
            raise Skip("not selected (--parts)", "not_selected")
        if check.time_left() < needs_s:
            raise Skip(f"time budget: {max(check.time_left(), 0):.0f} s of {check.args.budget_s:.0f} s left, "
                       f"the part needs about {needs_s:.0f} s", "budget")
        fn(check, part["figures"])
        part["status"] = "ok"
    except Skip as skip:
        part.update(status="skipped", reason=skip.reason, skip_kind=skip.kind)
    except KeyboardInterrupt:
        part.update(status="skipped", reason="interrupted", skip_kind="interrupted")
        raise
    except Exception as err:  # noqa: BLE001 - a failed part is a result; the later parts still run
        part.update(status="failed", error=_describe(err), traceback=traceback.format_exc(limit=12))
    finally:
        part["wall_s"] = time.perf_counter() - start
        try:
            check.free()
        except Exception as err:  # noqa: BLE001 - a sticky CUDA error: record it, keep the results file
            part.update(status="failed", error=part["error"] or f"freeing device memory: {_describe(err)}")
        check.write()
    model = {"model": "unpruned", "prune": "pruned"}.get(name)
    if model and part["status"] != "ok":
        check.missing[model] = Skip(f"{name} {part['status']}: {part['reason'] or part['error']}",
                                    part["skip_kind"] or "prerequisite")
    return part


def exit_code(parts: dict[str, dict[str, Any]]) -> int:
    """1 if a part failed; 3 if the budget skipped or cut one short; else 0."""
    if any(p["status"] == "failed" for p in parts.values()):
        return EXIT_FAILED
    figures = [f for p in parts.values() for f in _walk(p.get("figures", {}))]
    if any(p.get("skip_kind") == "budget" for p in parts.values()) \
            or any(isinstance(f, dict) and (f.get("why") == "time budget" or "truncated" in f) for f in figures):
        return EXIT_INCOMPLETE
    return EXIT_OK


def _walk(obj: Any) -> Any:
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


# --- summary.md ----------------------------------------------------------------------------------
def _ms(stats: dict[str, Any] | None) -> str:
    return f"{stats['latency_ms_median']:.3f}" if stats else "-"


def _sps(stats: dict[str, Any] | None) -> str:
    return f"{stats['throughput_sps']:.0f}" if stats and stats.get("throughput_sps") is not None else "-"


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f}" if isinstance(value, (int, float)) else "-"


def _speedup_cells(sp: dict[str, Any] | None) -> list[str]:
    if not sp:
        return ["-", "-", "-"]
    lo, hi = sp["practical_ci"]
    return [f"{sp['practical']:.2f}x [{lo:.2f}, {hi:.2f}]",
            f"{sp['theoretical']:.2f}x" if sp.get("theoretical") else "-",
            f"{sp['efficiency']:.2f}" if sp.get("efficiency") is not None else "-"]


def _latency_table(sweep: dict[str, Any], memory: dict[str, Any] | None = None) -> list[str]:
    """One row per batch size; with ``memory`` (torch_memory's sweeps of one precision), the peaks too."""
    head = ["batch", "status", "unpruned ms", "unpruned samples/s", "pruned ms", "pruned samples/s",
            "practical speedup [95% CI]", "theoretical", "efficiency"]
    peaks = {name: {r["batch_size"]: r.get("peak_allocated_bytes") for r in s["rows"]}
             for name, s in (memory or {}).items()}
    head += [f"peak MiB {name}" for name in peaks]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for r in sweep["rows"]:
        models = r.get("models", {})
        u, p = models.get("unpruned"), models.get("pruned")
        status = r["status"] if r["status"] != "skipped" else f"skipped ({r.get('reason')})"
        cells = [str(r["batch_size"]), status, _ms(u), _sps(u), _ms(p), _sps(p), *_speedup_cells(r.get("speedup"))]
        cells += [_mib(by_batch.get(r["batch_size"])) for by_batch in peaks.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_summary(results: dict[str, Any]) -> str:
    """``summary.md``: the parts, then per-batch latency, throughput, memory and speedup tables."""
    parts = results["parts"]
    lines = [f"# GPU check ({results['status']}, exit {results['exit_code']})", "",
             f"Started {results['started_utc']}, {results.get('wall_s') or 0:.0f} s.", ""]
    env = parts.get("environment", {}).get("figures", {})
    gpus = ", ".join(f"{g['name']} (sm {g['capability']}, {_mib(g['total_memory_bytes'])} MiB)"
                     for g in env.get("gpus", [])) or "none"
    lines += [f"GPU: {gpus}; NVIDIA driver {env.get('nvidia_driver')}; torch {env.get('torch')} "
              f"(CUDA {env.get('torch_cuda_build')}, cuDNN {env.get('cudnn')}).", ""]
    missing = [n for n, p in env.get("packages", {}).items() if not p["imports"]]
    if missing:
        lines += [f"Not importable: {', '.join(missing)}.", ""]
    lines += ["| part | measures | status | reason / error | s |", "|---|---|---|---|---:|"]
    for name, p in parts.items():
        why = (p.get("reason") or p.get("error") or "").replace("|", "/")
        what = PARTS[name][2] if name in PARTS else ""
        lines.append(f"| {name} | {what} | {p['status']} | {why} | {p['wall_s'] or 0:.1f} |")
    prune = parts.get("prune", {}).get("figures", {})
    if prune.get("theoretical_speedup"):
        lines += ["", f"Pruned: {prune['criterion']}, target FLOPs {prune['target_flops']}, round_to "
                      f"{prune['round_to']}: FLOPs kept {prune['flops_ratio']:.3f}, theoretical speedup "
                      f"{prune['theoretical_speedup']:.2f}x (pruning took {prune['prune_s']:.1f} s)."]
    latency = parts.get("torch_latency", {}).get("figures", {})
    memory = parts.get("torch_memory", {}).get("figures", {})
    for precision in PRECISIONS:
        if precision in latency:
            lines += ["", f"## torch, {precision} ({latency.get('timer')}, input on the device)", "",
                      *_latency_table(latency[precision], memory.get(precision))]
    for part, title in (("onnxruntime_cuda", "onnxruntime"), ("tensorrt", "TensorRT")):
        figures = parts.get(part, {}).get("figures", {})
        for precision in ("fp32", "fp16"):
            if isinstance(figures.get(precision), dict) and "rows" in figures[precision]:
                built = ", ".join(f"{n} {t:.0f} s" for n, t in figures[precision].get("build_s", {}).items())
                lines += ["", f"## {title}, {precision} (numpy in and out: copies included)", "",
                          *([f"Engines built in: {built}.", ""] if built else []), *_latency_table(figures[precision])]
    bench = parts.get("bench_harness", {}).get("figures", {})
    if bench.get("speedup"):
        lines += ["", "## benchmarks.run_benchmark (torch runtime)", "",
                  "| device | batch | practical | theoretical | efficiency |", "|---|---:|---:|---:|---:|"]
        for r in bench["speedup"]:
            lines.append(f"| {r['device']} | {r['batch_size']} | {r['practical'] or 0:.2f}x | "
                         f"{r['theoretical'] or 0:.2f}x | {r['efficiency'] or 0:.2f} |")
    return "\n".join(lines) + "\n"


# --- entry point ---------------------------------------------------------------------------------
def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive comma-separated integers, got {text!r}")
    return values


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"unknown {unknown or '(none)'}; choose from {', '.join(allowed)}")
        return values
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit codes: 0 ok (or skipped for a missing dependency), 1 a part failed, 2 no "
                                       "CUDA device, 3 the time budget skipped or cut short a part, 130 interrupted.")
    p.add_argument("--output", default="gpu_check_out", help="folder for results.json and summary.md")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting work after this many seconds")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                   help="cpu: a dry run of the code paths (the CUDA-only parts skip)")
    p.add_argument("--parts", type=_choices(tuple(PARTS)), default=tuple(PARTS), help="comma-separated subset")
    p.add_argument("--model", default="torchvision:resnet50", help="a models.create_model name")
    p.add_argument("--input-size", type=_int_list, default=(3, 224, 224), help="one sample's shape, e.g. 3,224,224")
    p.add_argument("--batch-sizes", type=_int_list, default=DEFAULT_BATCH_SIZES, help="torch sweep (stops at OOM)")
    p.add_argument("--session-batch-sizes", type=_int_list, default=SESSION_BATCH_SIZES,
                   help="onnxruntime, TensorRT and bench-harness batch sizes")
    p.add_argument("--precisions", type=_choices(tuple(PRECISIONS)), default=("fp32", "fp16"),
                   help="torch precisions: fp32 (TF32 off), tf32, fp16 (.half())")
    p.add_argument("--trt-precisions", type=_choices(("fp32", "fp16")), default=("fp16",))
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the cores available)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per batch size")
    p.add_argument("--min-rounds", type=int, default=10)
    p.add_argument("--max-rounds", type=int, default=300)
    p.add_argument("--seconds-per-batch", type=float, default=0.5, help="minimum timed seconds per batch size")
    p.add_argument("--no-bench-memory", dest="bench_memory", action="store_false",
                   help="skip the bench harness's memory subprocesses")
    args = p.parse_args(argv)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return args


def _cuda_reason(torch: Any) -> str | None:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None)"
    if not torch.cuda.is_available():
        return (f"torch.cuda.is_available() is False (torch {torch.__version__} built for CUDA {torch.version.cuda}; "
                "no GPU or driver visible)")
    return None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check = Check(args)
    signal.signal(signal.SIGTERM, _interrupt)
    code = EXIT_OK
    try:
        try:
            import torch  # optional SDK: torch
        except ImportError as err:
            torch, reason = None, f"torch cannot be imported ({_describe(err)})"
        else:
            check.torch = torch
            torch.set_num_threads(args.threads)
            reason = _cuda_reason(torch) if args.device == "cuda" else None
        if torch is not None:
            run_part(check, "environment")
        if reason is not None:
            for name in PARTS:
                check.results["parts"].setdefault(name, {"status": "skipped", "reason": f"no CUDA device: {reason}",
                                                         "skip_kind": "no_cuda", "error": None, "wall_s": 0.0,
                                                         "figures": {}})
            check.results.update(status="no_cuda", no_cuda_reason=reason)
            print(f"no CUDA device: {reason}", file=sys.stderr)
            return _finish(check, EXIT_NO_CUDA)
        torch.manual_seed(0)
        torch.backends.cudnn.benchmark = args.device == "cuda"  # deployed GPUs autotune; the warm-up absorbs it
        if args.device == "cpu":  # random weights decay into subnormals, which slow CPU kernels 10-100x
            torch.set_flush_denormal(True)
        for name in list(PARTS)[1:]:
            run_part(check, name)
        code = exit_code(check.results["parts"])
    except KeyboardInterrupt:
        for name in PARTS:
            check.results["parts"].setdefault(name, {"status": "skipped", "reason": "interrupted",
                                                     "skip_kind": "interrupted", "error": None, "wall_s": 0.0,
                                                     "figures": {}})
        check.results["status"] = "interrupted"
        code = EXIT_INTERRUPTED
    return _finish(check, code)


def _finish(check: Check, code: int) -> int:
    if check.results["status"] == "running":
        check.results["status"] = {EXIT_OK: "ok", EXIT_FAILED: "failed", EXIT_INCOMPLETE: "incomplete"}.get(code, "?")
    check.results.update(exit_code=code, finished_utc=_utc_now())
    check.write()
    shutil.rmtree(check.work, ignore_errors=True)
    for name, part in check.results["parts"].items():
        why = part.get("reason") or part.get("error") or ""
        print(f"{name:17s} {part['status']:8s} {why}"[:240], file=sys.stderr)
    print(f"figures: {check.out / 'results.json'} and {check.out / 'summary.md'} (exit {code})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
