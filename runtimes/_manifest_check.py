"""Check a bundle manifest's claims against the files it describes (torch-free; used by ``load_bundle``).

The manifest is not signed: whoever can edit it can rewrite any hash. What these checks make
impossible is a bundle that *disagrees with itself*:

* the ``files`` table must list every file a runtime loads (each artifact, an IR's ``.bin``, a
  directory artifact's files, ONNX external weights, and ``model.onnx``), each with its sha256;
* the declared input (``input.shape``, ``input.dtype``) and output (``output_shape``,
  ``num_classes``) must match the ONNX graph's (the batch dim is free); so must the ``outputs``
  list, where present: one ``{name, shape}`` per graph output, in the graph's order;
* the cost figures (``cost.flops``, ``cost.macs``) must match the MACs counted from the ONNX
  graph (conv, Gemm, MatMul; FLOPs = 2 x MACs per sample, ``count_cost``'s convention) within
  :data:`FLOPS_TOLERANCE`, where the graph's shapes are static and it has no control flow;
* the parity record must agree with itself: each run's ``passed`` with its errors and the
  tolerances of its precision (INT8: the floors recorded under ``int8.floors``), ``parity_passed`` with the runs, and every artifact's runtime
  must have been checked, on every declared output where ``outputs`` is present.

Not covered (provenance and hints, not re-derivable from the files): ``versions``, ``source``,
``weights``, ``recipe``, ``alignment`` (the wording of speed-warning hints), ``created_unix``,
the parameter/memory figures (``cost.params``, ``mps_bytes``, ``fm_elements``, ``trm_bytes``:
the theoretical TRM printed beside measured memory), the parity errors themselves when edited
consistently, and the FLOPs of graphs with dynamic shapes or control flow (listed in
:attr:`runtimes.Bundle.unchecked`).
"""
from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from runtimes._parity import TOLERANCES, floors_for, judge
from runtimes._onnx import read_onnx
from runtimes._base import ArtifactError
from compressor.common.errors import CompressorError

