"""Measured runtime memory (TRM) of a model artifact, in a fresh subprocess.

The practical counterpart of the theoretical TRM of seed 002 eq. 10 (``MPS + FM * 4 * BS``,
``compressor.count_cost(...).trm_bytes(bs)``). Resident memory can only be measured cleanly in
a process that holds nothing else, so :func:`measure_memory` starts a child Python
(``python -m benchmarks._memory``) that:

1. imports the runtime's SDK (its import is not the model's memory),
2. records ``VmRSS`` from ``/proc/self/status`` as the baseline and resets the peak
   (``VmHWM``) to it by writing ``5`` to ``/proc/self/clear_refs``,
3. loads the artifact with ``runtimes.get_runtime(name).load(path, SessionConfig(device="cpu",
   threads=N))`` and records ``VmRSS`` again,
4. creates a random normal float32 batch and runs it ``runs`` times,
5. reports ``VmHWM`` as the peak, and the session's settings, as one JSON line on stdout.

``increase_bytes = peak_rss_bytes - baseline_rss_bytes`` is what the model, its input and its
activations cost (weights, the runtime's arenas and workspaces). Linux only (``/proc``).
Only CPU memory is measured: GPU memory (the torch allocator's peak, device memory in use)
is a different quantity and is not implemented here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["MemoryResult", "measure_memory", "read_proc_status_bytes"]

_RESULT_MARKER = "@@benchmarks._memory result@@ "
_ERROR_MARKER = "@@benchmarks._memory error@@ "
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # holds the benchmarks and runtimes packages
_STDERR_TAIL_CHARS = 2000


@dataclass(frozen=True)
class MemoryResult:
    """Resident memory of one runtime session on one artifact at one batch size.

    Attributes:
        runtime: the registry name (``"onnxruntime"``, ``"openvino"``, ``"torch"``, ...).
        artifact: the file (or saved directory) that was loaded.
        device: ``"cpu"``.
        batch_size, threads, runs: the batch that was run, intra-op threads, how many runs.
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``.
        baseline_rss_bytes: the child's VmRSS after importing the SDK, before loading the model.
        loaded_rss_bytes: VmRSS after loading the model, before the first run.
        peak_rss_bytes: VmHWM after the runs (peak resident memory since the baseline when
            ``peak_reset``, else since the child started).
        increase_bytes: ``peak_rss_bytes - baseline_rss_bytes``, the measured TRM.
        peak_reset: whether the kernel accepted resetting VmHWM at the baseline; if not, the
            peak may include a transient from the SDK's import.
        settings: the session's ``settings`` (runtime, version, threads, providers, ...).
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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryResult:
        """Inverse of :meth:`to_dict`. Raises ValueError on unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown MemoryResult keys {unknown}; known: {sorted(names)}")
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
                   seed: int = 0) -> MemoryResult:
    """Measure a session's resident memory in a fresh subprocess (see the module docstring).

    Args:
        runtime: a registered runtime name (``runtimes.list_runtimes()``).
        artifact: what that runtime loads (.onnx, OpenVINO .xml, a saved model directory).
        input_shape: one sample's shape, e.g. ``(3, 32, 32)``; a bundle manifest's
            ``["batch", 3, 32, 32]`` is accepted as is.
        batch_size: samples per run.
        threads: the session's intra-op CPU threads.
        runs: how many batches to run (the peak usually settles after the first).
        timeout_s: seconds before the child is killed.
        device: only ``"cpu"``.
        seed: seed of the random normal input batch.

    Raises:
        ValueError: bad arguments, an unknown runtime (the message lists the known ones), or a
            device other than ``"cpu"``.
        FileNotFoundError: ``artifact`` does not exist (the message names it).
        RuntimeError: the child failed or timed out; the message names the artifact and the
            runtime and carries the tail of the child's stderr.
    """
    if device != "cpu":
        raise ValueError(f"only CPU memory measurement is implemented, got device={device!r}; "
                         "GPU memory (torch allocator peak, device memory) is not measured")
    from runtimes import get_runtime

    get_runtime(runtime)  # an unknown name fails here, listing the known ones
    shape = _sample_shape(input_shape)
    for name, value in (("batch_size", batch_size), ("threads", threads), ("runs", runs)):
        _check_positive_int(name, value)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
            or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    path = Path(artifact).resolve()
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist; cannot measure {runtime} memory")

    cmd = [sys.executable, "-m", "benchmarks._memory", "--runtime", runtime, "--artifact", str(path),
           "--shape", ",".join(map(str, shape)), "--batch-size", str(batch_size), "--threads", str(threads),
           "--runs", str(runs), "--seed", str(seed)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    what = f"{runtime} memory measurement of {path} (batch {batch_size})"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as err:
        tail = _tail(err.stderr)
        raise RuntimeError(f"{what} timed out after {timeout_s} s" + (f"; child stderr:\n{tail}" if tail else "")) \
            from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        reason = f"exit status {proc.returncode}" if proc.returncode != 0 else "no result line on stdout"
        errors = [line[len(_ERROR_MARKER):] for line in proc.stderr.splitlines() if line.startswith(_ERROR_MARKER)]
        headline = f": {errors[-1]}" if errors else ""
        raise RuntimeError(f"{what} failed ({reason}){headline}\nchild stderr (tail):\n"
                           f"{_tail(proc.stderr) or '(empty)'}")
    report = json.loads(lines[-1][len(_RESULT_MARKER):])
    return MemoryResult(
        runtime=runtime, artifact=str(path), device="cpu", batch_size=batch_size, threads=threads, runs=runs,
        input_shape=shape, baseline_rss_bytes=report["baseline_rss_bytes"],
        loaded_rss_bytes=report["loaded_rss_bytes"], peak_rss_bytes=report["peak_rss_bytes"],
        increase_bytes=report["peak_rss_bytes"] - report["baseline_rss_bytes"],
        peak_reset=report["peak_reset"], settings=report["settings"],
    )


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


def _child(runtime: str, artifact: Path, shape: tuple[int, ...], batch_size: int, threads: int, runs: int,
           seed: int) -> dict[str, Any]:
    """The measurement itself; runs in the fresh subprocess."""
    import gc

    import numpy as np

    from runtimes import SessionConfig, get_runtime

    rt = get_runtime(runtime)
    rt.require("cpu")  # import the SDK before the baseline: its import is not the model's memory
    rng = np.random.default_rng(seed)
    gc.collect()
    baseline = read_proc_status_bytes("VmRSS")["VmRSS"]
    peak_reset = _reset_peak_rss()
    session = rt.load(artifact, SessionConfig(device="cpu", threads=threads))
    try:
        loaded = read_proc_status_bytes("VmRSS")["VmRSS"]
        x = rng.standard_normal((batch_size, *shape), dtype=np.float32)  # the input is runtime memory too
        for _ in range(runs):
            session.run(x)
        peak = read_proc_status_bytes("VmHWM")["VmHWM"]
        settings = session.settings
    finally:
        session.close()
    return {"baseline_rss_bytes": baseline, "loaded_rss_bytes": loaded, "peak_rss_bytes": peak,
            "peak_reset": peak_reset, "settings": settings}


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
    args = parser.parse_args(argv)
    shape = tuple(int(d) for d in args.shape.split(","))
    try:
        report = _child(args.runtime, args.artifact, shape, args.batch_size, args.threads, args.runs, args.seed)
    except Exception as err:
        traceback.print_exc()
        # one marked line with the error itself, which the parent quotes in its exception
        message = " ".join(str(err).split())
        print(f"{_ERROR_MARKER}{type(err).__name__}: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
    # one marked line, so that anything an SDK prints on stdout cannot be mistaken for the result
    print(_RESULT_MARKER + json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
