"""argparse ``type=`` helpers: a bad number is a usage error (exit 2) at parse time, never a traceback later.

They live in :mod:`benchmarks._cli_types` (below ``compressor``, so that the torch-free
``python -m benchmarks`` shares them); re-exported here for the ``compressor`` commands.
"""
from __future__ import annotations

from benchmarks import (fraction, fraction_below_one, non_negative_float, non_negative_int, open_fraction,
                                   positive_float, positive_int, positive_int_list, seed)

__all__ = ["fraction", "fraction_below_one", "non_negative_float", "non_negative_int", "open_fraction",
           "positive_float", "positive_int", "positive_int_list", "seed"]
