"""Export a (pruned, folded) model to one self-contained ONNX file with a dynamic batch axis.

A model may return one tensor or several (a detector's raw head outputs): a tuple or list, a dict
or a namedtuple of tensors, nested or not. :func:`flatten_outputs` names them the way the file
does: one tensor is ``output``; a tuple's are ``output_0, output_1, ...``; a dict's are its keys,
in insertion order (the order torch's exporters flatten it in). Every output whose dim 0 is the
batch gets the dynamic batch axis.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.graph import evaluating
from compressor.common.errors import CompressorError
import inspect

DEFAULT_OPSET = 18
_TWO_GB = 2 * 1024**3


@dataclass(frozen=True)
class ExportConfig:
    """How to export to ONNX.

    ``exporter="dynamo"`` is torch's maintained exporter (needs onnxscript);
    ``"torchscript"`` is the legacy one, faster and still shipped by torch. Weights are always
    embedded in the one ``.onnx`` file (recent exporters default to a separate external-data
    file); models over 2 GB cannot be embedded and are refused.
    """

    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    dynamic_batch: bool = True
    input_name: str = "input"
    output_name: str = "output"
    output_names: tuple[str, ...] | None = None  # several outputs: their names in order (default: flatten_outputs')

    def __post_init__(self) -> None:
        if self.exporter not in ("dynamo", "torchscript"):
            raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {self.exporter!r}")
        if not 13 <= self.opset <= 23:
            raise ValueError(f"opset must be between 13 and 23, got {self.opset}")
        for key in ("input_name", "output_name"):
            if not getattr(self, key).isidentifier():
                raise ValueError(f"{key} must be an identifier, got {getattr(self, key)!r}")
        if self.output_names is not None:
            names = tuple(self.output_names)
            if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
                raise ValueError(f"output_names must be distinct non-empty strings, got {self.output_names!r}")
            object.__setattr__(self, "output_names", names)


@dataclass
class OnnxInfo:
    """What was written: enough to feed the file without reading it."""

    path: str
    input_name: str
    input_shape: list[int | str]  # "batch" for the dynamic axis
    input_dtype: str
    output_names: list[str]
    output_shape: list[int | str]  # the first output's
    opset: int
    exporter: str
    size_bytes: int
    warnings: list[str] = field(default_factory=list)
    output_shapes: list[list[int | str]] = field(default_factory=list)  # every output's, as output_names

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def flatten_outputs(out: Any, prefix: str = "output") -> list[tuple[str, torch.Tensor]]:
    """A model's output as ``[(name, tensor), ...]``, in the order torch's ONNX exporters flatten it.

    One tensor (or a container holding a single tensor, but for a dict) is ``[(prefix, t)]``. A
    tuple or list gives ``prefix_0, prefix_1, ...``; a dict (or a namedtuple) its keys (fields) in
    insertion order; nested containers join the parts with ``_`` (``output_1_0``,
    ``head_cls_logits``). ``None`` entries are dropped, as the exporters drop them.

    Raises:
        TypeError: a leaf that is neither a tensor nor None, or a dict key that is not a string.
        ValueError: no tensor at all, or two outputs with the same name.
    """
    found: list[tuple[str, torch.Tensor, bool]] = []  # (name, tensor, named by a key)

    def walk(value: Any, name: str | None, keyed: bool) -> None:
        if isinstance(value, torch.Tensor):
            found.append((name or prefix, value, keyed))
        elif value is None:
            return
        elif isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple: its fields are its keys
            walk(dict(zip(value._fields, value)), name, keyed)
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                walk(item, f"{name or prefix}_{i}", keyed)
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str) or not key:
                    raise TypeError(f"the model's output dict has the key {key!r}; output names need non-empty "
                                    "string keys")
                walk(item, key if name is None else f"{name}_{key}", True)
        else:
            raise TypeError(f"the model returned a {type(value).__name__} ({name or prefix}); exportable outputs "
                            "are tensors, or tuples, lists and dicts of tensors")

    walk(out, None, False)
    if not found:
        raise ValueError(f"the model returned {type(out).__name__} holding no tensor")
    if len(found) == 1 and not found[0][2]:
        return [(prefix, found[0][1])]
    names = [name for name, _, _ in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"the model's outputs flatten to repeated names {repeated}; give ExportConfig.output_names")
    return [(name, tensor) for name, tensor, _ in found]


def _output_spec(model: nn.Module, x: torch.Tensor, config: ExportConfig) -> tuple[list[str], list[bool]]:
    """The output names, and for each whether its dim 0 is the batch (it follows the input's dim 0).

    The dynamo exporter derives the outputs' batch dims itself; for the torchscript one, a second
    run with one more sample tells a batch dim from a dim that happens to equal the batch size.
    """
    with torch.no_grad():
        outputs = flatten_outputs(model(x), config.output_name)
        batched = [t.ndim > 0 and t.shape[0] == x.shape[0] for _, t in outputs]
        if config.exporter == "torchscript" and config.dynamic_batch and any(batched):
            try:
                more = flatten_outputs(model(torch.cat([x, x[:1]])), config.output_name)
            except Exception:  # noqa: BLE001 - a model that takes only its example's batch: keep the guess
                more = None
            if more is not None and len(more) == len(outputs):
                batched = [b and t.ndim > 0 and t.shape[0] == x.shape[0] + 1 for b, (_, t) in zip(batched, more)]
    names = [name for name, _ in outputs]
    if config.output_names is not None:
        if len(config.output_names) != len(names):
            raise ValueError(f"ExportConfig.output_names has {len(config.output_names)} names but the model "
                             f"returns {len(names)} tensors ({names})")
        names = list(config.output_names)
    return names, batched


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike,
                config: ExportConfig = ExportConfig()) -> OnnxInfo:
    """Export ``model`` (eval mode) to ``path`` and validate it with ``onnx.checker``.

    A model with several outputs (tuple, list, dict of tensors) gives one graph output per tensor,
    named as :func:`flatten_outputs` says (or ``config.output_names``); every output whose dim 0
    is the batch has the dynamic batch axis.

    Args:
        model: a single-input model returning a tensor or a (nested) tuple/list/dict of tensors.
        example_input: a (N, C, H, W) tensor; its non-batch dims are fixed in the file.
        path: destination ``.onnx``; written to a temporary file first and renamed.
        config: exporter options.

    Raises:
        CompressorError: export failed or the result does not pass the checker; the message
            names the model and the exporter.
    """
    import onnx  # optional SDK: onnx

    if not isinstance(example_input, torch.Tensor):
        raise TypeError("export_onnx takes one example input tensor")
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    if params >= _TWO_GB:
        raise CompressorError(f"{type(model).__name__} has {params / 2**30:.1f} GiB of weights; a single ONNX "
                              "file holds at most 2 GiB")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    caught: list[str] = []
    try:
        with evaluating(model), warnings.catch_warnings(record=True) as records, \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always")
            names, batched = _output_spec(model, example_input, config)
            _run_exporter(model, example_input, tmp, config, names, batched)
        caught = sorted({str(r.message).splitlines()[0][:200] for r in records
                         if not issubclass(r.category, (DeprecationWarning, FutureWarning))})
        onnx.checker.check_model(str(tmp), full_check=True)
        proto = onnx.load(str(tmp), load_external_data=False)
        os.replace(tmp, target)
    except CompressorError:
        raise
    except Exception as exc:
        raise CompressorError(f"ONNX export of {type(model).__name__} with the {config.exporter} exporter "
                              f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        for leftover in target.parent.glob(f".{target.name}.*.tmp.data"):
            leftover.unlink(missing_ok=True)
    graph_input = proto.graph.input[0]
    output = proto.graph.output[0]
    return OnnxInfo(
        path=str(target), input_name=graph_input.name, input_shape=_dims(graph_input),
        input_dtype=str(example_input.dtype).removeprefix("torch."), output_names=[o.name for o in proto.graph.output],
        output_shape=_dims(output), opset=_opset(proto), exporter=config.exporter,
        size_bytes=target.stat().st_size, warnings=caught, output_shapes=[_dims(o) for o in proto.graph.output],
    )


def _run_exporter(model: nn.Module, x: torch.Tensor, path: Path, config: ExportConfig, output_names: list[str],
                  batched: list[bool]) -> None:
    names = {"input_names": [config.input_name], "output_names": output_names}
    if config.exporter == "dynamo":
        dynamic = {"x": {0: torch.export.Dim("batch", max=1 << 16)}} if config.dynamic_batch else None
        if dynamic is not None:

            first = next(iter(inspect.signature(model.forward).parameters))
            dynamic = {first: dynamic["x"]}
        program = torch.onnx.export(model, (x,), dynamo=True, external_data=False, opset_version=config.opset,
                                    dynamic_shapes=dynamic, verbose=False, **names)
        program.save(str(path), external_data=False)
    else:
        axes = None
        if config.dynamic_batch:  # the dynamo exporter derives the outputs' batch dims; this one is told
            axes = {config.input_name: {0: "batch"}, **{n: {0: "batch"} for n, b in zip(output_names, batched) if b}}
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=config.opset, dynamic_axes=axes,
                          do_constant_folding=True, **names)


def _dims(value_info) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
