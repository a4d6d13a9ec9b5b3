"""Numerical parity of a runtime's outputs against the PyTorch reference.

:func:`compare` judges one output array; :func:`compare_outputs` every output of a model (a
detector's heads), one :class:`ParityResult` each, named, so that a failure says which output.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from compressor.common.errors import EXIT_PARITY_FAILED, CompressorError

# (max relative error, min cosine similarity) by precision; relative = max|a-b| / max|ref|.
# INT8 is judged on the mean cosine and top-1 agreement on held-out data, its errors recorded, not
# judged (None): a quantized model is not meant to compute the same numbers, only the same answers
# (the worst sample's cosine is recorded too).
TOLERANCES: dict[str, tuple[float | None, float]] = {"fp32": (1e-4, 0.99999), "fp16": (2e-2, 0.999),
                                                     "int8": (None, 0.99)}
INT8_MIN_TOP1_AGREEMENT = 0.98  # of a classifier's argmax (2-D outputs), against the FP32 model


@dataclass
class ParityResult:
    runtime: str
    device: str
    precision: str
    batch_size: int
    max_abs_error: float
    max_rel_error: float
    cosine_similarity: float  # the worst sample's
    top1_agreement: float  # fraction of samples whose argmax agrees
    tolerance_rel: float | None  # None: recorded, not judged (int8)
    tolerance_cosine: float
    passed: bool
    output: str | None = None  # the output's name (None: not recorded, e.g. a bundle from before multi-output)
    tolerance_top1: float | None = None  # the floor on top1_agreement (int8 classifiers); None: not judged
    mean_cosine_similarity: float | None = None  # over the samples; what INT8 is judged on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        which = f"output {self.output!r} on " if self.output is not None else ""
        # INT8 runs are over the held-out samples, in batches: their count, not a batch size
        size = f"on {self.batch_size} held-out samples" if self.precision == "int8" else f"batch {self.batch_size}"
        return (f"{which}{self.runtime}/{self.device}/{self.precision} {size}: "
                f"max abs {self.max_abs_error:.2e}, "
                f"rel {self.max_rel_error:.2e}{_tol(self.tolerance_rel)}, {self._cosine()} "
                f"(tol {self.tolerance_cosine:g}), top-1 agreement {self.top1_agreement:.1%}"
                f"{_tol(self.tolerance_top1, 'floor')}: {verdict}")


    def _cosine(self) -> str:
        if self.precision == "int8" and self.mean_cosine_similarity is not None:
            return f"mean cosine {self.mean_cosine_similarity:.6f} (worst sample {self.cosine_similarity:.4f})"
        return f"cosine {self.cosine_similarity:.6f}"


def _tol(value: float | None, word: str = "tol") -> str:
    return "" if value is None else f" ({word} {value:g})"


def floors_for(precision: str, floors: dict[str, float] | None = None) -> tuple[float | None, float, float | None]:
    """``(max relative error, min cosine, min top-1 agreement)`` a run of ``precision`` is judged by;
    ``floors`` (``{"cosine": .., "top1_agreement": ..}``) overrides INT8's defaults."""
    rel, cosine = TOLERANCES[precision]
    if precision != "int8":
        return rel, cosine, None
    floors = floors or {}
    return rel, floors.get("cosine", cosine), floors.get("top1_agreement", INT8_MIN_TOP1_AGREEMENT)


def judge(rel: float, cosine: float, top1: float, tolerances: tuple[float | None, float, float | None],
          judge_top1: bool) -> bool:
    """Whether errors hold under tolerances (top-1 agreement only where ``judge_top1``: logits)."""
    tol_rel, tol_cos, tol_top1 = tolerances
    return ((tol_rel is None or rel <= tol_rel) and cosine >= tol_cos
            and (tol_top1 is None or not judge_top1 or top1 >= tol_top1))


class ParityError(CompressorError):
    """An artifact does not compute the same function as the PyTorch model; carries the numbers."""

    exit_code = EXIT_PARITY_FAILED

    def __init__(self, results: list[ParityResult]):
        self.results = results
        super().__init__("parity check failed:\n  " + "\n  ".join(r.describe() for r in results if not r.passed))


def _failed(reference: np.ndarray, runtime: str, device: str, precision: str, name: str | None,
            floors: dict[str, float] | None = None) -> ParityResult:
    rel, cosine, top1 = floors_for(precision, floors)
    return ParityResult(runtime, device, precision, int(reference.shape[0]) if reference.ndim else 1,
                        float("inf"), float("inf"), 0.0, 0.0, rel, cosine, False, name, top1)


def compare(reference: np.ndarray, output: np.ndarray, *, runtime: str, device: str, precision: str,
            name: str | None = None, floors: dict[str, float] | None = None) -> ParityResult:
    """Compare one batch of one output with the reference (same shape).

    Args:
        reference, output: the PyTorch and the runtime's arrays, batch first.
        runtime, device, precision: recorded; ``precision`` picks the tolerances.
        name: the output's name, recorded and quoted in failures.
        floors: INT8's floors ``{"cosine": .., "top1_agreement": ..}`` (default 0.99 and 0.98);
            top-1 agreement is judged on 2-D outputs (logits) only.

    Raises:
        ParityError: the shapes differ.
    """
    if reference.shape != output.shape:
        raise ParityError([_failed(reference, runtime, device, precision, name, floors)])
    ref = reference.astype(np.float64)
    out = output.astype(np.float64)
    diff = np.abs(ref - out)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = max_abs / scale if scale > 0 else max_abs
    n = ref.shape[0] if ref.ndim else 1
    a, b = ref.reshape(n, -1), out.reshape(n, -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    top1 = float((a.argmax(axis=1) == b.argmax(axis=1)).mean()) if a.shape[1] else 1.0
    tolerances = floors_for(precision, floors)
    worst_cos = float(cos.min()) if cos.size else 1.0
    mean_cos = float(cos.mean()) if cos.size else 1.0
    judged_cos = mean_cos if precision == "int8" else worst_cos
    passed = judge(rel, judged_cos, top1, tolerances, ref.ndim == 2) and bool(np.isfinite(out).all())
    tol_top1 = tolerances[2] if ref.ndim == 2 else None
    return ParityResult(runtime, device, precision, int(n), max_abs, rel, worst_cos, top1, tolerances[0],
                        tolerances[1], passed, name, tol_top1, mean_cos)


def compare_outputs(references: Sequence[np.ndarray], outputs: Sequence[np.ndarray], names: Sequence[str], *,
                    runtime: str, device: str, precision: str,
                    floors: dict[str, float] | None = None) -> list[ParityResult]:
    """Compare every output of one batch with the reference: one result per output, in order.

    Args:
        references: the PyTorch outputs, one array per name.
        outputs: the runtime's outputs (``Session.run_all``).
        names: the outputs' names.

    Raises:
        ParityError: the runtime returned another number of outputs, or an output of another
            shape; the message names the output(s).
        ValueError: ``references`` and ``names`` differ in length.
    """
    if len(references) != len(names):
        raise ValueError(f"{len(references)} reference outputs for {len(names)} output names {list(names)}")
    if len(outputs) != len(references):
        missing = list(names[len(outputs):]) or [f"extra output #{i}" for i in range(len(names), len(outputs))]
        raise ParityError([_failed(references[0], runtime, device, precision,
                                   f"{name} ({runtime} returned {len(outputs)} outputs, PyTorch {len(references)})",
                                   floors)
                           for name in missing])
    return [compare(ref, out, runtime=runtime, device=device, precision=precision, name=name, floors=floors)
            for ref, out, name in zip(references, outputs, names)]
