"""Measured runtime memory (TRM) of a model artifact, in a fresh subprocess.

The practical counterpart of the theoretical TRM of "FALF ConvNets: Fatuous auxiliary loss based
filter-pruning for efficient deep CNNs", eq. 10 (``MPS + FM * 4 * BS``,
``compressor.count_cost(...).trm_bytes(bs)``). Memory can only be measured cleanly in a process
that holds nothing else, so :func:`measure_memory` starts a child Python
(``python -m benchmarks._memory``) that:

1. imports the runtime's SDK (its import is not the model's memory) and, on ``device="cuda"``,
   creates the CUDA context (torch's primary context, which onnxruntime and TensorRT share),
2. records the baseline: ``VmRSS`` from ``/proc/self/status`` (and resets the peak ``VmHWM`` to
   it by writing ``5`` to ``/proc/self/clear_refs``) and, on CUDA, the process's device memory,
3. loads the artifact with ``runtimes.get_runtime(name).load(path, SessionConfig(device=...,
   threads=N, precision=P))`` and samples both again,
4. creates a random normal float32 batch and runs it ``runs`` times (sampling after each run),
5. reports ``VmHWM`` and the device peak, and the session's settings, as one JSON line.

Device memory on CUDA is measured one of three ways (``MemoryResult.device_method``):

* ``"torch-allocator"`` (the torch runtime): ``torch.cuda.max_memory_allocated()`` since a
  reset at the baseline: tensors only (weights, input, activations, cuDNN workspaces), not the
  context or the allocator's cached slack (``device_reserved_peak_bytes`` has the latter).
* ``"nvml-process"`` (the other runtimes): this process's used memory from NVML
  (``pynvml`` of the ``nvidia-ml-py`` package). It is sampled, so a transient inside one run is
  missed; arenas (onnxruntime's BFC arena, torch's cache) keep their high water, so it is not.
* ``"cuda-mem-get-info"``: the fallback when pynvml is missing or NVML cannot see this process
  (a container's PID namespace): ``total - free`` of ``cudaMemGetInfo``, which is device-wide
  and so includes what other processes allocate meanwhile. ``device_note`` says why.

``increase_bytes`` is the measured TRM: ``peak_rss_bytes - baseline_rss_bytes`` on the CPU,
``device_peak_bytes - device_baseline_bytes`` on CUDA (the RSS fields are filled on both).
TensorRT's ``engine_device_memory_bytes`` (the activation memory the engine asks for) is
recorded next to it. Linux only (``/proc``). Running out of memory raises :class:`MemoryOOM`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from compressor.common.errors import CompressorError, EXIT_NOT_MEASURED
from benchmarks._records import check_known_keys
from runtimes import get_runtime, RuntimeUnavailable, SessionConfig
import gc
import importlib
import numpy as np

__all__ = ["MemoryOOM", "MemoryResult", "is_out_of_memory", "measure_memory", "nvml_process_memory_bytes",
           "read_proc_status_bytes"]

DEVICES = ("cpu", "cuda")
DEVICE_METHODS = ("torch-allocator", "nvml-process", "cuda-mem-get-info")
_RESULT_MARKER = "@@benchmarks._memory result@@ "
_ERROR_MARKER = "@@benchmarks._memory error@@ "
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # holds the benchmarks and runtimes packages
_STDERR_TAIL_CHARS = 2000
# torch.OutOfMemoryError, numpy's _ArrayMemoryError, "CUDA out of memory", onnxruntime's BFC arena
# ("Failed to allocate memory for requested buffer"), the driver (CUDA_ERROR_OUT_OF_MEMORY), the
# runtime (cudaErrorMemoryAllocation), cuDNN/cuBLAS (*_STATUS_ALLOC_FAILED), TensorRT ("Error Code 2:
# OutOfMemory", "Requested amount of GPU memory ... could not be allocated"), C++ (std::bad_alloc)
_OOM_PATTERN = re.compile(r"out.of.memory|outofmemory|memoryerror|failed to allocate|could not be allocated"
                          r"|cudaErrorMemoryAllocation|alloc_failed|bad_alloc|cannot allocate memory", re.IGNORECASE)


class MemoryOOM(CompressorError, RuntimeError):
    """The measurement ran out of memory (host or device): the child's error says so, or the
    kernel's out-of-memory killer ended it. A sweep records this batch size as "oom"."""

    exit_code = EXIT_NOT_MEASURED

    def __init__(self, message: str, *, runtime: str, device: str, batch_size: int):
        super().__init__(message)
        self.runtime, self.device, self.batch_size = runtime, device, batch_size


