"""Post-training INT8 quantization of an exported ONNX model, one way per runtime.

* onnxruntime: static QDQ quantization (``onnxruntime.quantization.quantize_static``), weights
  per channel and symmetric (int8), activations per tensor (uint8; the U8S8 kernels that VNNI
  runs), ranges from a calibration set.
* OpenVINO: NNCF's post-training quantization (``nncf.quantize``) of the converted model, with the
  symmetric "performance" preset (what the CPU plugin's int8 kernels want).
* TensorRT: an explicitly quantized network: the same QDQ quantization, with symmetric int8
  activations, which TensorRT requires, parsed into a network that computes in int8 where the
  Q/DQ pairs say so.

Each takes a :class:`Calibration`: the samples, the calibration method and the layers to keep in
FP32 (ONNX node names: the accuracy budget moves the layers that hurt most back to FP32). The
calibration set's sha256 goes into the artifact's metadata and the bundle manifest, so a bundle
says which data its ranges came from.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from compressor.common.files import short_error, staging_dir
from runtimes._base import ArtifactError, import_sdk
from runtimes._onnx import PRECISION_KEY, read_onnx

# what onnxruntime's calibrators are called; the keys are what manifests and options use
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CALIBRATION_KEY = "runtimes.calibration_sha256"


@dataclass(frozen=True, eq=False)
class Calibration:
    """What an INT8 build calibrates on, and what it keeps in FP32.

    Args:
        samples: float32 inputs, batch first: ``(N, *input_shape)``.
        method: ``"minmax"``, ``"entropy"`` or ``"percentile"`` (onnxruntime's calibrator; NNCF
            always collects min/max statistics and records this as given).
        exclude: ONNX node names (e.g. ``"/layer1/layer1.0/conv1/Conv"``) kept in FP32.
        source: where the samples came from (a data spec), for the manifest.
    """

    samples: np.ndarray
    method: str = "minmax"
    exclude: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        samples = self.samples
        if not isinstance(samples, np.ndarray) or samples.dtype.kind != "f" or samples.ndim < 2:
            got = f"an array of shape {samples.shape} and dtype {samples.dtype}" if isinstance(samples, np.ndarray) \
                else type(samples).__name__
            raise ValueError(f"calibration samples must be a float array (N, *input_shape), got {got}")
        if len(samples) == 0:
            raise ValueError("the calibration set is empty")
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {sorted(CALIBRATION_METHODS)}, got {self.method!r}")
        object.__setattr__(self, "samples", np.ascontiguousarray(samples, dtype=np.float32))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def sha256(self) -> str:
        """The samples' hash (shape and float32 bytes): two builds from the same data share it."""
        digest = hashlib.sha256(repr(self.samples.shape).encode())
        digest.update(self.samples.tobytes())
        return digest.hexdigest()

    def with_exclude(self, exclude: tuple[str, ...]) -> Calibration:
        return Calibration(self.samples, self.method, tuple(exclude), self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "samples": int(len(self.samples)),
                "sample_shape": list(self.samples.shape[1:]), "method": self.method, "sha256": self.sha256(),
                "fp32_layers": list(self.exclude)}

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        for start in range(0, len(self.samples), batch_size):
            yield self.samples[start:start + batch_size]


