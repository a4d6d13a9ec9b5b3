"""Precision as a dimension of a benchmark: what each artifact computes in, and what it is worth.

An INT8 bundle (issue 18) may ship artifacts of different precisions. Its manifest says
``artifact_precision``: ``{target: "fp32" | "fp16" | "int8"}``, where a target whose INT8 artifact
was refused (by the accuracy budget or the speed guard) ships ``"fp32"``. Older bundles lack it;
every artifact then computes in ``manifest["precision"]``, itself ``"fp32"`` when absent
(:func:`artifact_precision`).

At export, each runtime measured the INT8-over-FP32 speedup of the same (pruned) model at the
deployment batch size: ``int8.targets[target].speed.speedup``, the *INT8 factor*. Pruning promises
the FLOPs ratio; quantisation promises that factor. So when a candidate computes in INT8 and its
baseline does not, the speedup to expect of it is their product, and the efficiency is
``practical / (theoretical * int8_factor)`` (:func:`precision_efficiency`); without a factor it
stays ``practical / theoretical``, with the precisions marked as different.

A results dict carries the precision on every latency and memory row (schema_version 2);
:func:`row_precision` also reads a schema_version 1 report, whose rows were all opened at its
``config.precision``. The bundle entries of a results dict carry the manifest's figures keyed by
runtime name (:func:`int8_by_runtime`, :func:`manifest_accuracy`), so the report and the gate
need no manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from compressor.common.config import is_int, is_number
from runtimes import RUNTIME_TARGET, TARGET_RUNTIME

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "REQUESTS", "applied_int8_factor", "artifact_precision",
           "bundle_artifact_precision", "int8_by_runtime", "int8_factor", "manifest_accuracy", "precision_efficiency",
           "precision_problem", "row_precision", "RowPrecision", "speedup_precision"]

PRECISIONS = ("fp32", "fp16", "int8")
REQUESTS = ("auto", *PRECISIONS)  # what a benchmark may ask for: "auto" opens each artifact at its own
DEFAULT_PRECISION = "fp32"
_SPEED_KEYS = ("fp32_ms_median", "int8_ms_median", "speedup", "speedup_ci", "batch_size", "threads", "runtime")


# ----------------------------------------------------------------------------- manifests


def artifact_precision(manifest: Mapping[str, Any], target: str) -> str:
    """The precision ``target``'s artifact computes in: ``artifact_precision[target]``, else the
    bundle's ``precision``, else ``"fp32"`` (a bundle written before either existed)."""
    by_target = manifest.get("artifact_precision") or {}
    return by_target.get(target) or manifest.get("precision") or DEFAULT_PRECISION


def precision_problem(manifest: Mapping[str, Any]) -> str | None:
    """What is wrong with a manifest's precision fields, or None; the caller names the file."""
    fields = {"precision": manifest.get("precision"),
              **{f"artifact_precision[{t!r}]": p for t, p in (manifest.get("artifact_precision") or {}).items()}}
    for key, value in fields.items():
        if value is not None and value not in PRECISIONS:
            return f"{key} is {value!r}; expected one of {', '.join(PRECISIONS)}"
    return None


def _fraction(value: Any) -> bool:
    return is_number(value) and 0 <= value <= 1