def is_out_of_memory(message: str) -> bool:
    """Whether an error message (``"OutOfMemoryError: CUDA out of memory..."``) means out of memory."""
    return bool(_OOM_PATTERN.search(message))


@dataclass(frozen=True)
class MemoryResult:
    """Memory of one runtime session on one artifact at one batch size.

    Attributes:
        runtime: the registry name (``"onnxruntime"``, ``"openvino"``, ``"torch"``, ...).
        artifact: the file (or saved directory) that was loaded.
        device: ``"cpu"`` or ``"cuda"``.
        batch_size, threads, runs: the batch that was run, intra-op threads, how many runs.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        baseline_rss_bytes: the child's VmRSS after importing the SDK (and creating the CUDA
            context), before loading the model.
        loaded_rss_bytes: VmRSS after loading the model, before the first run.
        peak_rss_bytes: VmHWM after the runs (peak resident memory since the baseline when
            ``peak_reset``, else since the child started).
        increase_bytes: the measured TRM: ``peak_rss_bytes - baseline_rss_bytes`` on the CPU,
            ``device_increase_bytes`` on CUDA.
        peak_reset: whether the kernel accepted resetting VmHWM at the baseline; if not, the
            peak may include a transient from the SDK's import.
        settings: the session's ``settings`` (runtime, version, threads, providers, ...).
        device_baseline_bytes, device_loaded_bytes, device_peak_bytes: device memory at the
            baseline, after loading, and the peak (CUDA only; None on the CPU).
        device_increase_bytes: ``device_peak_bytes - device_baseline_bytes``.
        device_reserved_peak_bytes: ``torch.cuda.max_memory_reserved()`` (torch runtime only).
        device_method: how device memory was read, one of :data:`DEVICE_METHODS` (module docstring).
        device_note: why a fallback method was used, else None.
        engine_device_memory_bytes: TensorRT's engine device memory size (tensorrt only).
    """

    runtime: str
    artifact: str
    device: str
    batch_size: int
    threads: int
    runs: int
    input_shape: tuple[int, ...]
    baseline_rss_bytes: int
    loaded_rss_bytes: int
    peak_rss_bytes: int
    increase_bytes: int
    peak_reset: bool
    settings: dict[str, Any]
    device_baseline_bytes: int | None = None
    device_loaded_bytes: int | None = None
    device_peak_bytes: int | None = None
    device_increase_bytes: int | None = None
    device_reserved_peak_bytes: int | None = None
    device_method: str | None = None
    device_note: str | None = None
    engine_device_memory_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryResult:
        """Inverse of :meth:`to_dict`; dicts without the device fields (CPU-only results) load
        with them None. Raises ValueError on unknown keys."""
        check_known_keys(cls, data)
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


def read_proc_status_bytes(*keys: str, pid: int | str = "self") -> dict[str, int]:
    """Read memory fields (``"VmRSS"``, ``"VmHWM"``, ...) of ``/proc/<pid>/status``, in bytes.

    Raises:
        RuntimeError: ``/proc`` is unavailable (not Linux) or a field is missing.
    """
    path = Path(f"/proc/{pid}/status")
    try:
        text = path.read_text()
    except OSError as err:
        raise RuntimeError(f"cannot read {path} (memory measurement needs Linux /proc): {err}") from err
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB":
            fields[name] = int(parts[0]) * 1024
    missing = [k for k in keys if k not in fields]
    if missing:
        raise RuntimeError(f"{path} has no {', '.join(missing)} field")
    return {k: fields[k] for k in keys}


def nvml_process_memory_bytes(nvml: Any, pid: int) -> int | None:
    """Device memory that NVML attributes to process ``pid``, summed over all devices, in bytes.

    Args:
        nvml: the initialised ``pynvml`` module (or an object with its ``nvmlDeviceGetCount``,
            ``nvmlDeviceGetHandleByIndex`` and ``nvmlDeviceGetComputeRunningProcesses``).
        pid: the process id as NVML sees it (the host's, in a container without the host PID
            namespace, which is why the process may not be listed).

    Returns:
        The bytes, or None when no device lists ``pid`` with a known amount (``usedGpuMemory``
        is None where NVML cannot tell, e.g. under WDDM).
    """
    used = [p.usedGpuMemory for i in range(nvml.nvmlDeviceGetCount())
            for p in nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(i))
            if p.pid == pid and p.usedGpuMemory is not None]
    return sum(used) if used else None