__all__ = ["FLOPS_TOLERANCE", "count_graph_macs", "required_files", "verify_manifest"]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TARGET_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "torch": "torch"}
RUNTIME_TARGET = {runtime: target for target, runtime in TARGET_RUNTIME.items()}  # the artifact each runtime loads
ONNX_FILE = "model.onnx"
FLOPS_TOLERANCE = 0.01  # relative; a swapped or differently pruned model differs by far more
_DTYPES = {"float32": 1, "float16": 10, "float64": 11}  # onnx.TensorProto element types
_CONTROL_FLOW = {"If", "Loop", "Scan"}
_UNCOUNTED = {"ConvTranspose", "Einsum", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"}


class BundleError(CompressorError):
    """A bundle is missing files, was tampered with, or failed its parity check."""


class _Unknown(Exception):
    """The graph's MACs cannot be counted; the message says why."""


def _error() -> type[Exception]:

    return BundleError


def _inside(root: Path, rel: Any, what: str) -> str:
    """``rel`` as a path relative to the bundle, refusing absolute paths and ``..``."""
    if not isinstance(rel, str) or not rel or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise _error()(f"bundle {root}: {what} must be a path inside the bundle, got {rel!r}")
    return str(PurePosixPath(rel))


def _tensors(graph: Any) -> Any:
    """Every tensor of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _external_data(model: Any) -> list[str]:
    """The files an ONNX model keeps its weights in (the ``location`` of each external tensor)."""
    out = []
    for tensor in _tensors(model.graph):
        if tensor.data_location == tensor.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location and location not in out:
                out.append(location)
    return out


def required_files(root: Path, manifest: dict[str, Any], graph: Any) -> dict[str, str]:
    """``{relative path: what it is}`` of every file a runtime of the bundle loads.

    ``graph`` is ``model.onnx`` parsed without its weights (for its external data files).
    """

    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict) or not artifacts:
        raise _error()(f"bundle {root}: manifest.json lists no artifacts ({artifacts!r})")
    onnx_dir = PurePosixPath(ONNX_FILE).parent
    needed = {ONNX_FILE: "the ONNX graph"}
    needed.update({str(onnx_dir / loc): "external weights of model.onnx" for loc in _external_data(graph)})
    for target, rel in artifacts.items():
        rel = _inside(root, rel, f"artifacts[{target!r}]")
        path = root / rel
        what = f"the {target} artifact"
        if path.is_dir():
            inside = sorted(str(p.relative_to(root).as_posix()) for p in path.rglob("*") if p.is_file())
            if not inside:
                raise _error()(f"bundle {root}: {what} {rel}/ is an empty directory")
            needed.update({p: what for p in inside})
            continue
        needed[rel] = what
        if rel.endswith(".xml"):
            needed[rel[:-4] + ".bin"] = f"the weights of {what}"
        if rel.endswith(".onnx") and rel != ONNX_FILE and path.is_file():
            parent = PurePosixPath(rel).parent
            needed.update({str(parent / loc): f"external weights of {what}"
                           for loc in _external_data(read_onnx(path))})
    return needed


# ----------------------------------------------------------------------------- the graph


def _dims(value_info: Any) -> list[int | str | None]:
    """A value's dims: an int, a symbolic name, or None when unknown; [] for no shape."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _graph_inputs(graph: Any) -> list[Any]:
    initializers = {t.name for t in graph.initializer}
    return [v for v in graph.input if v.name not in initializers]


def count_graph_macs(model: Any, sample_shape: tuple[int, ...]) -> float:
    """Multiply-accumulates of one sample through an ONNX model (conv, Gemm, MatMul; others free).

    The model's first input is fixed to ``(1, *sample_shape)`` (in place) and shapes are inferred.

    Raises:
        _Unknown: control flow, an op that is not counted here, or a shape that stays unknown.
    """
    import onnx  # optional SDK: onnx

    value = _graph_inputs(model.graph)[0]
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(sample_shape) + 1:
        raise _Unknown(f"the graph input has rank {len(dims)}, not {len(sample_shape) + 1}")
    for dim, size in zip(dims, (1, *sample_shape)):
        dim.Clear()
        dim.dim_value = int(size)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as err:  # noqa: BLE001 - an op shape inference does not know: the FLOPs stay unchecked
        raise _Unknown(f"ONNX shape inference failed ({type(err).__name__})") from None
    graph = inferred.graph
    shapes = {v.name: _dims(v) for v in (*graph.input, *graph.value_info, *graph.output)}
    shapes.update({t.name: list(t.dims) for t in graph.initializer})

    def shape(name: str, node: Any) -> list[int]:
        got = shapes.get(name)
        if not got or not all(isinstance(d, int) and d > 0 for d in got):
            raise _Unknown(f"the shape of {name!r} ({node.op_type} {node.name!r}) is not static")
        return got

    macs = 0.0
    for node in graph.node:
        if node.op_type in _CONTROL_FLOW or any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise _Unknown(f"the graph has control flow ({node.op_type})")
        if node.op_type in _UNCOUNTED:
            raise _Unknown(f"{node.op_type} is not counted here")
        if node.op_type == "Conv":
            out, weight = shape(node.output[0], node), shape(node.input[1], node)
            macs += math.prod(out) * math.prod(weight[1:])
        elif node.op_type == "Gemm":
            a, b = shape(node.input[0], node), shape(node.input[1], node)
            attrs = {x.name: x.i for x in node.attribute}
            m, k = (a[1], a[0]) if attrs.get("transA") else (a[0], a[1])
            n = b[0] if attrs.get("transB") else b[1]
            macs += m * n * k
        elif node.op_type == "MatMul":
            a, out = shape(node.input[0], node), shape(node.output[0], node)
            macs += math.prod(out) * a[-1]
    return macs


def _check_io(root: Path, manifest: dict[str, Any], graph: Any) -> None:
    error = _error()
    spec = manifest.get("input") if isinstance(manifest.get("input"), dict) else {}
    declared = spec.get("shape")
    if not isinstance(declared, list) or len(declared) < 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in declared[1:]):
        raise error(f"bundle {root}: manifest.json input.shape must be [batch, C, H, W ...] with positive sizes, "
                    f"got {declared!r}")
    inputs = _graph_inputs(graph.graph)
    if not inputs:
        raise error(f"bundle {root}: {ONNX_FILE} has no graph input")
    actual = _dims(inputs[0])
    mismatch = len(actual) != len(declared) or any(
        isinstance(a, int) and a > 0 and a != d for a, d in zip(actual[1:], declared[1:]))
    if mismatch:
        shown = ["batch" if i == 0 else (a if isinstance(a, int) and a > 0 else "?") for i, a in enumerate(actual)]
        raise error(f"bundle {root}: manifest.json declares input shape {declared} but {ONNX_FILE}'s input "
                    f"{inputs[0].name!r} is {shown} (the batch dim may differ; rank, channels and spatial size "
                    "must not)")
    dtype = spec.get("dtype", "float32")
    elem = inputs[0].type.tensor_type.elem_type
    if _DTYPES.get(dtype) != elem:
        raise error(f"bundle {root}: manifest.json declares input dtype {dtype!r} but {ONNX_FILE}'s input has ONNX "
                    f"element type {elem}")
    declared_out = manifest.get("output_shape")
    outputs = list(graph.graph.output)
    if isinstance(declared_out, list) and outputs:
        actual_out = _dims(outputs[0])
        if actual_out and (len(actual_out) != len(declared_out) or any(
                isinstance(a, int) and a > 0 and isinstance(d, int) and a != d
                for a, d in zip(actual_out[1:], declared_out[1:]))):
            raise error(f"bundle {root}: manifest.json declares output shape {declared_out} but {ONNX_FILE}'s "
                        f"output {outputs[0].name!r} is {actual_out}")
    classes = manifest.get("num_classes")
    if classes is not None and outputs:
        last = (_dims(outputs[0]) or [None])[-1]
        if isinstance(last, int) and last > 0 and classes != last:
            raise error(f"bundle {root}: manifest.json declares num_classes {classes!r} but {ONNX_FILE} outputs "
                        f"{last} scores per sample")