def manifest_accuracy(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest's ``accuracy`` section, reduced to what results.json records: the metric,
    split and sample count, and the ``fp32`` and ``shipped`` top-1 per runtime that are fractions.
    None when the manifest has none."""
    accuracy = manifest.get("accuracy")
    if not isinstance(accuracy, Mapping):
        return None
    samples = accuracy.get("samples")
    out: dict[str, Any] = {"metric": str(accuracy.get("metric", "top1")),
                           "split": accuracy.get("split") if isinstance(accuracy.get("split"), str) else None,
                           "samples": samples if is_int(samples) else None}
    for kind in ("fp32", "shipped"):
        by_runtime = accuracy.get(kind) if isinstance(accuracy.get(kind), Mapping) else {}
        out[kind] = {str(rt): float(v) for rt, v in by_runtime.items() if _fraction(v)}
    return out


def int8_by_runtime(manifest: Mapping[str, Any]) -> tuple[dict[str, float] | None, dict[str, Any] | None]:
    """``(int8_factor, int8_decision)`` of a manifest's ``int8.targets``, keyed by runtime name.

    ``int8_factor`` maps a runtime to the INT8-over-FP32 speedup its guard measured;
    ``int8_decision`` to ``{"decision", "reason", "speed"}``. Both None without an ``int8`` section.
    """
    targets = (manifest.get("int8") or {}).get("targets")
    if not isinstance(targets, Mapping):
        return None, None
    factors: dict[str, float] = {}
    decisions: dict[str, Any] = {}
    for target, entry in targets.items():
        if not isinstance(entry, Mapping):
            continue
        runtime = TARGET_RUNTIME.get(target, target)
        speed = entry.get("speed") if isinstance(entry.get("speed"), Mapping) else None
        speedup = speed.get("speedup") if speed else None
        if is_number(speedup) and speedup > 0:
            factors[runtime] = float(speedup)
        decision = entry.get("decision")
        decisions[runtime] = {"decision": decision if decision in PRECISIONS else None,
                              "reason": entry.get("reason") if isinstance(entry.get("reason"), str) else None,
                              "speed": {k: speed.get(k) for k in _SPEED_KEYS if k in speed} if speed else None}
    return factors, decisions


# ----------------------------------------------------------------------------- results dicts


def bundle_artifact_precision(bundle: Mapping[str, Any], runtime: str) -> str:
    """The precision of ``runtime``'s artifact of a results.json bundle entry (fp32 for an old one)."""
    return artifact_precision(bundle, RUNTIME_TARGET.get(runtime, runtime))


def row_precision(results: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """The precision a latency/memory/speedup row's artifact was opened at.

    A schema_version 2 row says so; a version 1 report opened every artifact at its
    ``config.precision``; failing both, the bundle entry's artifact precision.
    """
    if row.get("precision"):
        return row["precision"]
    forced = (results.get("config") or {}).get("precision")
    if forced in PRECISIONS:
        return forced
    bundle = next((b for b in results.get("bundles", ()) if b.get("name") == row["bundle"]), {})
    return bundle_artifact_precision(bundle, row["runtime"])


def int8_factor(bundle: Mapping[str, Any], runtime: str) -> float | None:
    """The INT8 factor a results.json bundle entry records for ``runtime``, or None."""
    return (bundle.get("int8_factor") or {}).get(runtime)


def applied_int8_factor(precision: str, baseline_precision: str, factor: float | None) -> float | None:
    """The INT8 factor a candidate's speedup is expected to carry: its own INT8-over-FP32 figure when
    it computes in INT8 and its baseline does not; None otherwise (or when the figure is unknown)."""
    return factor if precision == "int8" and baseline_precision != "int8" and factor else None


def precision_efficiency(practical: float | None, theoretical: float | None, precision: str,
                         baseline_precision: str, factor: float | None) -> tuple[float | None, float | None]:
    """``(efficiency, int8 factor applied)`` of a candidate over its baseline.

    efficiency = practical / (theoretical * factor) where :func:`applied_int8_factor` gives a
    factor, else practical / theoretical; None when practical or theoretical is unknown.
    """
    applied = applied_int8_factor(precision, baseline_precision, factor)
    if practical is None or not theoretical:
        return None, applied
    return practical / (theoretical * (applied or 1.0)), applied


@dataclass(frozen=True)
class RowPrecision:
    """A row's precision and, for a candidate's speedup row, what the precisions do to its efficiency.

    Attributes:
        precision: the precision the row's artifact was opened at.
        baseline: the baseline's at the same runtime and batch size; None for a row without one.
        int8_factor: the INT8 factor applied to the efficiency (:func:`applied_int8_factor`).
        efficiency: practical / (theoretical * int8_factor), the factor taken as 1 when None.
    """

    precision: str
    baseline: str | None = None
    int8_factor: float | None = None
    efficiency: float | None = None

    @property
    def differs(self) -> bool:
        return self.baseline is not None and self.baseline != self.precision


def speedup_precision(results: Mapping[str, Any], speedup: Mapping[str, Any]) -> RowPrecision:
    """The precisions of a speedup row's candidate and baseline and the efficiency they imply; a row
    written before it carried them takes them from its bundles (:func:`row_precision`)."""
    precision = row_precision(results, speedup)
    baseline = speedup.get("baseline_precision") or row_precision(
        results, {"bundle": speedup["baseline"], "runtime": speedup["runtime"]})
    factor = speedup.get("int8_factor")
    if "int8_factor" not in speedup:
        bundle = next((b for b in results["bundles"] if b["name"] == speedup["bundle"]), {})
        factor = int8_factor(bundle, speedup["runtime"])
    practical = speedup["practical"]["speedup_median"] if speedup.get("practical") else None
    efficiency, applied = precision_efficiency(practical, speedup["theoretical"], precision, baseline, factor)
    return RowPrecision(precision, baseline, applied, efficiency)
