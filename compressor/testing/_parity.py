"""Output parity: does a model's output equal a reference's, within a tolerance scaled to it?

The tolerance is ``|actual - expected| <= atol + rtol |expected|`` per element, with
``atol = atol_rel * max|expected|`` per output tensor, so it follows the output's scale. A check
collects every problem it finds (a :class:`ParityCheck`) so that a report can record it; the
``assert_*`` forms raise ``AssertionError`` with all of them, for tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

RTOL = 1e-4
ATOL_REL = 1e-4


def tensors_of(output: Any) -> list[torch.Tensor]:
    """The tensors of a model output (tensor, tuple/list, dict, namedtuple), in a fixed order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for k in sorted(output) for t in tensors_of(output[k])]
    if isinstance(output, (tuple, list)):
        return [t for o in output for t in tensors_of(o)]
    return []


def parity_error(actual: torch.Tensor, expected: torch.Tensor, rtol: float = RTOL, atol_rel: float = ATOL_REL) -> float:
    """Largest violation of ``|a - e| <= atol + rtol |e|`` (atol = atol_rel * max|e|), as a
    multiple of the allowed error: <= 1 means allclose; NaN anywhere gives NaN.

    Raises:
        AssertionError: the shapes differ.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != reference shape {tuple(expected.shape)}")
    a, e = actual.double(), expected.double()
    atol = atol_rel * float(e.abs().max()) if e.numel() else 0.0
    allowed = atol + rtol * e.abs()
    excess = (a - e).abs() / allowed.clamp_min(1e-30)
    return float(excess.max()) if excess.numel() else 0.0


@dataclass(frozen=True)
class ParityCheck:
    """Outcome of :func:`compare_outputs`; ``ok`` when ``problems`` is empty."""

    problems: tuple[str, ...]
    max_abs_err: float  # largest |actual - expected| over the output tensors of matching shape
    expected_max_abs: float  # largest |expected| over the same tensors

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_outputs(actual: Any, expected: Any, rtol: float = RTOL, atol_rel: float = ATOL_REL) -> ParityCheck:
    """Compare two model outputs (any nesting :func:`tensors_of` reads) tensor by tensor.

    A problem is: a different number of tensors or none at all, a shape mismatch, an all-zero
    reference tensor (the comparison would be vacuous), or a tensor out of tolerance.
    """
    got, want = tensors_of(actual), tensors_of(expected)
    problems: list[str] = []
    if not got or len(got) != len(want):
        problems.append(f"{len(got)} output tensors, the reference has {len(want)}")
    worst, scale = 0.0, 0.0
    for i, (a, e) in enumerate(zip(got, want)):
        if a.shape != e.shape:
            problems.append(f"output {i}: shape {tuple(a.shape)} != reference shape {tuple(e.shape)}")
            continue
        e_max = float(e.abs().max()) if e.numel() else 0.0
        if not e_max > 0:
            problems.append(f"reference output {i} is all zero (max |e| = {e_max}): the parity check would be vacuous")
            continue
        diff = float((a.double() - e.double()).abs().max())
        worst, scale = max(worst, diff), max(scale, e_max)
        err = parity_error(a, e, rtol, atol_rel)
        if not err <= 1.0:
            problems.append(f"output {i}: differs from the reference by up to {diff:.3g} "
                            f"(max |reference| {e_max:.3g}; {err:.2f}x the tolerance)")
    return ParityCheck(tuple(problems), worst, scale)


def assert_parity(actual: Any, expected: Any, rtol: float = RTOL, atol_rel: float = ATOL_REL) -> None:
    """Raise ``AssertionError`` listing every problem :func:`compare_outputs` finds."""
    check = compare_outputs(actual, expected, rtol, atol_rel)
    if not check.ok:
        raise AssertionError("; ".join(check.problems))


def assert_array_parity(out: np.ndarray, ref: np.ndarray, rtol: float = 1e-4, atol_scale: float = 1e-5) -> None:
    """A runtime's float32 output ``out`` equals the reference ``ref`` (numpy arrays).

    Checks the dtype (float32), the shape and finiteness, then :func:`assert_parity` with
    ``atol_rel=atol_scale``.
    """
    if out.dtype != np.float32:
        raise AssertionError(f"output dtype {out.dtype}, expected float32")
    if out.shape != ref.shape:
        raise AssertionError(f"output shape {out.shape} != reference shape {ref.shape}")
    if not np.isfinite(out).all():
        raise AssertionError(f"{int((~np.isfinite(out)).sum())} output values are not finite")
    assert_parity(torch.tensor(out), torch.tensor(ref), rtol=rtol, atol_rel=atol_scale)


def structure_problems(actual: Any, expected: Any, where: str = "output") -> list[str]:
    """Where two outputs differ in structure: container type and length, dict keys, and each
    tensor's dtype and trailing dims (the leading dim may differ, e.g. a detector's box count)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return [f"{where}: {type(actual).__name__}, expected a tensor"]
        problems = []
        if actual.dtype != expected.dtype:
            problems.append(f"{where}: dtype {actual.dtype} != {expected.dtype}")
        if tuple(actual.shape[1:]) != tuple(expected.shape[1:]):
            problems.append(f"{where}: shape {tuple(actual.shape)} does not end like {tuple(expected.shape)}")
        return problems
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or sorted(actual) != sorted(expected):
            keys = sorted(actual) if isinstance(actual, dict) else type(actual).__name__
            return [f"{where}: keys {keys} != {sorted(expected)}"]
        return [p for k in sorted(expected) for p in structure_problems(actual[k], expected[k], f"{where}[{k!r}]")]
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)) or len(actual) != len(expected):
            n = len(actual) if isinstance(actual, (tuple, list)) else type(actual).__name__
            return [f"{where}: {n} items != {len(expected)}"]
        return [p for i, (a, e) in enumerate(zip(actual, expected)) for p in structure_problems(a, e, f"{where}[{i}]")]
    return [] if type(actual) is type(expected) else [f"{where}: {type(actual).__name__} != {type(expected).__name__}"]