def _check_outputs(root: Path, manifest: dict[str, Any], graph: Any) -> None:
    """The ``outputs`` list (bundles of models with one or several outputs) against the graph's outputs."""
    declared = manifest.get("outputs")
    if declared is None:  # a bundle written before outputs were recorded
        return
    error = _error()
    if not isinstance(declared, list) or not declared or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) and isinstance(o.get("shape"), list)
            for o in declared):
        raise error(f"bundle {root}: manifest.json outputs must be a list of {{name, shape}} entries, got "
                    f"{declared!r}")
    actual = list(graph.graph.output)
    names = [o.name for o in actual]
    if [o["name"] for o in declared] != names:
        raise error(f"bundle {root}: manifest.json declares outputs {[o['name'] for o in declared]} but "
                    f"{ONNX_FILE} has {names}")
    for spec, value in zip(declared, actual):
        dims, shape = _dims(value), spec["shape"]
        if dims and (len(dims) != len(shape) or any(
                isinstance(a, int) and a > 0 and isinstance(d, int) and a != d for a, d in zip(dims[1:], shape[1:]))):
            raise error(f"bundle {root}: manifest.json declares output {spec['name']!r} of shape {shape} but "
                        f"{ONNX_FILE}'s is {dims}")


def _check_cost(root: Path, manifest: dict[str, Any], graph: Any) -> str | None:
    """Compare the manifest's FLOPs with the graph's; returns why they could not be compared, or None."""
    cost = manifest.get("cost")
    if not isinstance(cost, dict) or (cost.get("flops") is None and cost.get("macs") is None):
        return None
    try:
        macs = count_graph_macs(graph, tuple(manifest["input"]["shape"][1:]))
    except _Unknown as why:
        return f"cost.flops: not checked against {ONNX_FILE}: {why}"
    for key, graph_value in (("flops", 2 * macs), ("macs", macs)):
        claimed = cost.get(key)
        if claimed is None:
            continue
        ok = isinstance(claimed, (int, float)) and not isinstance(claimed, bool) and math.isfinite(claimed) \
            and abs(claimed - graph_value) <= FLOPS_TOLERANCE * max(abs(graph_value), 1.0)
        if not ok:
            raise _error()(f"bundle {root}: manifest.json cost.{key} is {claimed!r} but {ONNX_FILE} computes "
                           f"{graph_value:.6g} per sample (FLOPs = 2 x MACs); the manifest and the model disagree "
                           "(edited, or a model.onnx from another export)")
    return None


