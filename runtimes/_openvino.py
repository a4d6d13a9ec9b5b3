"""OpenVINO: ONNX -> IR (``model.xml`` + ``model.bin``), compiled on the CPU or GPU plugin."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._base import (ArtifactError, BuildConfig, Runtime, RuntimeUnavailable, Session, SessionConfig,
                    import_sdk, register_runtime)
from compressor.common.files import require_file, short_error, staging_dir
from runtimes._onnx import read_onnx
from runtimes._quantize import Calibration, check_calibration, quantize_openvino_model

IR_FILE = "model.xml"
# Always set explicitly: on CPUs with AMX/AVX512-BF16 the CPU plugin otherwise computes in bf16,
# and where the CPU has no native f16 it maps an f16 request to bf16 (read back in settings).
# An INT8 IR runs its quantized ops in int8 whatever the hint; the hint sets the rest (f32).
_PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
_PRECISION_INFO = ["runtimes", "precision"]  # where an IR records what it was built for (rt_info)
_PLUGINS = {"cpu": "CPU", "gpu": "GPU"}


def _property(compiled: Any, key: str) -> Any:
    """A compiled model's property, or None where the device does not have it."""
    if key not in compiled.get_property("SUPPORTED_PROPERTIES"):
        return None
    return compiled.get_property(key)


def _port_name(port: Any, fallback: str) -> str:
    """A port's tensor name (the ONNX output name), or ``fallback`` where it has none."""
    try:
        return port.get_any_name()
    except RuntimeError:  # OpenVINO raises when a tensor has no name
        return fallback