def _sample_shape(input_shape: Sequence[Any]) -> tuple[int, ...]:
    """One sample's shape; a leading batch label (``"batch"``/None, as in a bundle manifest's
    ``["batch", C, H, W]``) is dropped."""
    shape = list(input_shape)
    if shape and (shape[0] is None or isinstance(shape[0], str)):
        shape = shape[1:]
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise ValueError(f"input_shape must be one sample's positive int dims (e.g. (3, 32, 32), optionally "
                         f"led by 'batch'), got {tuple(input_shape)!r}")
    return tuple(shape)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def measure_memory(runtime: str, artifact: str | Path, input_shape: Sequence[Any], batch_size: int,
                   threads: int = 1, runs: int = 3, timeout_s: float = 300, *, device: str = "cpu",
                   seed: int = 0, precision: str = "fp32") -> MemoryResult:
    """Measure a session's memory in a fresh subprocess (see the module docstring).

    Args:
        runtime: a registered runtime name (``runtimes.list_runtimes()``).
        artifact: what that runtime loads (.onnx, OpenVINO .xml, TensorRT .engine, a saved model
            directory).
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``; a bundle manifest's
            ``["batch", 3, 32, 32]`` is accepted as is.
        batch_size: samples per run.
        threads: the session's intra-op CPU threads.
        runs: how many batches to run (the peak usually settles after the first).
        timeout_s: seconds before the child is killed.
        device: ``"cpu"`` (resident memory) or ``"cuda"`` (device memory; torch, onnxruntime
            with the CUDA provider, tensorrt). OpenVINO's ``"gpu"`` plugin is not measured.
        seed: seed of the random normal input batch.
        precision: what the artifact is loaded as (``SessionConfig.precision``): the precision it
            was built with (an INT8 artifact needs ``"int8"``), or ``"fp16"`` for an OpenVINO FP32 IR.

    Raises:
        ValueError: bad arguments, an unknown runtime (the message lists the known ones), or a
            device other than ``"cpu"``/``"cuda"``.
        RuntimeUnavailable: the runtime cannot use ``device`` here (no CUDA device, a CPU-only
            onnxruntime, ...); raised before any subprocess starts, naming the device and reason.
        FileNotFoundError: ``artifact`` does not exist (the message names it).
        MemoryOOM: the child ran out of memory, or was killed by the out-of-memory killer.
        RuntimeError: the child failed otherwise or timed out; the message names the artifact
            and the runtime and carries the tail of the child's stderr.
    """
    if device not in DEVICES:
        why = (": OpenVINO's GPU plugin drives Intel GPUs, whose memory neither NVML nor the CUDA allocator "
               "reports; the CUDA runtimes (torch, onnxruntime, tensorrt) take device='cuda'") if device == "gpu" else ""
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}{why}")

    rt = get_runtime(runtime)  # an unknown name fails here, listing the known ones
    shape = _sample_shape(input_shape)
    for name, value in (("batch_size", batch_size), ("threads", threads), ("runs", runs)):
        _check_positive_int(name, value)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    SessionConfig(device=device, precision=precision)  # a bad precision fails here, named, not in the child
    path = Path(artifact).resolve()
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist; cannot measure {runtime} memory")
    reason = rt.is_available(device)  # fail here, not in a child that has paid for its imports
    if reason is not None:
        raise RuntimeUnavailable(f"cannot measure {runtime} memory on device {device!r}: {reason}",
                                 runtime=runtime, reason=reason)

    cmd = [sys.executable, "-m", "benchmarks._memory", "--runtime", runtime, "--artifact", str(path),
           "--shape", ",".join(map(str, shape)), "--batch-size", str(batch_size), "--threads", str(threads),
           "--runs", str(runs), "--seed", str(seed), "--device", device, "--precision", precision]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    what = f"{runtime} {device} memory measurement of {path} (batch {batch_size})"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as err:
        tail = _tail(err.stderr)
        raise RuntimeError(f"{what} timed out after {timeout_s} s" + (f"; child stderr:\n{tail}" if tail else "")) \
            from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        _raise_child_failure(what, proc, runtime=runtime, device=device, batch_size=batch_size)
    report = json.loads(lines[-1][len(_RESULT_MARKER):])
    rss_increase = report["peak_rss_bytes"] - report["baseline_rss_bytes"]
    device_fields = {k: report[k] for k in ("device_baseline_bytes", "device_loaded_bytes", "device_peak_bytes",
                                            "device_reserved_peak_bytes", "device_method", "device_note")
                     if k in report}
    if device == "cuda":
        device_fields["device_increase_bytes"] = report["device_peak_bytes"] - report["device_baseline_bytes"]
    return MemoryResult(
        runtime=runtime, artifact=str(path), device=device, batch_size=batch_size, threads=threads, runs=runs,
        input_shape=shape, baseline_rss_bytes=report["baseline_rss_bytes"],
        loaded_rss_bytes=report["loaded_rss_bytes"], peak_rss_bytes=report["peak_rss_bytes"],
        increase_bytes=device_fields["device_increase_bytes"] if device == "cuda" else rss_increase,
        peak_reset=report["peak_reset"], settings=report["settings"],
        engine_device_memory_bytes=report.get("engine_device_memory_bytes"), **device_fields,
    )


