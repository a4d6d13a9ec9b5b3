"""The runtime interface (build an artifact, load a session, run a batch) and its registry.

A :class:`Runtime` turns an exported ONNX file into whatever its engine loads (``build``) and
opens a :class:`Session` on it (``load``). Each runtime lives in its own module and imports its
SDK there, on first use, so that ``import runtimes`` never imports onnxruntime, openvino or
tensorrt (tinygrad's device pattern). ``is_available()`` answers *why not* instead of a bool.
"""
from __future__ import annotations

import abc
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import numpy as np

from compressor.common.errors import ArtifactError, RuntimeUnavailable
from compressor.common.registry import Registry
from compressor.common.config import JsonConfig

__all__ = [
    "ArtifactError", "BuildConfig", "Runtime", "RuntimeUnavailable", "Session", "SessionConfig",
    "get_runtime", "list_runtimes", "register_runtime",
]

DEVICES = ("cpu", "cuda", "gpu")
HINTS = ("latency", "throughput")
PRECISIONS = ("fp32", "fp16", "int8")


def _check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class SessionConfig(JsonConfig):
    """How to open a session.

    Args:
        device: ``"cpu"``, ``"cuda"`` (torch, onnxruntime, tensorrt) or ``"gpu"`` (OpenVINO's GPU
            plugin; an alias of ``"cuda"`` for the CUDA runtimes).
        threads: intra-op CPU threads, set explicitly when given; ``None`` keeps the runtime default.
        hint: ``"latency"`` or ``"throughput"`` (OpenVINO's PERFORMANCE_HINT; others record None).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``: the precision the artifact was built
            with (every runtime refuses a mismatch), except that OpenVINO runs an FP32 IR in
            ``"fp16"`` as its inference precision.
    """

    device: str = "cpu"
    threads: int | None = None
    hint: str = "latency"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        _check_choice("device", self.device, DEVICES)
        if self.threads is not None:
            _check_positive_int("threads", self.threads)
        _check_choice("hint", self.hint, HINTS)
        _check_choice("precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class BuildConfig(JsonConfig):
    """What ``Runtime.build`` produces: precision and the batch range (TensorRT's optimisation
    profile on the input's dim 0: smallest, tuned-for and largest batch)."""

    precision: str = "fp32"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64

    def __post_init__(self) -> None:
        _check_choice("precision", self.precision, PRECISIONS)
        for name in ("min_batch", "opt_batch", "max_batch"):
            _check_positive_int(name, getattr(self, name))
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need min_batch <= opt_batch <= max_batch, got {self.min_batch}, "
                             f"{self.opt_batch}, {self.max_batch}")


def import_sdk(runtime: str, module: str, install: str) -> ModuleType:
    """Import a runtime's SDK, or raise RuntimeUnavailable carrying the import error's text."""
    try:
        return importlib.import_module(module)
    except Exception as err:  # a broken native library raises ImportError/OSError/RuntimeError too
        missing = isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == module
        reason = f"{module} {'is not installed' if missing else 'failed to import'} ({type(err).__name__}: {err})"
        raise RuntimeUnavailable(f"{runtime} runtime is unavailable: {reason}. Install it with `{install}`.",
                                 runtime=runtime, reason=reason) from err


def cuda_device_reason() -> str | None:
    """Why no CUDA device can be used (from torch, the project's own dependency), or None."""
    import torch  # optional SDK: torch

    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


