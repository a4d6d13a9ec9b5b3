"""Numerical parity of a runtime's outputs against the PyTorch reference.

:func:`compare` judges one output array; :func:`compare_outputs` every output of a model (a
detector's heads), one :class:`ParityResult` each, named, so that a failure says which output.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from compressor.common.errors import EXIT_PARITY_FAILED, CompressorError

# (max relative error, min cosine similarity) by precision; relative = max|a-b| / max|ref|
TOLERANCES = {"fp32": (1e-4, 0.99999), "fp16": (2e-2, 0.999)}


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
    tolerance_rel: float
    tolerance_cosine: float
    passed: bool
    output: str | None = None  # the output's name (None: not recorded, e.g. a bundle from before multi-output)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        which = f"output {self.output!r} on " if self.output is not None else ""
        return (f"{which}{self.runtime}/{self.device}/{self.precision} batch {self.batch_size}: "
                f"max abs {self.max_abs_error:.2e}, "
                f"rel {self.max_rel_error:.2e} (tol {self.tolerance_rel:g}), cosine {self.cosine_similarity:.6f} "
                f"(tol {self.tolerance_cosine:g}), top-1 agreement {self.top1_agreement:.1%}: {verdict}")


class ParityError(CompressorError):
    """An artifact does not compute the same function as the PyTorch model; carries the numbers."""

    exit_code = EXIT_PARITY_FAILED

    def __init__(self, results: list[ParityResult]):
        self.results = results
        super().__init__("parity check failed:\n  " + "\n  ".join(r.describe() for r in results if not r.passed))


def _failed(reference: np.ndarray, runtime: str, device: str, precision: str, name: str | None) -> ParityResult:
    return ParityResult(runtime, device, precision, int(reference.shape[0]) if reference.ndim else 1,
                        float("inf"), float("inf"), 0.0, 0.0, *TOLERANCES[precision], False, name)


def compare(reference: np.ndarray, output: np.ndarray, *, runtime: str, device: str, precision: str,
            name: str | None = None) -> ParityResult:
    """Compare one batch of one output with the reference (same shape).

    Args:
        reference, output: the PyTorch and the runtime's arrays, batch first.
        runtime, device, precision: recorded; ``precision`` picks the tolerances.
        name: the output's name, recorded and quoted in failures.

    Raises:
        ParityError: the shapes differ.
    """
    if reference.shape != output.shape:
        raise ParityError([_failed(reference, runtime, device, precision, name)])
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
    tol_rel, tol_cos = TOLERANCES[precision]
    worst_cos = float(cos.min()) if cos.size else 1.0
    passed = bool(rel <= tol_rel and worst_cos >= tol_cos and np.isfinite(out).all())
    return ParityResult(runtime, device, precision, int(n), max_abs, rel, worst_cos, top1, tol_rel, tol_cos, passed,
                        name)


def compare_outputs(references: Sequence[np.ndarray], outputs: Sequence[np.ndarray], names: Sequence[str], *,
                    runtime: str, device: str, precision: str) -> list[ParityResult]:
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
                                   f"{name} ({runtime} returned {len(outputs)} outputs, PyTorch {len(references)})")
                           for name in missing])
    return [compare(ref, out, runtime=runtime, device=device, precision=precision, name=name)
            for ref, out, name in zip(references, outputs, names)]
