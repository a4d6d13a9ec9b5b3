"""TensorRT 10 and 11: ONNX -> serialized engine with one optimisation profile, run on CUDA.

Buffers are torch CUDA tensors and the engine runs on a torch CUDA stream, so no pycuda or
cuda-python is needed. FP16 differs between the two majors:

* TensorRT 10 (weakly typed networks): the FP32 ONNX is parsed and ``BuilderFlag.FP16`` lets
  the builder choose FP16 kernels.
* TensorRT 11 removed that flag; networks are strongly typed and compute in the types the ONNX
  declares. The ONNX is therefore converted to FP16 first (``_onnx.write_fp16_onnx``: float16
  weights and compute, float32 IO) and parsed into a STRONGLY_TYPED network.

INT8 is explicit quantization on both majors: the ONNX gets Q/DQ pairs from a calibration set
(``_quantize.write_qdq_onnx`` with symmetric int8 activations, as TensorRT requires) and is parsed
into a STRONGLY_TYPED network, so the Q/DQ pairs fix where the engine computes in int8 and no
precision flag is set (TensorRT's guidance for explicit quantization; the calibrator API of
implicit quantization is deprecated in 10 and gone in 11). Layers kept in FP32 by the
accuracy budget simply have no Q/DQ pair.

For FP32, TF32 is switched off so that the engine matches PyTorch to FP32 tolerances.
``build`` writes ``model.engine`` and ``model.engine.json`` (precision, batch range,
TensorRT version, GPU), which ``load`` uses to refuse a precision the engine was not built for.
Sessions use the TensorRT 10 tensor API (``get_tensor_name``/``get_tensor_mode``,
``set_tensor_address``, ``execute_async_v3``); every output tensor of the engine, in the
engine's I/O order (the ONNX outputs' order), gets a buffer on each run.
Engines are executable artifacts tied to the TensorRT version and GPU that built them; only
load engines you built.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._base import (ArtifactError, BuildConfig, Runtime, RuntimeUnavailable, Session, SessionConfig,
                    cuda_device_reason, import_sdk, register_runtime)
from compressor.common.files import atomic_write_bytes, require_file, staging_dir
from runtimes._onnx import read_onnx, write_fp16_onnx
from runtimes._quantize import Calibration, write_qdq_onnx

ENGINE_FILE = "model.engine"
METADATA_SUFFIX = ".json"
_LOG = logging.getLogger(__name__)


def _make_logger(trt: Any) -> Any:
    """A trt.ILogger that keeps the errors (for exception messages) and forwards the rest to logging."""
    severity = trt.ILogger.Severity

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(msg)
                _LOG.error(msg)
            elif level == severity.WARNING:
                _LOG.warning(msg)
            else:
                _LOG.debug(msg)

    return _Logger()


def strongly_typed_only(trt: Any) -> bool:
    """TensorRT 11 removed weak typing (BuilderFlag.FP16 and friends)."""
    return not hasattr(trt.BuilderFlag, "FP16")


def _torch_dtypes(trt: Any) -> dict[Any, Any]:
    import torch  # optional SDK: torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for trt_name, dtype in (("int64", torch.int64), ("bfloat16", torch.bfloat16), ("uint8", torch.uint8)):
        if hasattr(trt, trt_name):
            table[getattr(trt, trt_name)] = dtype
    return table


def _metadata_path(engine: Path) -> Path:
    return engine.with_name(engine.name + METADATA_SUFFIX)


class TensorRTSession(Session):
    def __init__(self, trt: Any, logger: Any, trt_runtime: Any, engine: Any, path: Path, config: SessionConfig,
                 metadata: dict[str, Any] | None):
        import torch  # optional SDK: torch

        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ValueError(f"{path}: sessions take one input; the engine has {len(inputs)}: {inputs}")
        dtypes = _torch_dtypes(trt)
        self._dtypes = {n: dtypes[engine.get_tensor_dtype(n)] for n in names}
        self._input = inputs[0]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if not self._outputs:
            raise ValueError(f"{path}: the engine has no output tensor")
        input_dtype = {torch.float32: np.float32, torch.float16: np.float16}.get(self._dtypes[self._input])
        if input_dtype is None:
            raise ValueError(f"{path}: input {self._input!r} is {self._dtypes[self._input]}; "
                             "sessions take float inputs")
        lowest, best, highest = (tuple(s) for s in engine.get_tensor_profile_shape(self._input, 0))
        self._batch_range = (lowest[0], highest[0])
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{path}: TensorRT could not create an execution context: {'; '.join(logger.errors)}")
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._stream = torch.cuda.Stream(device=self._device)
        memory = engine.device_memory_size_v2 if hasattr(engine, "device_memory_size_v2") else engine.device_memory_size
        self._logger, self._trt_runtime, self._engine = logger, trt_runtime, engine
        super().__init__(
            runtime="tensorrt", input_name=self._input, input_dtype=input_dtype,
            input_shape=tuple(None if d < 0 else d for d in engine.get_tensor_shape(self._input)),
            output_names=self._outputs,
            settings={
                "runtime": "tensorrt", "version": trt.__version__,
                "device": str(self._device), "device_name": torch.cuda.get_device_name(self._device),
                "threads": None, "hint": None,
                "precision": metadata["precision"] if metadata else config.precision,
                "min_batch": lowest[0], "opt_batch": best[0], "max_batch": highest[0],
                "engine_device_memory_bytes": int(memory),
                "strongly_typed": metadata.get("strongly_typed") if metadata else None,
                "tf32": metadata.get("tf32") if metadata else None,
                "engine_metadata": metadata,
                "artifact": str(path),
            })

    @property
    def native(self) -> Any:
        return self._context

    def _run(self, x: np.ndarray, *, all_outputs: bool) -> list[np.ndarray]:
        import torch  # optional SDK: torch

        lowest, highest = self._batch_range
        if not lowest <= x.shape[0] <= highest:
            raise ValueError(f"batch {x.shape[0]} is outside the engine's profile [{lowest}, {highest}]; "
                             "rebuild with min_batch/max_batch covering it")
        if not self._context.set_input_shape(self._input, tuple(x.shape)):
            raise ValueError(f"TensorRT refused input shape {tuple(x.shape)}: {'; '.join(self._logger.errors[-3:])}")
        with torch.cuda.stream(self._stream):  # copies, allocations and the engine on one stream
            buffers = {self._input: torch.from_numpy(x if x.flags.writeable else x.copy()).to(self._device)}
            for name in self._outputs:  # the engine writes every output, wanted or not
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise RuntimeError(f"output {name!r} has a data-dependent shape {shape}; not supported")
                buffers[name] = torch.empty(shape, dtype=self._dtypes[name], device=self._device)
            for name, tensor in buffers.items():
                self._context.set_tensor_address(name, tensor.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed: {'; '.join(self._logger.errors[-3:])}")
        self._stream.synchronize()
        wanted = self._outputs if all_outputs else self._outputs[:1]
        return [(t.float() if t.is_floating_point() else t).cpu().numpy() for t in (buffers[n] for n in wanted)]

    def _close(self) -> None:
        del self._context, self._engine, self._trt_runtime


@register_runtime("tensorrt")
class TensorRTRuntime(Runtime):
    """TensorRT on CUDA (see the module docstring for FP16 on TensorRT 10 vs 11).

    Args:
        workspace_bytes: the builder's workspace memory pool limit.
    """

    install = "pip install tensorrt"  # on a machine with an NVIDIA GPU and driver
    default_device = "cuda"
    build_device = "cuda"

    def __init__(self, workspace_bytes: int = 1 << 30):
        if isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes < 1:
            raise ValueError(f"workspace_bytes must be a positive int, got {workspace_bytes!r}")
        self.workspace_bytes = workspace_bytes

    def _sdk(self) -> Any:
        return import_sdk("tensorrt", "tensorrt", self.install)

    def _device_reason(self, sdk: Any, device: str) -> str | None:
        if device == "cpu":
            return "tensorrt runs on CUDA devices only, not 'cpu'"
        return cuda_device_reason()

    def devices(self) -> list[str]:
        try:
            self._sdk()
        except RuntimeUnavailable:
            return []
        return [] if cuda_device_reason() else ["cuda"]

    def _build(self, trt: Any, source: Path, out_dir: Path, config: BuildConfig,
               calibration: Calibration | None = None) -> Path:
        import torch  # optional SDK: torch

        read_onnx(source)  # names the file if it is truncated or corrupt
        logger = _make_logger(trt)
        builder = trt.Builder(logger)
        strongly = strongly_typed_only(trt) or config.precision == "int8"
        flags = 0
        if strongly and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # ignored (always on) in 11
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        engine_path = out_dir / ENGINE_FILE
        with staging_dir(out_dir) as tmp:
            parsed_file = source
            if strongly and config.precision == "fp16":
                parsed_file = write_fp16_onnx(source, tmp / "model.fp16.onnx")
            elif config.precision == "int8":
                parsed_file = write_qdq_onnx(source, tmp / "model.int8.onnx", calibration, symmetric_activations=True)
            if not parser.parse_from_file(str(parsed_file)):
                errors = [f"{parser.get_error(i).desc()}" for i in range(parser.num_errors)] or logger.errors
                raise ArtifactError(f"{source}: TensorRT's ONNX parser failed:\n  " + "\n  ".join(errors))
            shapes = self._profile_shapes(network, source, config)
            builder_config = builder.create_builder_config()
            builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
            if config.precision == "fp16" and not strongly:
                builder_config.set_flag(trt.BuilderFlag.FP16)
            tf32 = hasattr(trt.BuilderFlag, "TF32") and builder_config.get_flag(trt.BuilderFlag.TF32)
            if config.precision == "fp32" and tf32:
                # TF32 keeps 10 mantissa bits: FP32 parity (rtol ~1e-4) needs it off
                builder_config.clear_flag(trt.BuilderFlag.TF32)
                tf32 = False
            profile = builder.create_optimization_profile()
            profile.set_shape(network.get_input(0).name, *shapes)
            builder_config.add_optimization_profile(profile)
            serialized = builder.build_serialized_network(network, builder_config)
            if serialized is None:
                raise RuntimeError(f"TensorRT could not build an engine from {source}: "
                                   f"{'; '.join(logger.errors) or 'no error was logged'}")
            metadata = {
                "precision": config.precision, "min_batch": config.min_batch, "opt_batch": config.opt_batch,
                "max_batch": config.max_batch, "tensorrt_version": trt.__version__, "strongly_typed": strongly,
                "tf32": bool(tf32), "workspace_bytes": self.workspace_bytes, "source": str(source),
                "gpu": torch.cuda.get_device_name(),
                **({"calibration": calibration.to_dict()} if calibration is not None else {}),
            }
            staged = tmp / ENGINE_FILE
            staged.write_bytes(bytes(serialized))
            atomic_write_bytes(_metadata_path(engine_path), json.dumps(metadata, indent=1).encode())
            os.replace(staged, engine_path)
        return engine_path

    @staticmethod
    def _profile_shapes(network: Any, source: Path, config: BuildConfig) -> tuple[tuple[int, ...], ...]:
        if network.num_inputs != 1:
            names = [network.get_input(i).name for i in range(network.num_inputs)]
            raise ValueError(f"{source}: engines are built for one input; the model has {network.num_inputs}: {names}")
        tensor = network.get_input(0)
        dims = tuple(tensor.shape)
        if not dims or any(d < 0 for d in dims[1:]):
            raise ValueError(f"{source}: input {tensor.name!r} has shape {dims}; only dim 0 (batch) may be dynamic")
        if dims[0] >= 0 and not config.min_batch == config.opt_batch == config.max_batch == dims[0]:
            raise ValueError(f"{source}: input {tensor.name!r} has a static batch of {dims[0]}; build with "
                             f"min_batch=opt_batch=max_batch={dims[0]} or export with a dynamic batch")
        rest = dims[1:]
        return (config.min_batch, *rest), (config.opt_batch, *rest), (config.max_batch, *rest)

    @staticmethod
    def _read_metadata(engine: Path) -> dict[str, Any] | None:
        path = _metadata_path(engine)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ArtifactError(f"{path}: unreadable engine metadata ({err})") from err

    def _load(self, trt: Any, artifact: Path, config: SessionConfig) -> Session:
        import torch  # optional SDK: torch

        require_file(artifact, "TensorRT engine", (".engine", ".plan", ".trt"))
        metadata = self._read_metadata(artifact)
        if metadata is not None and metadata.get("precision") != config.precision:
            built = metadata.get("precision")
            raise ValueError(f"{artifact} was built for {built}; load it with SessionConfig(precision={built!r}) "
                             f"or build a {config.precision} engine")
        torch.cuda.init()  # TensorRT and torch then share the device's primary context
        logger = _make_logger(trt)
        trt_runtime = trt.Runtime(logger)
        engine = trt_runtime.deserialize_cuda_engine(artifact.read_bytes())
        if engine is None:
            built = (f" (built with TensorRT {metadata.get('tensorrt_version')} on {metadata.get('gpu')})"
                     if metadata else "")
            raise ArtifactError(f"{artifact}: TensorRT cannot deserialize the engine; it is truncated or corrupt, "
                                f"or was built by another TensorRT version or GPU{built}: "
                                f"{'; '.join(logger.errors) or 'no error was logged'}. Rebuild it.")
        return TensorRTSession(trt, logger, trt_runtime, engine, artifact, config, metadata)
