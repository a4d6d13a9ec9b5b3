"""onnxruntime: runs the ONNX file itself (CPUExecutionProvider, or CUDAExecutionProvider)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtimes._base import (ArtifactError, BuildConfig, Runtime, RuntimeUnavailable, Session, SessionConfig,
                    cuda_device_reason, import_sdk, register_runtime)
from compressor.common.files import require_file, short_error
from runtimes._onnx import onnx_precision, read_onnx, write_fp16_onnx
from runtimes._quantize import Calibration, write_qdq_onnx

FP16_FILE = "model.fp16.onnx"
INT8_FILE = "model.int8.onnx"
_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"
# onnxruntime's exception classes that mean "this file is not a model it can load"
_ARTIFACT_ERRORS = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile", "InvalidArgument", "Fail", "NotImplemented")
_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeSession(Session):
    def __init__(self, session: Any, path: Path, config: SessionConfig, version: str):
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise ValueError(f"{path}: sessions take one input; the model has {len(inputs)}: "
                             f"{[i.name for i in inputs]}")
        first = inputs[0]
        if first.type not in _NP_DTYPES:
            raise ValueError(f"{path}: input {first.name!r} is {first.type}; sessions take floating-point inputs")
        options = session.get_session_options()
        super().__init__(
            runtime="onnxruntime", input_name=first.name, input_dtype=_NP_DTYPES[first.type],
            input_shape=tuple(d if isinstance(d, int) else None for d in first.shape),
            output_names=[o.name for o in outputs],
            settings={
                "runtime": "onnxruntime", "version": version,
                "device": "cuda" if _CUDA_PROVIDER in session.get_providers() else "cpu",
                "threads": options.intra_op_num_threads or None,  # 0 = onnxruntime's default
                "inter_op_threads": options.inter_op_num_threads or None,
                "hint": None,
                "precision": config.precision,
                "providers": session.get_providers(),
                "provider_options": session.get_provider_options(),
                "graph_optimization_level": str(options.graph_optimization_level).rsplit(".", 1)[-1],
                "flush_denormal": options.get_session_config_entry("session.set_denormal_as_zero") == "1",
                "allow_spinning": _config_entry(options, "session.intra_op.allow_spinning", "1") == "1",
                "artifact": str(path),
            })
        self._session = session
        self._first_output = outputs[0].name

    @property
    def native(self) -> Any:
        return self._session

    def _run(self, x: np.ndarray, *, all_outputs: bool) -> list[np.ndarray]:
        return self._session.run(None if all_outputs else [self._first_output], {self.input_name: x})

    def _close(self) -> None:
        del self._session


def _config_entry(options: Any, key: str, default: str) -> str:
    """A session config entry, or onnxruntime's default where it was not set."""
    try:
        return options.get_session_config_entry(key)
    except Exception:  # onnxruntime raises when the key was never set
        return default


@register_runtime("onnxruntime")
class OnnxRuntime(Runtime):
    """onnxruntime with explicit threads (``intra_op_num_threads``; ``inter_op_num_threads=1``)
    and all graph optimisations. ``build`` returns the ONNX file itself for fp32, writes
    ``model.fp16.onnx`` (FP16 weights and compute, float32 IO) for fp16, and ``model.int8.onnx``
    (static QDQ quantization from a calibration set, :mod:`runtimes._quantize`) for int8.

    Args:
        allow_spinning: whether the intra-op worker threads busy-wait for work between ops
            (``session.intra_op.allow_spinning``); None keeps onnxruntime's default (they do).
            Spinning lowers one session's latency, but several sessions in one process each have
            a private pool, and a pool spinning after its run steals the cores another session is
            running on: turn it off when sessions take turns (interleaved benchmarks do).
    """

    install = "pip install onnxruntime"

    def __init__(self, allow_spinning: bool | None = None):
        if allow_spinning is not None and not isinstance(allow_spinning, bool):
            raise TypeError(f"allow_spinning must be a bool or None, got {allow_spinning!r}")
        self.allow_spinning = allow_spinning

    def _sdk(self) -> Any:
        return import_sdk("onnxruntime", "onnxruntime", self.install)

    def _device_reason(self, sdk: Any, device: str) -> str | None:
        if device == "cpu":
            return None
        if _CUDA_PROVIDER not in sdk.get_available_providers():
            return (f"onnxruntime has no {_CUDA_PROVIDER} (CPU build; providers: "
                    f"{', '.join(sdk.get_available_providers())}); install onnxruntime-gpu")
        return cuda_device_reason()

    def devices(self) -> list[str]:
        try:
            sdk = self._sdk()
        except RuntimeUnavailable:
            return []
        return ["cpu"] + ([] if self._device_reason(sdk, "cuda") else ["cuda"])

    def _build(self, sdk: Any, source: Path, out_dir: Path, config: BuildConfig,
               calibration: Calibration | None = None) -> Path:
        model = read_onnx(source)  # fails early, naming the file, if it is truncated or corrupt
        built = onnx_precision({p.key: p.value for p in model.metadata_props})
        if config.precision == built and calibration is None:
            return source
        if built != "fp32":
            raise ValueError(f"{source} computes in {built}; export an fp32 ONNX for a {config.precision} build")
        if config.precision == "int8":
            return write_qdq_onnx(source, out_dir / INT8_FILE, calibration)
        return write_fp16_onnx(source, out_dir / FP16_FILE)

    def _load(self, sdk: Any, artifact: Path, config: SessionConfig) -> Session:
        require_file(artifact, "ONNX model")
        options = sdk.SessionOptions()
        if config.threads is not None:
            options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        options.execution_mode = sdk.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = sdk.GraphOptimizationLevel.ORT_ENABLE_ALL
        # random-weight models decay into subnormal floats, which make CPU kernels 10-100x slower
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        if self.allow_spinning is not None:
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        cuda = config.device in ("cuda", "gpu")
        # the CUDA provider computes FP32 convs/matmuls in TF32 unless told not to (breaks FP32 parity)
        cuda_options = {"use_tf32": "0"} if config.precision == "fp32" else {}
        providers = [(_CUDA_PROVIDER, cuda_options), _CPU_PROVIDER] if cuda else [_CPU_PROVIDER]
        try:
            session = sdk.InferenceSession(str(artifact), sess_options=options, providers=providers)
        except Exception as err:
            if type(err).__name__ not in _ARTIFACT_ERRORS:
                raise
            damaged = "; the file may be truncated or corrupt" if type(err).__name__ == "InvalidProtobuf" else ""
            raise ArtifactError(f"{artifact}: onnxruntime cannot load this model{damaged} "
                                f"({short_error(err)})") from err
        if cuda and _CUDA_PROVIDER not in session.get_providers():
            # onnxruntime falls back to the CPU silently when the CUDA provider fails to start
            reason = f"{_CUDA_PROVIDER} failed to initialise (session providers: {session.get_providers()})"
            raise RuntimeUnavailable(f"onnxruntime runtime cannot use device 'cuda': {reason}",
                                     runtime="onnxruntime", reason=reason)
        built = onnx_precision(session.get_modelmeta().custom_metadata_map)
        if built != config.precision:
            raise ValueError(f"{artifact} was built for {built}; load it with SessionConfig(precision={built!r}) "
                             f"or build a {config.precision} artifact")
        return OnnxRuntimeSession(session, artifact, config, sdk.__version__)