def _graph_inputs(model: Any) -> list[Any]:
    """A graph's real inputs (older exporters also list the initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _quantizable(model: Any) -> list[str]:
    return [node.name for node in model.graph.node if node.op_type in QUANTIZABLE_OPS and node.name]


def quantizable_layers(onnx_path: Path) -> list[str]:
    """The names of the nodes an INT8 build quantizes (convolutions and matrix products), in graph
    order: what :attr:`Calibration.exclude` can name."""
    return _quantizable(read_onnx(Path(onnx_path)))


def check_calibration(onnx_path: Path, calibration: Calibration) -> None:
    """Named errors for a calibration set that cannot feed the model or names layers it lacks.

    Raises:
        ValueError: the samples' shape does not match the model's input, or ``exclude`` names a
            node the model does not have.
    """
    model = read_onnx(Path(onnx_path))
    inputs = _graph_inputs(model)
    if len(inputs) == 1:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        shape = calibration.samples.shape
        if len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims[1:], shape[1:])):
            want = "(" + ", ".join("batch" if i == 0 else ("?" if d is None else str(d)) for i, d in enumerate(dims)) + ")"
            raise ValueError(f"calibration samples have shape {tuple(shape)} but {onnx_path} takes input "
                             f"{inputs[0].name!r} of shape {want}")
    known = set(_quantizable(model))
    unknown = [name for name in calibration.exclude if name not in known]
    if unknown:
        raise ValueError(f"layers to keep in FP32 {unknown} are not quantizable nodes of {onnx_path}; "
                         f"it has {len(known)}, e.g. {sorted(known)[:5]}")


class _PreprocessAdvice(logging.Filter):
    """Drops onnxruntime's advice to run its pre-processing (shape inference and graph
    optimisation): the exported graph is already folded and shaped, so the advice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_advice() -> Iterator[None]:
    root, advice = logging.getLogger(), _PreprocessAdvice()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a calibration set, one sample per batch."""

    def __init__(self, name: str, calibration: Calibration):
        self._name = name
        self._calibration = calibration
        self._batches = calibration.batches()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}

    def rewind(self) -> None:
        self._batches = self._calibration.batches()


def write_qdq_onnx(source: Path, dest: Path, calibration: Calibration, *, symmetric_activations: bool = False) -> Path:
    """Write a statically quantized (QDQ) copy of ``source`` to ``dest`` (renamed into place when
    complete), with ``runtimes.precision = int8`` and the calibration hash in its metadata.

    Args:
        symmetric_activations: int8 activations with zero point 0 (TensorRT), instead of uint8
            with a zero point (onnxruntime's CPU kernels).

    Raises:
        ArtifactError: ``source`` is missing or corrupt, or onnxruntime cannot quantize it.
        ValueError: the calibration set does not fit the model (see :func:`check_calibration`).
    """
    from onnxruntime import quantization as q  # optional SDK: onnxruntime

    import onnx  # optional SDK: onnx (a dependency, imported on first use to keep `import runtimes` light)
    source, dest = Path(source), Path(dest)
    check_calibration(source, calibration)
    reader = _Reader(_graph_inputs(read_onnx(source))[0].name, calibration)
    activation = q.QuantType.QInt8 if symmetric_activations else q.QuantType.QUInt8
    with staging_dir(dest.parent) as tmp, _quiet_advice():
        staged = tmp / dest.name
        try:
            q.quantize_static(str(source), str(staged), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=activation, weight_type=q.QuantType.QInt8,
                              calibrate_method=getattr(q.CalibrationMethod, CALIBRATION_METHODS[calibration.method]),
                              nodes_to_exclude=list(calibration.exclude),
                              extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True})
        except Exception as err:  # onnxruntime raises its own and generic errors for models it cannot handle
            raise ArtifactError(f"{source}: onnxruntime cannot quantize this model ({short_error(err)})") from err
        model = onnx.load(str(staged))
        _float_where_asked(model, calibration.exclude)
        props = {p.key: p.value for p in model.metadata_props}
        onnx.helper.set_model_props(model, {**props, PRECISION_KEY: "int8", CALIBRATION_KEY: calibration.sha256()})
        onnx.save_model(model, str(staged))
        os.replace(staged, dest)
    return dest


def _pair_source(dq: Any, producer: dict[str, Any]) -> str | None:
    """The float tensor in front of ``dq``'s Quantize/Dequantize pair, or None where ``dq`` is not fed
    by a QuantizeLinear (a weight's DequantizeLinear reads an int8 initializer)."""
    q = producer.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None


def _float_where_asked(model: Any, exclude: tuple[str, ...]) -> None:
    """Take the Q/DQ pairs off what must stay float, which ``quantize_static`` leaves on:

    * the data input of a layer kept in FP32 (onnxruntime quantizes it when the producer is
      quantized, so the layer would still read 8-bit activations);
    * the model's outputs (quantized logits tie: two classes on one of 256 levels).
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.name in exclude and node.input:
            dq = producer.get(node.input[0])
            if dq is not None and dq.op_type == "DequantizeLinear":
                source = _pair_source(dq, producer)
                if source is not None:
                    node.input[0] = source
    for output in graph.output:
        dq = producer.get(output.name)
        source = _pair_source(dq, producer) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if source is None or any(o.name == source for o in graph.output):
            continue
        graph.node.remove(dq)
        for node in graph.node:  # the float tensor takes the output's name
            node.output[:] = [output.name if o == source else o for o in node.output]
            node.input[:] = [output.name if i == source else i for i in node.input]
    _remove_dead_qdq(graph)


def _remove_dead_qdq(graph: Any) -> None:
    """Drop Quantize/DequantizeLinear nodes whose outputs nothing reads any more."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            unused = [t for t in graph.initializer if t.name not in used]
            for tensor in unused:  # the removed pairs' scales and zero points
                graph.initializer.remove(tensor)
            return
        for node in dead:
            graph.node.remove(node)


def _ignored_scope(nncf: Any, exclude: tuple[str, ...]) -> Any:
    """NNCF's scope for ONNX node names: OpenVINO names a converted convolution after its ONNX node,
    with ``/WithoutBiases`` once the bias is split off into an Add."""
    patterns = [re.escape(name) + r"(/WithoutBiases)?" for name in exclude]
    return nncf.IgnoredScope(patterns=patterns, validate=False)


def quantize_openvino_model(model: Any, calibration: Calibration) -> Any:
    """NNCF post-training quantization of a converted OpenVINO model (a new model is returned).

    Raises:
        RuntimeUnavailable: NNCF is not installed.
        ArtifactError: NNCF cannot quantize the model.
    """
    nncf = import_sdk("openvino", "nncf", "pip install nncf")
    dataset = nncf.Dataset(list(calibration.batches()))
    try:
        return nncf.quantize(model, dataset, subset_size=len(calibration.samples),
                             preset=nncf.QuantizationPreset.PERFORMANCE,
                             ignored_scope=_ignored_scope(nncf, calibration.exclude))
    except Exception as err:
        raise ArtifactError(f"NNCF cannot quantize this model ({short_error(err)})") from err
