"""ONNX files: read one with errors that name the file, and convert one to FP16.

The FP16 conversion serves onnxruntime's fp16 build and TensorRT 11, which removed the FP16
builder flag: a strongly typed network computes in the types the ONNX declares, so the
precision has to be in the file. Float32 weights, constants and casts become float16; the
graph's float32 inputs and outputs stay float32 behind a Cast at each end, so every session
keeps float32 IO. The result carries ``runtimes.precision = fp16`` in its metadata, which the
loaders read to tell what precision an artifact computes in.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._base import ArtifactError
from compressor.common.files import require_file, short_error, staging_dir

PRECISION_KEY = "runtimes.precision"
_FP16_MAX = float(np.finfo(np.float16).max)
# Inputs that the ONNX spec types as float32 only: they keep float32 whatever feeds them.
_FLOAT32_ONLY_INPUTS = {"Resize": (2,), "Upsample": (1,)}
# protobuf cannot serialise a message over 2 GiB: bigger models put their weights beside the file
_EXTERNAL_DATA_BYTES = 1 << 30


def _onnx() -> Any:
    import onnx  # optional SDK: onnx (a dependency, imported on first use to keep `import runtimes` light)

    return onnx


def read_onnx(path: Path, *, load_weights: bool = False) -> Any:
    """Parse an ONNX file (without its external weights unless ``load_weights``).

    Raises:
        ArtifactError: the file is missing, empty, truncated or not an ONNX model.
    """
    onnx = _onnx()
    require_file(path, "ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as err:  # protobuf DecodeError, missing external data, ...
        raise ArtifactError(f"{path}: cannot read the ONNX model; the file may be truncated or corrupt "
                            f"({short_error(err)})") from err
    if not model.graph.node or not model.graph.output:
        raise ArtifactError(f"{path}: not an ONNX model (the graph has no nodes or no outputs); "
                            "the file may be truncated or corrupt")
    return model


def onnx_precision(metadata: dict[str, str]) -> str:
    """The precision recorded by :func:`write_fp16_onnx` in a model's metadata (default fp32)."""
    return metadata.get(PRECISION_KEY, "fp32")


def _tensor_to_fp16(tensor: Any) -> Any:
    from onnx import numpy_helper  # optional SDK: onnx

    values = numpy_helper.to_array(tensor).astype(np.float32)
    # finite values beyond the float16 range would become inf; saturate them instead
    values = np.clip(values, -_FP16_MAX, _FP16_MAX, where=np.isfinite(values), out=values)
    return numpy_helper.from_array(values.astype(np.float16), tensor.name)


def _fresh_name(base: str, taken: set[str]) -> str:
    name, i = f"{base}__fp16", 1
    while name in taken:
        name, i = f"{base}__fp16_{i}", i + 1
    taken.add(name)
    return name


def convert_to_fp16(model: Any, source: Path) -> Any:
    """Convert a loaded ModelProto (with its weights) to FP16 compute with float32 IO, in place.

    Raises:
        ValueError: the graph has control-flow subgraphs (not handled).
    """
    onnx = _onnx()
    from onnx import TensorProto, helper  # optional SDK: onnx

    graph = model.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"{source}: node {node.name or node.op_type!r} ({node.op_type}) has a subgraph; "
                             "the FP16 conversion handles graphs without control flow only")
    keep_fp32 = {node.input[i] for node in graph.node for i in _FLOAT32_ONLY_INPUTS.get(node.op_type, ())
                 if i < len(node.input) and node.input[i]}

    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep_fp32:
            init.CopyFrom(_tensor_to_fp16(init))
    for node in graph.node:
        if set(node.output) & keep_fp32:
            continue
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_tensor_to_fp16(attr.t))
                elif attr.name in ("value_float", "value_floats"):
                    values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), np.float16)
                    attr.CopyFrom(helper.make_attribute("value", onnx.numpy_helper.from_array(values)))
        elif node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    del graph.value_info[:]  # float32 annotations are stale now; the runtimes infer types again

    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output)} | {i.name for i in graph.initializer}
    initializers = {i.name for i in graph.initializer}
    first, last = [], []
    for value in graph.input:
        if value.name in initializers or value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = _fresh_name(value.name, taken)
        for node in graph.node:
            node.input[:] = [inner if n == value.name else n for n in node.input]
        first.append(helper.make_node("Cast", [value.name], [inner], to=TensorProto.FLOAT16, name=inner + "_cast"))
    for value in graph.output:
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = _fresh_name(value.name, taken)
        for node in graph.node:
            node.input[:] = [inner if n == value.name else n for n in node.input]
            node.output[:] = [inner if n == value.name else n for n in node.output]
        last.append(helper.make_node("Cast", [inner], [value.name], to=TensorProto.FLOAT, name=inner + "_cast"))
    nodes = [*first, *graph.node, *last]
    del graph.node[:]
    graph.node.extend(nodes)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, PRECISION_KEY: "fp16"})
    return model


def write_fp16_onnx(source: Path, dest: Path) -> Path:
    """Write an FP16 copy of the ONNX file ``source`` to ``dest`` (renamed into place when complete).

    Raises:
        ArtifactError: ``source`` is missing, truncated or corrupt.
        ValueError: the graph cannot be converted (control flow).
    """
    onnx = _onnx()
    model = read_onnx(source, load_weights=True)
    if onnx_precision({p.key: p.value for p in model.metadata_props}) != "fp16":
        convert_to_fp16(model, source)
    weight_bytes = sum(len(i.raw_data) for i in model.graph.initializer)
    with staging_dir(dest.parent) as tmp:
        staged = tmp / dest.name
        if weight_bytes > _EXTERNAL_DATA_BYTES:
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=dest.name + ".data")
            os.replace(tmp / (dest.name + ".data"), dest.parent / (dest.name + ".data"))
        else:
            onnx.save_model(model, str(staged))
        os.replace(staged, dest)
    return dest
