"""``python -m benchmarks BUNDLE... --output DIR``: ``compressor bench`` without torch (see benchmarks/_command.py)."""
import sys

from benchmarks._command import main

if __name__ == "__main__":
    sys.exit(main())
