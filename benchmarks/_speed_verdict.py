"""The speed verdict of a pruned candidate: is it really faster than its baseline?

A candidate is measured against its baseline as a *practical* speedup (the median of the
per-round latency ratios baseline / candidate) and a *theoretical* one (the FLOPs ratio);
efficiency = practical / theoretical. The verdict is one of

* ``"slower"``: the median ratio is below 1.0. The median decides, not the confidence interval:
  a pruned model that is not faster has missed its purpose whether or not the gap is
  significant. The interval is quoted in the message, so a reader sees when it straddles 1.0.
* ``"inefficient"``: faster, but the efficiency is below the floor (:data:`EFFICIENCY_FLOOR`):
  most of the FLOPs removed did not turn into time.
* ``"ok"``: otherwise, and always when the theoretical speedup is within
  :data:`UNPRUNED_TOLERANCE` of 1 or below it: nothing was pruned, so there is nothing to expect.

The message says what was measured, the likely cause and the fix. ``compressor bench`` (its
report and its terminal summary) and the prune command's speed guard share :func:`speed_verdict`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from benchmarks._records import check_known_keys
from benchmarks._stats import efficiency as efficiency_of

__all__ = ["EFFICIENCY_FLOOR", "LEVELS", "SpeedVerdict", "row_verdict", "speed_verdict", "speed_warnings"]

EFFICIENCY_FLOOR = 0.8
UNPRUNED_TOLERANCE = 0.05  # a theoretical speedup up to 1.05 means "nothing pruned"
LEVELS = ("ok", "inefficient", "slower")
_SUGGESTED_ROUND_TO = 16  # a multiple of the AVX-512 / tensor-core widths of fp32 and fp16


@dataclass(frozen=True)
class SpeedVerdict:
    """The verdict on one candidate at one runtime and batch size.

    Attributes:
        level: ``"ok"``, ``"inefficient"`` (faster, but efficiency below the floor) or
            ``"slower"`` (median speedup below 1.0); see the module docstring.
        practical: the measured speedup, the median of the per-round ratios.
        theoretical: the FLOPs ratio, baseline / candidate.
        efficiency: practical / theoretical.
        message: what was measured and, unless the level is ``"ok"``, the likely cause and the fix.
    """

    level: str
    practical: float
    theoretical: float
    efficiency: float
    message: str

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(map(repr, LEVELS))}, got {self.level!r}")

    @property
    def ok(self) -> bool:
        return self.level == "ok"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpeedVerdict:
        """Inverse of :meth:`to_dict`. Raises ValueError on unknown keys or a bad level."""
        check_known_keys(cls, data)
        return cls(**data)


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")


def _cause_and_fix(alignment: int | None) -> str:
    if alignment is None or alignment == 1:
        return ("Likely cause: kept channel widths that are not multiples of the runtime's vector width; "
                f"re-prune with the default --round-to auto, or --round-to {_SUGGESTED_ROUND_TO}.")
    return (f"The widths are already multiples of {alignment}, so at this batch size the model is likely bound "
            "by per-call overhead or memory traffic rather than by its channels; try a larger batch size, or "
            "profile it per op to find the slow one.")


def speed_verdict(practical: float, theoretical: float, *, ci: tuple[float, float] | None = None,
                  runtime: str = "", batch_size: int | None = None, alignment: int | None = None,
                  floor: float = EFFICIENCY_FLOOR, int8_factor: float | None = None) -> SpeedVerdict:
    """Judge a measured speedup against the FLOPs speedup it was meant to deliver.

    Args:
        practical: measured speedup over the baseline (median of per-round ratios; > 1 is faster).
        theoretical: FLOPs ratio, baseline / candidate.
        ci: the confidence interval of ``practical``, quoted in the message.
        runtime: the runtime measured on (e.g. ``"onnxruntime"``), quoted in the message.
        batch_size: the batch size measured at, quoted in the message.
        alignment: the multiple the kept channel widths were rounded to (``--round-to``); ``None``
            when unknown. ``None`` or 1 blames the alignment, a larger value per-call overhead.
        floor: the efficiency below which a faster candidate is ``"inefficient"``.
        int8_factor: for an INT8 candidate against an FP32 baseline, the INT8/FP32 speedup its
            export measured; ``theoretical`` is then the FLOPs ratio times it, and the message
            says so and where a shortfall may come from.

    Returns:
        The :class:`SpeedVerdict`.

    Raises:
        ValueError: ``practical``, ``theoretical`` or ``floor`` is not a finite positive number,
            ``ci`` is not two numbers, or ``alignment`` is not a positive int.
    """
    _check_positive("practical", practical)
    _check_positive("theoretical", theoretical)
    _check_positive("floor", floor)
    if ci is not None and (len(ci) != 2 or not all(isinstance(v, numbers.Real) for v in ci)):
        raise ValueError(f"ci must be (low, high), got {ci!r}")
    if alignment is not None and (isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1):
        raise ValueError(f"alignment must be a positive int or None, got {alignment!r}")
    efficiency = efficiency_of(practical, theoretical)
    where = " ".join(part for part in (f"on {runtime}" if runtime else "",
                                       f"at batch {batch_size}" if batch_size is not None else "") if part)
    interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci is not None else ""
    against = (f"an expected {theoretical:.2f}x (FLOPs {theoretical / int8_factor:.2f}x times the INT8 factor "
               f"{int8_factor:.2f}x its export measured)" if int8_factor else f"a theoretical {theoretical:.2f}x")
    measured = (f"Measured {practical:.2f}x{interval} against {against} "
                f"(efficiency {efficiency:.0%}){' ' + where if where else ''}")
    cause = _cause_and_fix(alignment)
    if int8_factor:
        flops = theoretical / int8_factor
        cause = (("" if flops <= 1 + UNPRUNED_TOLERANCE else cause + " ")
                 + "The INT8 factor comes from the export's speed guard (its batch size, a separate run): "
                 "INT8 may gain less at this batch size or under these session settings.")
    if theoretical <= 1 + UNPRUNED_TOLERANCE:
        level, message = "ok", f"{measured}: nothing was pruned, so no speedup is expected."
    elif practical < 1.0:
        level = "slower"
        message = (f"{measured}: the candidate is slower, it takes {1 / practical:.3g}x its baseline's time. "
                   f"{cause}")
    elif efficiency < floor:
        level = "inefficient"
        message = (f"{measured}: faster, but under {floor:.0%} of the "
                   f"{'expected' if int8_factor else 'FLOPs'} speedup. {cause}")
    else:
        level, message = "ok", f"{measured}."
    return SpeedVerdict(level, float(practical), float(theoretical), efficiency, message)


def row_verdict(row: Mapping[str, Any]) -> SpeedVerdict | None:
    """The verdict of one speedup row of a results dict (``benchmarks/results.schema.json``).

    The sweep stores it as ``row["verdict"]``, judged with the candidate's alignment; a row
    written before that field existed is judged here, with the alignment unknown. ``None`` when
    the row has no practical or no theoretical speedup (one side did not run, FLOPs unknown).
    """
    if row.get("verdict") is not None:
        return SpeedVerdict.from_dict(row["verdict"])
    practical, theoretical = row.get("practical"), row.get("theoretical")
    if not practical or not theoretical:
        return None
    return speed_verdict(practical["speedup_median"], theoretical, ci=tuple(practical["speedup_ci"]),
                         runtime=row["runtime"], batch_size=row["batch_size"])


def speed_warnings(results: Mapping[str, Any]) -> list[tuple[dict[str, Any], SpeedVerdict]]:
    """The ``(speedup row, verdict)`` of every slower or inefficient row, in the rows' order."""
    out = []
    for row in results["speedup"]:
        verdict = row_verdict(row)
        if verdict is not None and not verdict.ok:
            out.append((row, verdict))
    return out
