"""The toolchain's errors: every one is a :class:`CompressorError`. Each message names the layer, key or file at fault.

Torch-free, so ``runtimes`` and ``benchmarks`` raise the same family on a target device without torch.

Both command lines (``compressor`` and the torch-free ``python -m benchmarks``) turn an error that
escapes a command into an exit code with :func:`exit_code_for`, and nothing else, so the README's
table holds in one place:

====  ===================  ==========================================================================
code  meaning              raised as
====  ===================  ==========================================================================
1     a budget violated    a pipeline's failed gate step (``GateFailed.exit_code``)
2     bad input, named     every :class:`CompressorError` unless its class says otherwise; ``ValueError``
                           (``BudgetError``, ``OutputRefused`` ...), ``FileNotFoundError``,
                           ``FileExistsError``, ``ImportError`` (a package the input needs)
3     parity failed        ``runtimes.ParityError``; a pipeline's failed export step
4     not measured         ``benchmarks.MemoryOOM``; a pipeline's failed bench or gate step
130   interrupted          ``KeyboardInterrupt``
====  ===================  ==========================================================================

A class sets its code as the class attribute ``exit_code`` (a pipeline step's failure carries its
command's code on the instance). Anything else that escapes is an internal error and keeps its
traceback. Commands return 0 (done), 1 and 4 from their verdicts without raising.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_BAD_INPUT = 2
EXIT_PARITY_FAILED = 3
EXIT_NOT_MEASURED = 4
EXIT_INTERRUPTED = 130


class CompressorError(Exception):
    """Base class of the toolchain's own errors. ``exit_code``: the command lines' exit status when one
    escapes a command; bad input unless a subclass says otherwise."""

    exit_code: int = EXIT_BAD_INPUT


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


# The exit codes of exceptions from outside the project, which the command lines map as well. The
# project's own carry theirs as ``exit_code`` (above); this lists only what Python raises.
EXIT_CODES: dict[type[BaseException], int] = {
    KeyboardInterrupt: EXIT_INTERRUPTED,
    ValueError: EXIT_BAD_INPUT,  # a bad option or value; json.JSONDecodeError is one
    FileNotFoundError: EXIT_BAD_INPUT,
    FileExistsError: EXIT_BAD_INPUT,
    ImportError: EXIT_BAD_INPUT,  # an optional package the input needs (onnx, openvino ...) is missing
}


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code of a command that ``exc`` escaped: its ``exit_code`` for a :class:`CompressorError`,
    else that of the nearest class of its MRO in :data:`EXIT_CODES`; ``None`` for an internal error,
    which the command lines re-raise with its traceback."""
    if isinstance(exc, CompressorError):
        return exc.exit_code
    return next((EXIT_CODES[cls] for cls in type(exc).__mro__ if cls in EXIT_CODES), None)
