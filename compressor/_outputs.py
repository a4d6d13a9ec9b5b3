"""Where a command may write its output directory, and Ctrl-C that waits for a write to finish.

The rule and its implementation live in :mod:`runtimes._outputs`, below ``compressor`` and
``benchmarks``, so that ``python -m benchmarks`` applies the same rule without torch; the names
are re-exported here for the commands. See that module's docstring for the rule.
"""
from __future__ import annotations

from runtimes._outputs import (FORCE_HELP, OUTPUT_KINDS, OutputKind, OutputRefused, check_output_location,
                               claim_output, deferred_sigint)

__all__ = ["FORCE_HELP", "OUTPUT_KINDS", "OutputKind", "OutputRefused", "check_output_location", "claim_output",
           "deferred_sigint"]
