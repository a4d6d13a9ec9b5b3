"""``python -m compressor``: the ``compressor`` command line."""
import sys

from compressor.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
