"""The environment a benchmark ran in: CPU, cores, OS, GPU, package versions, git revision.

Every report records it, so that two reports can be compared only when their machines and
software agree. Nothing here imports torch unless a CUDA device was benchmarked.
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, Sequence
from runtimes import package_versions

__all__ = ["available_cores", "collect_environment", "cpu_model", "git_revision"]

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = ("cnn-compressor", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino",
             "tensorrt", "numpy")


def cpu_model() -> str | None:
    """The CPU's marketing name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def git_revision(root: Path = _PROJECT_ROOT) -> tuple[str | None, bool | None]:
    """``(sha, dirty)`` of the project's checkout, or ``(None, None)`` outside a git checkout."""
    git = shutil.which("git")
    if git is None or not (root / ".git").exists():
        return None, None
    try:
        sha = subprocess.run([git, "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run([git, "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return sha or None, bool(status.strip())


def _versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **package_versions(_PACKAGES)}


def _gpu_name(devices: Sequence[str]) -> str | None:
    if "cuda" not in devices:
        return None
    import torch  # optional SDK: torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def collect_environment(devices: Sequence[str] = ("cpu",)) -> dict[str, Any]:
    """The ``environment`` object of a results file (see ``benchmarks/results.schema.json``).

    Args:
        devices: the devices benchmarked; the GPU's name is looked up only when ``"cuda"`` is one.
    """
    sha, dirty = git_revision()
    return {
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count() or 1,
        "cpu_cores_available": available_cores(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
        "gpu": _gpu_name(devices),
        "versions": _versions(),
        "git_sha": sha,
        "git_dirty": dirty,
    }
