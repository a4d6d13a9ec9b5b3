"""Helpers for the tests and the benchmark scripts, importable so that nobody copies them.

Like ``torchao.testing``: the tests and ``benchmarks/coverage.py`` import one masked-oracle check
from here instead of loading helper files through ``sys.path`` or keeping copies that drift.
Everything here is test support, not product API; it uses torch and the compressor core
(``compressor.graph``, ``compressor.pruning``) and nothing above it.

* weights: :func:`randomize_` gives a random model weights under which every channel matters.
* parity: :func:`compare_outputs` / :func:`assert_parity` compare outputs within a tolerance
  scaled to the reference; :func:`assert_array_parity` does it for a runtime's numpy output;
  :func:`structure_problems` compares structure only (detector outputs).
* the masked oracle: :func:`prune_with_oracle` prunes a copy and zeroes the same channels in
  another; :func:`compare_with_oracle` / :func:`check_pruned` check that they agree and that
  the pruned model is smaller and well formed.
* ONNX fixtures: :func:`tiny_cnn`, :func:`export_test_onnx` and :class:`Exported` for the
  runtime and benchmark tests.

The ``compare_*`` / ``*_problems`` forms return what they found, for reports; the ``assert_*``
and ``check_*`` forms raise ``AssertionError`` (explicitly, so ``python -O`` keeps them).
"""
from __future__ import annotations

from compressor.testing._detect import prune_detector_with_oracle
from compressor.testing._onnx import Exported, export_test_onnx, tiny_cnn
from compressor.testing._oracle import (
    OracleCheck, Pruned, assert_consistent_modules, check_pruned, compare_with_oracle, count_flops, count_params,
    module_problems, prune_with_oracle, run_eval, zero_rows,
)
from compressor.testing._parity import (
    ATOL_REL, RTOL, ParityCheck, assert_array_parity, assert_parity, compare_outputs, parity_error,
    structure_problems, tensors_of,
)
from compressor.testing._weights import randomize_

__all__ = [
    "prune_detector_with_oracle",
    # weights
    "randomize_",
    # parity
    "ATOL_REL", "RTOL", "ParityCheck", "assert_array_parity", "assert_parity", "compare_outputs", "parity_error",
    "structure_problems", "tensors_of",
    # the masked oracle
    "OracleCheck", "Pruned", "assert_consistent_modules", "check_pruned", "compare_with_oracle", "count_flops",
    "count_params", "module_problems", "prune_with_oracle", "run_eval", "zero_rows",
    # ONNX fixtures
    "Exported", "export_test_onnx", "tiny_cnn",
]