def _check_parity_record(root: Path, manifest: dict[str, Any]) -> None:
    error = _error()
    parity = manifest.get("parity")
    if not isinstance(parity, list) or not all(isinstance(r, dict) for r in parity):
        raise error(f"bundle {root}: manifest.json parity must be a list of parity runs, got {parity!r}")
    floors = manifest["int8"].get("floors") if isinstance(manifest.get("int8"), dict) else None
    for i, run in enumerate(parity):
        precision = run.get("precision")
        expected = floors_for(precision, floors) if precision in TOLERANCES else None
        recorded = (run.get("tolerance_rel"), run.get("tolerance_cosine"))
        top1_floor = run.get("tolerance_top1")
        if expected is None or recorded != expected[:2] or top1_floor not in (None, expected[2]):
            raise error(f"bundle {root}: manifest.json parity[{i}] has tolerances {recorded} (top-1 floor "
                        f"{top1_floor!r}) for precision {precision!r}; the parity check uses "
                        f"{expected[:2] if expected else None}"
                        + (f" (top-1 floor {expected[2]})" if expected and expected[2] is not None else ""))
        cosine_key = "mean_cosine_similarity" if precision == "int8" else "cosine_similarity"
        rel, cosine, top1 = run.get("max_rel_error"), run.get(cosine_key), run.get("top1_agreement", 0.0)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (rel, cosine, top1))
        holds = numbers and judge(rel, cosine, top1, (*expected[:2], top1_floor), top1_floor is not None)
        if run.get("passed") is not holds:
            raise error(f"bundle {root}: manifest.json parity[{i}] says passed={run.get('passed')!r} but its errors "
                        f"(rel {rel!r}, cosine {cosine!r}, top-1 agreement {top1!r}) say "
                        f"{'pass' if holds else 'fail'}")
    passed = all(r["passed"] for r in parity)
    if manifest.get("parity_passed") is not passed:
        raise error(f"bundle {root}: manifest.json parity_passed is {manifest.get('parity_passed')!r} but its parity "
                    f"runs {'all passed' if passed else 'include failures'}")
    checked = {r.get("runtime") for r in parity}
    unchecked = [t for t in manifest["artifacts"] if TARGET_RUNTIME.get(t) not in checked]
    if unchecked:
        raise error(f"bundle {root}: manifest.json has no parity run for the {', '.join(unchecked)} artifact(s); "
                    "every artifact is checked against the reference when the bundle is written")
    declared = manifest.get("outputs")
    if isinstance(declared, list):  # checked against the graph by _check_outputs
        names = [o["name"] for o in declared]
        for runtime in sorted(r for r in checked if r):
            seen = {r.get("output") for r in parity if r.get("runtime") == runtime}
            missing = [n for n in names if n not in seen]
            if missing:
                raise error(f"bundle {root}: manifest.json has no {runtime} parity run for output(s) "
                            f"{missing}; every output is checked against the reference when the bundle is written")


def verify_manifest(root: Path, manifest: dict[str, Any], sha256: Callable[[Path], str]) -> list[str]:
    """Run every check of the module docstring; returns the claims that could not be checked.

    Args:
        root: the bundle directory.
        manifest: its parsed ``manifest.json``.
        sha256: ``sha256(path) -> hex digest``.

    Raises:
        runtimes.BundleError: a check failed; the message names the file, field or artifact.
    """

    error = _error()
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise error(f"bundle {root}: manifest.json has no files table (sha256 of each file), got {files!r}; "
                    "the artifacts cannot be verified. Re-export the bundle with `compressor export`")
    listed = {_inside(root, rel, "a files entry"): digest for rel, digest in files.items()}
    for rel, digest in listed.items():
        file = root / rel
        if not file.is_file():
            raise error(f"bundle file {file} is missing")
        if sha256(file) != digest:
            raise error(f"bundle file {file} does not match its sha256 in manifest.json (tampered or corrupt)")
    if not (root / ONNX_FILE).is_file():
        raise error(f"bundle file {root / ONNX_FILE} is missing")
    try:
        graph = read_onnx(root / ONNX_FILE)
    except ArtifactError as err:
        raise error(f"bundle {root}: {err}") from None
    unlisted = {rel: what for rel, what in required_files(root, manifest, graph).items() if rel not in listed}
    if unlisted:
        raise error(f"bundle {root}: manifest.json's files table lacks "
                    + ", ".join(f"{rel} ({what})" for rel, what in unlisted.items())
                    + "; an unlisted file cannot be verified")
    _check_io(root, manifest, graph)
    _check_outputs(root, manifest, graph)
    _check_parity_record(root, manifest)
    why = _check_cost(root, manifest, graph)
    return [why] if why else []
