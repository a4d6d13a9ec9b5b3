"""``compressor`` command line entry point (``compressor.cli:main``, ``python -m compressor.cli``).

A thin shim: the command line lives in :mod:`compressor.app.cli`.
"""
from __future__ import annotations

import sys

from compressor.app.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
