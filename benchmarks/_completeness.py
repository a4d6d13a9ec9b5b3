"""What a benchmark report lacks: the measurements that failed, and the rows it never got to.

``compressor bench`` exits non-zero on :func:`failed_measurements` and prints each one's cause;
``compressor gate`` refuses to pass an incomplete report and names its :func:`absent_rows`.
"""
from __future__ import annotations

from typing import Any

from compressor.common.errors import EXIT_NOT_MEASURED

__all__ = ["EXIT_MEASUREMENT_FAILED", "absent_rows", "describe_failure", "describe_rows", "failed_measurements"]

# the release gate's "not measured" (benchmarks._gate.EXIT_UNMEASURED): one meaning, one number
EXIT_MEASUREMENT_FAILED = EXIT_NOT_MEASURED  # compressor.common.errors
_CONSEQUENCE = "not measured: the latency run at this batch size failed"  # a memory row the latency failure explains


def failed_measurements(results: dict[str, Any], *, oom_is_failure: bool = True) -> list[dict[str, Any]]:
    """The latency and memory rows whose measurement failed, each with ``"table"`` added.

    A memory row left out because the latency run at its batch size failed is not listed again.

    Args:
        results: a ``results.json`` dict.
        oom_is_failure: count ``"oom"`` rows. Pass False for a default batch-size sweep, which
            is meant to stop at the first out-of-memory batch; ``"error"`` rows always count.
    """
    bad = ("error", "oom") if oom_is_failure else ("error",)
    out = []
    for table in ("latency", "memory"):
        for row in results[table]:
            if row["status"] in bad and not (table == "memory" and row.get("error") == _CONSEQUENCE):
                out.append({"table": table, **row})
    return out


def describe_failure(row: dict[str, Any]) -> str:
    """``bundle pruned, onnxruntime/cpu, batch 8, latency: error: RuntimeError: ...``."""
    return (f"bundle {row['bundle']}, {row['runtime']}/{row['device']}, batch {row['batch_size']}, {row['table']}: "
            f"{row['status']}: {row.get('error') or '(no message)'}")


def _expected_batch_sizes(config: dict[str, Any], device: str) -> list[int]:
    by_device = config.get("batch_sizes_by_device") or {}
    return list(by_device.get(device, config["batch_sizes"]))


def absent_rows(results: dict[str, Any]) -> list[tuple[str, str, str, int, str]]:
    """``(table, runtime, device, batch_size, bundle)`` of every latency (and, when memory was
    requested, memory) row the report's config asks for that the report does not hold.

    Runtimes recorded as skipped on a device are not expected there.
    """
    config = results["config"]
    skipped = {(s["runtime"], s["device"]) for s in results["skipped"]}
    bundles = [b["name"] for b in results["bundles"]]
    tables = ["latency"] + (["memory"] if config.get("memory", bool(results["memory"])) else [])
    out = []
    for table in tables:
        present = {(r["runtime"], r["device"], r["batch_size"], r["bundle"]) for r in results[table]}
        for device in config["devices"]:
            for runtime in config["runtimes"]:
                if (runtime, device) in skipped:
                    continue
                for bs in _expected_batch_sizes(config, device):
                    out += [(table, runtime, device, bs, b) for b in bundles if (runtime, device, bs, b) not in present]
    return out


def describe_rows(rows: list[tuple[str, str, str, int, str]]) -> list[str]:
    """One line per (table, runtime, device, batch size): ``latency onnxruntime/cpu batch 8: base, pruned``."""
    grouped: dict[tuple[str, str, str, int], list[str]] = {}
    for table, runtime, device, bs, bundle in rows:
        grouped.setdefault((table, runtime, device, bs), []).append(bundle)
    return [f"absent: {table} {runtime}/{device} batch {bs}: {', '.join(names)}"
            for (table, runtime, device, bs), names in grouped.items()]