class OpenVinoSession(Session):
    _borrows_output = True  # the infer request's output tensor

    def __init__(self, core: Any, compiled: Any, path: Path, config: SessionConfig, version: str, plugin: str):
        if len(compiled.inputs) != 1:
            raise ValueError(f"{path}: sessions take one input; the model has {len(compiled.inputs)}: "
                             f"{[p.get_any_name() for p in compiled.inputs]}")
        port = compiled.inputs[0]
        partial = port.get_partial_shape()
        shape = None if partial.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in partial)
        precision = _property(compiled, "INFERENCE_PRECISION_HINT")
        hint = _property(compiled, "PERFORMANCE_HINT")
        streams = _property(compiled, "NUM_STREAMS")
        super().__init__(
            runtime="openvino", input_name=port.get_any_name(), input_dtype=port.get_element_type().to_dtype(),
            input_shape=shape,
            output_names=[_port_name(port, f"output_{i}") for i, port in enumerate(compiled.outputs)],
            settings={
                "runtime": "openvino", "version": version,
                "device": config.device, "plugin": plugin,
                "device_name": core.get_property(plugin, "FULL_DEVICE_NAME"),
                "threads": _property(compiled, "INFERENCE_NUM_THREADS") if plugin == "CPU" else None,
                "flush_denormal": _property(compiled, "CPU_DENORMALS_OPTIMIZATION") if plugin == "CPU" else None,
                "hint": str(hint).lower() if hint is not None else None,
                "precision": config.precision,
                # what the plugin actually computes in, e.g. "f32", "f16" or "bf16"
                "inference_precision": precision.get_type_name() if precision is not None else None,
                "num_streams": int(streams.to_integer()) if hasattr(streams, "to_integer") else streams,
                "optimal_num_requests": _property(compiled, "OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
                "artifact": str(path),
            })
        self._core = core
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    @property
    def native(self) -> Any:
        return self._compiled

    def _run(self, x: np.ndarray, *, all_outputs: bool) -> list[np.ndarray]:
        # synchronous, so the request may read x in place; run() copies the outputs out of the request
        self._request.infer({0: x}, share_inputs=True, share_outputs=True)
        count = len(self._compiled.outputs) if all_outputs else 1
        return [self._request.get_output_tensor(i).data for i in range(count)]

    def _close(self) -> None:
        del self._request, self._compiled, self._core


@register_runtime("openvino")
class OpenVinoRuntime(Runtime):
    """OpenVINO. ``build`` converts the ONNX (``openvino.convert_model``) and saves the IR with
    FP32 weights, or FP16 weights for ``precision="fp16"`` (``save_model`` would compress to FP16
    by default), or for ``precision="int8"`` quantized by NNCF from a calibration set
    (:mod:`runtimes._quantize`). The IR keeps the ONNX's dynamic batch, so the batch range is not
    needed, and records its precision in its rt_info, which ``load`` checks.
    ``load`` also accepts an .onnx file directly."""

    install = "pip install openvino"

    def _sdk(self) -> Any:
        return import_sdk("openvino", "openvino", self.install)

    def _device_reason(self, sdk: Any, device: str) -> str | None:
        if device == "cuda":
            return "openvino has no 'cuda' device; its GPU plugin is device='gpu'"
        available = sdk.Core().available_devices
        plugin = _PLUGINS[device]
        if not any(d.split(".")[0] == plugin for d in available):
            return f"openvino sees no {plugin} device (available: {', '.join(available) or 'none'})"
        return None

    def devices(self) -> list[str]:
        try:
            sdk = self._sdk()
        except RuntimeUnavailable:
            return []
        plugins = {d.split(".")[0] for d in sdk.Core().available_devices}
        return [name for name, plugin in _PLUGINS.items() if plugin in plugins]

    def _build(self, sdk: Any, source: Path, out_dir: Path, config: BuildConfig,
               calibration: Calibration | None = None) -> Path:
        read_onnx(source)  # names the file if it is truncated or corrupt, before OpenVINO guesses its format
        if calibration is not None:
            check_calibration(source, calibration)
        try:
            model = sdk.convert_model(str(source))
        except Exception as err:
            raise ArtifactError(f"{source}: OpenVINO cannot convert this ONNX model ({short_error(err)})") from err
        if calibration is not None:
            model = quantize_openvino_model(model, calibration)
            model.set_rt_info(calibration.sha256(), ["runtimes", "calibration_sha256"])
        model.set_rt_info(config.precision, _PRECISION_INFO)
        xml = out_dir / IR_FILE
        with staging_dir(out_dir) as tmp:
            sdk.save_model(model, str(tmp / IR_FILE), compress_to_fp16=config.precision == "fp16")
            # weights first: the .xml appears only once its .bin is in place
            os.replace(tmp / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
            os.replace(tmp / IR_FILE, xml)
        return xml

    def _load(self, sdk: Any, artifact: Path, config: SessionConfig) -> Session:
        require_file(artifact, "OpenVINO IR or ONNX model", (".xml", ".onnx"))
        weights = artifact.with_suffix(".bin")
        if artifact.suffix.lower() == ".xml":
            require_file(weights, "OpenVINO IR weights")
        else:
            read_onnx(artifact)  # names the file if it is damaged, before OpenVINO tries other frontends
        core = sdk.Core()
        try:
            model = core.read_model(str(artifact))
        except Exception as err:
            text = str(err).lower()
            about_weights = artifact.suffix.lower() == ".xml" and ("bin file" in text or "weights" in text)
            culprit = weights if about_weights else artifact
            raise ArtifactError(f"{culprit}: OpenVINO cannot read the model; the file may be truncated or corrupt "
                                f"({short_error(err)})") from err
        built = model.get_rt_info(_PRECISION_INFO).astype(str) if model.has_rt_info(_PRECISION_INFO) else "fp32"
        if (built == "int8") != (config.precision == "int8"):
            raise ValueError(f"{artifact} was built for {built}; load it with SessionConfig(precision={built!r}) "
                             f"or build a {config.precision} artifact")
        plugin = _PLUGINS[config.device]  # require() has refused "cuda"
        properties: dict[str, Any] = {"PERFORMANCE_HINT": config.hint.upper(),
                                      "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[config.precision]}
        if config.threads is not None:
            if plugin != "CPU":
                raise ValueError(f"threads={config.threads} applies to OpenVINO's CPU plugin, not {plugin}")
            properties["INFERENCE_NUM_THREADS"] = config.threads
        if plugin == "CPU":  # flush subnormal floats (random-weight models produce them; they are slow)
            properties["CPU_DENORMALS_OPTIMIZATION"] = True
        compiled = core.compile_model(model, plugin, properties)
        return OpenVinoSession(core, compiled, artifact, config, sdk.get_version(), plugin)
