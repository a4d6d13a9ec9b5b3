"""Errors raised by the compressor. Each message names the layer, key or file at fault."""
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