def _raise_child_failure(what: str, proc: subprocess.CompletedProcess, **context: Any) -> NoReturn:
    """Raise MemoryOOM or RuntimeError for a child that failed or printed no result."""
    code = proc.returncode
    reason = f"exit status {code}" if code != 0 else "no result line on stdout"
    errors = [line[len(_ERROR_MARKER):] for line in proc.stderr.splitlines() if line.startswith(_ERROR_MARKER)]
    headline = f": {errors[-1]}" if errors else ""
    stderr = f"\nchild stderr (tail):\n{_tail(proc.stderr) or '(empty)'}"
    if code in (-signal.SIGKILL, 128 + signal.SIGKILL):
        # SIGKILL that we did not send (a timeout raises above): on Linux, the out-of-memory killer
        raise MemoryOOM(f"{what} ran out of memory: the child was killed by SIGKILL ({reason}), most likely by "
                        f"the kernel's out-of-memory killer (see `dmesg`){headline}{stderr}", **context)
    # without a marked error line (a native abort), the stderr tail is all there is to go on
    if code != 0 and is_out_of_memory(errors[-1] if errors else _tail(proc.stderr)):
        raise MemoryOOM(f"{what} ran out of memory ({reason}){headline}{stderr}", **context)
    raise RuntimeError(f"{what} failed ({reason}){headline}{stderr}")


def _tail(text: str | bytes | None) -> str:
    """The last whole lines of ``text`` within _STDERR_TAIL_CHARS characters."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text.strip()
    if len(text) <= _STDERR_TAIL_CHARS:
        return text
    cut = text[-_STDERR_TAIL_CHARS:]
    return "..." + cut[cut.find("\n"):] if "\n" in cut else cut


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current VmRSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class _DeviceMemoryProbe:
    """This child's CUDA memory, sampled (the three methods of the module docstring)."""

    def __init__(self, runtime: str):
        import torch  # optional SDK: torch

        self._torch = torch
        torch.cuda.init()
        torch.cuda.synchronize()  # creates the primary context now, so that it is in the baseline
        self._nvml: Any = None
        self.note: str | None = None
        self.samples: list[int] = []
        if runtime == "torch":
            self.method = "torch-allocator"
            return
        self.method = "cuda-mem-get-info"
        try:
            import pynvml  # optional SDK: pynvml
        except ImportError as err:
            self.note = f"pynvml is not installed ({err}); install nvidia-ml-py"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:  # e.g. the driver's libnvidia-ml is missing
            self.note = f"NVML failed to initialise ({type(err).__name__}: {err})"
            return
        if nvml_process_memory_bytes(pynvml, os.getpid()) is None:
            pynvml.nvmlShutdown()
            self.note = (f"NVML lists no device memory for pid {os.getpid()} (a container's PID namespace "
                         "hides it); the figures are device-wide")
            return
        self.method, self._nvml = "nvml-process", pynvml

    def sample(self) -> int:
        torch = self._torch
        torch.cuda.synchronize()
        if self.method == "torch-allocator":
            value = torch.cuda.memory_allocated()
        elif self._nvml is not None:
            value = nvml_process_memory_bytes(self._nvml, os.getpid())
            if value is None:
                raise RuntimeError(f"NVML stopped listing pid {os.getpid()} during the measurement")
        else:
            free, total = torch.cuda.mem_get_info()
            value = total - free
        self.samples.append(value)
        return value

    def reset_peak(self) -> None:
        if self.method == "torch-allocator":
            self._torch.cuda.reset_peak_memory_stats()

    def report(self) -> dict[str, Any]:
        torch = self._torch
        torch.cuda.synchronize()
        allocator = self.method == "torch-allocator"
        return {"device_baseline_bytes": self.samples[0], "device_loaded_bytes": self.samples[1],
                "device_peak_bytes": torch.cuda.max_memory_allocated() if allocator else max(self.samples),
                "device_reserved_peak_bytes": torch.cuda.max_memory_reserved() if allocator else None,
                "device_method": self.method, "device_note": self.note}

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()