class Session(abc.ABC):
    """An open model: run one batch, numpy in, numpy out.

    * :meth:`run` returns the first output as float32 (a classifier's logits);
    * :meth:`run_all` returns every output, in the order of :attr:`output_names` (a detector's
      raw head outputs: several tensors of different shapes).

    Subclasses implement ``_run`` and ``_close``, pass what they actually used as ``settings``
    (runtime, version, device, threads, hint, precision, plus runtime-specific keys; ``None``
    means "not applicable") and the model's ``output_names``. Use as a context manager or call
    :meth:`close`.
    """

    _borrows_output: ClassVar[bool] = False  # True where _run returns views of reused buffers

    def __init__(self, *, runtime: str, input_name: str, input_dtype: Any, settings: dict[str, Any],
                 input_shape: tuple[int | None, ...] | None = None, output_names: Sequence[str] | None = None):
        self.input_name = input_name
        self.input_dtype = np.dtype(input_dtype)
        self.input_shape = input_shape  # None entries are dynamic; None overall = unknown rank
        self._output_names = None if output_names is None else list(output_names)
        self._runtime = runtime
        self._settings = dict(settings)
        self._closed = False

    @property
    def output_names(self) -> list[str] | None:
        """The model's output names, in the order :meth:`run_all` returns them (a copy).

        None where the runtime learns them only by running the model (torch, before its first run).
        """
        return None if self._output_names is None else list(self._output_names)

    @property
    def settings(self) -> dict[str, Any]:
        """What the session actually uses (a copy)."""
        return dict(self._settings)

    @property
    @abc.abstractmethod
    def native(self) -> Any:
        """The runtime's own handle (InferenceSession, CompiledModel, IExecutionContext, nn.Module)."""

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output as a new float32 array.

        ``x`` is cast to the model's input dtype (float32, or float16 for fp16 IO). The batch
        size may vary between calls (within the TensorRT profile).

        Raises:
            TypeError: ``x`` is not a floating-point numpy array.
            ValueError: its rank or a static dimension does not match the model's input.
            RuntimeError: the session is closed.
        """
        return self._own(self._infer(x, all_outputs=False)[0], np.float32)

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one batch and return every output, as new arrays in the order of :attr:`output_names`.

        Floating-point outputs come back as float32; integer and boolean ones keep their dtype.
        A single-output model gives a list of one array, equal to :meth:`run`'s. Timing this
        times the whole inference, every output copied back to the host.

        Raises:
            TypeError, ValueError, RuntimeError: as :meth:`run`.
        """
        return [self._own(out, np.float32 if np.asarray(out).dtype.kind == "f" else None)
                for out in self._infer(x, all_outputs=True)]

    def _infer(self, x: np.ndarray, *, all_outputs: bool) -> Sequence[Any]:
        if self._closed:
            raise RuntimeError(f"this {self._runtime} session is closed")
        if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
            got = f"an array of {x.dtype}" if isinstance(x, np.ndarray) else type(x).__name__
            name = "run_all" if all_outputs else "run"
            raise TypeError(f"{name}() takes a floating-point numpy array, got {got}")
        self._check_shape(x.shape)
        outputs = self._run(np.ascontiguousarray(x, dtype=self.input_dtype), all_outputs=all_outputs)
        if not outputs:
            raise RuntimeError(f"the {self._runtime} session returned no output")
        return outputs

    def _own(self, out: Any, dtype: Any) -> np.ndarray:
        """``out`` as an array the caller owns (``dtype`` None keeps its dtype)."""
        if self._borrows_output:  # the runtime reuses its output buffers on the next run
            return np.array(out, dtype=dtype, copy=True)
        return np.asarray(out, dtype=dtype)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        expected = self.input_shape
        if expected is None:
            return
        if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
            pretty = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
            raise ValueError(f"input {self.input_name!r} expects shape {pretty}, got {tuple(shape)}")

    @abc.abstractmethod
    def _run(self, x: np.ndarray, *, all_outputs: bool) -> Sequence[Any]:
        """The outputs of one batch (``x`` checked and cast): every output in order, or where
        ``all_outputs`` is False at least the first (runtimes may then skip copying the rest)."""

    def _close(self) -> None:
        """Release the runtime's objects; called once."""

    def close(self) -> None:
        """Release the session (idempotent)."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._settings.get("device")
        return f"<{type(self).__name__} {self._runtime} {state} input={self.input_name!r}>"


class Runtime(abc.ABC):
    """One inference engine. Subclasses set the class attributes and implement the hooks.

    Attributes:
        name: the registry name (set by :func:`register_runtime`).
        install: how to install its SDK, quoted in RuntimeUnavailable messages.
        source_format: what ``build``/``load`` take: ``"onnx"`` (an .onnx file) or ``"torch"``
            (a directory saved by ``compressor.save_model``, or an ``nn.Module``).
        precisions: the precisions ``build`` can produce.
        default_device: the device ``is_available()`` checks when none is given.
        build_device: a device that ``build`` itself needs (TensorRT builds on the GPU).
        loader_modules: modules ``load`` imports besides the SDK (code, not model memory: the
            memory probe imports them before its baseline).
    """

    name: ClassVar[str] = ""
    install: ClassVar[str] = ""
    source_format: ClassVar[str] = "onnx"
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    default_device: ClassVar[str] = "cpu"
    build_device: ClassVar[str | None] = None  # a device that build() needs (TensorRT: "cuda")
    loader_modules: ClassVar[tuple[str, ...]] = ()  # modules load() imports besides the SDK

    # --- hooks -------------------------------------------------------------------------------
    @abc.abstractmethod
    def _sdk(self) -> Any:
        """Import and return the SDK, or raise RuntimeUnavailable (use :func:`import_sdk`)."""

    @abc.abstractmethod
    def _device_reason(self, sdk: Any, device: str) -> str | None:
        """Why ``device`` cannot be used with this SDK, or None."""

    @abc.abstractmethod
    def devices(self) -> list[str]:
        """The devices usable now (``[]`` when the SDK is missing), e.g. ``["cpu", "cuda"]``."""

    @abc.abstractmethod
    def _build(self, sdk: Any, source: Path, out_dir: Path, config: BuildConfig,
               calibration: Any = None) -> Path: ...

    @abc.abstractmethod
    def _load(self, sdk: Any, artifact: Any, config: SessionConfig) -> Session: ...

    # --- public API --------------------------------------------------------------------------
    def is_available(self, device: str | None = None) -> str | None:
        """Return None if the runtime can run on ``device`` now, else the reason why not
        (e.g. "tensorrt is not installed (ModuleNotFoundError: No module named 'tensorrt')").

        Args:
            device: ``"cpu"``, ``"cuda"`` or ``"gpu"``; default :attr:`default_device`.

        Raises:
            ValueError: an unknown device name.
        """
        device = self.default_device if device is None else device
        _check_choice("device", device, DEVICES)
        try:
            sdk = self._sdk()
        except RuntimeUnavailable as err:
            return err.reason
        return self._device_reason(sdk, device)

    def require(self, device: str | None = None) -> Any:
        """Return the SDK module, or raise RuntimeUnavailable naming the package and the reason."""
        device = self.default_device if device is None else device
        _check_choice("device", device, DEVICES)
        sdk = self._sdk()
        reason = self._device_reason(sdk, device)
        if reason is not None:
            raise RuntimeUnavailable(f"{self.name} runtime cannot use device {device!r}: {reason}",
                                     runtime=self.name, reason=reason)
        return sdk

    def build(self, onnx_path: str | Path, out_dir: str | Path, precision: str = "fp32", min_batch: int = 1,
              opt_batch: int = 8, max_batch: int = 64, calibration: Any = None) -> Path:
        """Build this runtime's artifact from an exported model and return its path.

        Args:
            onnx_path: the exported ONNX file (torch runtime: the saved model directory or module,
                returned unchanged).
            out_dir: where to write the artifact (created if missing). Files are written under a
                temporary name and renamed, so a failed build leaves no half-written artifact.
            precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
            min_batch, opt_batch, max_batch: batch range (TensorRT's optimisation profile).
            calibration: a :class:`runtimes.Calibration`, needed for (and only for) ``"int8"``.

        Raises:
            ValueError: bad arguments, a precision this runtime cannot build, INT8 without
                calibration data, or calibration samples that do not fit the model.
            RuntimeUnavailable: the SDK (or TensorRT's CUDA device) is missing.
            ArtifactError: the source file is missing, corrupt or truncated.
        """
        config = BuildConfig(precision=precision, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch)
        self._check_precision(precision)
        if (precision == "int8") != (calibration is not None):
            raise ValueError("an int8 build needs calibration data (calibration=runtimes.Calibration(...))"
                             if precision == "int8" else f"calibration data is for int8 builds, not {precision}")
        sdk = self.require(self.build_device) if self.build_device else self._sdk()
        if calibration is None:
            return self._build(sdk, self._as_source(onnx_path), Path(out_dir), config)
        return self._build(sdk, self._as_source(onnx_path), Path(out_dir), config, calibration)

    def load(self, artifact: Any, config: SessionConfig | None = None) -> Session:
        """Open a session on a built artifact.

        Args:
            artifact: what ``build`` returned (.onnx, OpenVINO .xml, TensorRT .engine, or for torch
                a saved model directory or an ``nn.Module``).
            config: device, threads, hint and precision; default ``SessionConfig()`` (CPU, fp32).

        Raises:
            ValueError: a precision this runtime cannot run (or that the artifact was not built for).
            RuntimeUnavailable: the SDK or the device is missing.
            ArtifactError: the artifact is missing, corrupt or truncated.
        """
        config = SessionConfig() if config is None else config
        if not isinstance(config, SessionConfig):
            raise TypeError(f"config must be a SessionConfig, got {type(config).__name__}")
        self._check_precision(config.precision)
        sdk = self.require(config.device)
        return self._load(sdk, self._as_source(artifact), config)

    def _as_source(self, source: Any) -> Any:
        if isinstance(source, (str, os.PathLike)):
            return Path(source)
        if self.source_format == "torch":
            return source  # an nn.Module
        raise TypeError(f"{self.name} takes a file path, got {type(source).__name__}")

    def _check_precision(self, precision: str) -> None:
        _check_choice("precision", precision, PRECISIONS)
        if precision not in self.precisions:
            raise ValueError(f"{self.name} cannot use precision {precision!r}; it supports {list(self.precisions)}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


_RUNTIMES: Registry[type[Runtime]] = Registry("runtime")
_R = TypeVar("_R", bound=type[Runtime])


def register_runtime(name: str) -> Callable[[_R], _R]:
    """Class decorator registering a :class:`Runtime` subclass under ``name``.

    Raises:
        ValueError: ``name`` is empty or already registered.
        TypeError: the decorated object is not a Runtime subclass.
    """
    register = _RUNTIMES.register(name)  # checks the name now, and again when applied

    def decorator(cls: _R) -> _R:
        if not (isinstance(cls, type) and issubclass(cls, Runtime)):
            raise TypeError(f"register_runtime({name!r}) decorates Runtime subclasses, got {cls!r}")
        register(cls)
        cls.name = name
        return cls

    return decorator


def list_runtimes() -> list[str]:
    """The registered runtime names, sorted (whether or not they are installed)."""
    return _RUNTIMES.names()


def get_runtime(name: str, **options: Any) -> Runtime:
    """A new instance of the runtime registered as ``name``; ``options`` go to its constructor
    (e.g. ``get_runtime("tensorrt", workspace_bytes=2 << 30)``).

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    return _RUNTIMES.get(name)(**options)
