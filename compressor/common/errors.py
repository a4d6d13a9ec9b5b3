"""The toolchain's errors: every one is a :class:`CompressorError`. Each message names the layer, key or file at fault.

Torch-free, so ``runtimes`` and ``benchmarks`` raise the same family on a target device without torch.
The command lines map these classes to exit codes in one table (``compressor.app.exit_codes``).
"""
from __future__ import annotations


class CompressorError(Exception):
    """Base class of the toolchain's own errors."""


class TraceError(CompressorError):
    """The model cannot be traced or run on its example input."""


class UnprunableModelError(CompressorError):
    """No channel of the model can be removed; the message lists why, layer by layer."""


class UnreachableTargetError(CompressorError, ValueError):
    """A FLOPs/params target cannot be met; the message states the closest reachable value."""


class ModelFormatError(CompressorError, ValueError):
    """A saved model is missing files, has a wrong schema, or does not match its weights."""


class ModelEntryError(CompressorError, ValueError):
    """A model source, its arguments or its weights file cannot be used; the message names which and why."""


class RuntimeUnavailable(CompressorError):
    """A runtime's package or device is missing. ``reason`` is what ``is_available()`` returns."""

    def __init__(self, message: str, *, runtime: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.runtime = runtime
        self.reason = reason if reason is not None else message


class ArtifactError(CompressorError):
    """A model file (.onnx, .xml/.bin, .engine, saved model directory) is missing, corrupt or
    truncated. The message names the file and says what is wrong; the runtime's own exception
    is chained as ``__cause__``."""