def _engine_device_memory_bytes(session: Any) -> int | None:
    """TensorRT's engine device memory size, from the session's settings or its engine."""
    if session.settings.get("engine_device_memory_bytes") is not None:
        return int(session.settings["engine_device_memory_bytes"])
    engine = getattr(session.native, "engine", None)  # an IExecutionContext's engine
    size = getattr(engine, "device_memory_size_v2", getattr(engine, "device_memory_size", None))
    return None if size is None else int(size)


def _child(runtime: str, artifact: Path, shape: tuple[int, ...], batch_size: int, threads: int, runs: int,
           seed: int, device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """The measurement itself; runs in the fresh subprocess."""

    rt = get_runtime(runtime)
    rt.require(device)  # import the SDK before the baseline: its import is not the model's memory
    for module in rt.loader_modules:  # the loader's own code (the torch runtime's saved-model reader) too
        importlib.import_module(module)
    probe = _DeviceMemoryProbe(runtime) if device == "cuda" else None
    rng = np.random.default_rng(seed)
    try:
        gc.collect()
        baseline = read_proc_status_bytes("VmRSS")["VmRSS"]
        if probe:
            probe.sample()
            probe.reset_peak()
        peak_reset = _reset_peak_rss()
        session = rt.load(artifact, SessionConfig(device=device, threads=threads, precision=precision))
        try:
            loaded = read_proc_status_bytes("VmRSS")["VmRSS"]
            if probe:
                probe.sample()
            x = rng.standard_normal((batch_size, *shape), dtype=np.float32)  # the input is runtime memory too
            for _ in range(runs):
                session.run_all(x)  # every output: a detector's heads are all runtime memory
                if probe:
                    probe.sample()
            peak = read_proc_status_bytes("VmHWM")["VmHWM"]
            settings = session.settings
            engine = _engine_device_memory_bytes(session) if probe else None
            device_report = probe.report() if probe else {}
        finally:
            session.close()
    finally:
        if probe:
            probe.close()
    return {"baseline_rss_bytes": baseline, "loaded_rss_bytes": loaded, "peak_rss_bytes": peak,
            "peak_reset": peak_reset, "settings": settings, "engine_device_memory_bytes": engine, **device_report}


def main(argv: Sequence[str] | None = None) -> None:
    """Child entry point: ``python -m benchmarks._memory --runtime R --artifact P --shape C,H,W ...``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--shape", required=True, help="one sample's shape, comma-separated, e.g. 3,32,32")
    parser.add_argument("--batch-size", required=True, type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--precision", default="fp32", help="SessionConfig.precision of the artifact")
    args = parser.parse_args(argv)
    shape = tuple(int(d) for d in args.shape.split(","))
    try:
        report = _child(args.runtime, args.artifact, shape, args.batch_size, args.threads, args.runs, args.seed,
                        args.device, args.precision)
    except Exception as err:  # noqa: BLE001 - any failure is reported to the parent, which raises it
        traceback.print_exc()
        # one marked line with the error itself, which the parent quotes in its exception
        message = " ".join(str(err).split())
        print(f"{_ERROR_MARKER}{type(err).__name__}: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    # one marked line, so that anything an SDK prints on stdout cannot be mistaken for the result
    print(_RESULT_MARKER + json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
