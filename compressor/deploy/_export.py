"""Export a (pruned, folded) model to one self-contained ONNX file with a dynamic batch axis."""
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

    def __post_init__(self) -> None:
        if self.exporter not in ("dynamo", "torchscript"):
            raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {self.exporter!r}")
        if not 13 <= self.opset <= 23:
            raise ValueError(f"opset must be between 13 and 23, got {self.opset}")
        for key in ("input_name", "output_name"):
            if not getattr(self, key).isidentifier():
                raise ValueError(f"{key} must be an identifier, got {getattr(self, key)!r}")


@dataclass
class OnnxInfo:
    """What was written: enough to feed the file without reading it."""

    path: str
    input_name: str
    input_shape: list[int | str]  # "batch" for the dynamic axis
    input_dtype: str
    output_names: list[str]
    output_shape: list[int | str]
    opset: int
    exporter: str
    size_bytes: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | os.PathLike,
                config: ExportConfig = ExportConfig()) -> OnnxInfo:
    """Export ``model`` (eval mode) to ``path`` and validate it with ``onnx.checker``.

    Args:
        model: a single-input model.
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
            _run_exporter(model, example_input, tmp, config)
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
        size_bytes=target.stat().st_size, warnings=caught,
    )


def _run_exporter(model: nn.Module, x: torch.Tensor, path: Path, config: ExportConfig) -> None:
    names = {"input_names": [config.input_name], "output_names": [config.output_name]}
    if config.exporter == "dynamo":
        dynamic = {"x": {0: torch.export.Dim("batch", max=1 << 16)}} if config.dynamic_batch else None
        if dynamic is not None:

            first = next(iter(inspect.signature(model.forward).parameters))
            dynamic = {first: dynamic["x"]}
        program = torch.onnx.export(model, (x,), dynamo=True, external_data=False, opset_version=config.opset,
                                    dynamic_shapes=dynamic, verbose=False, **names)
        program.save(str(path), external_data=False)
    else:
        axes = {config.input_name: {0: "batch"}, config.output_name: {0: "batch"}} if config.dynamic_batch else None
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=config.opset, dynamic_axes=axes,
                          do_constant_folding=True, **names)


def _dims(value_info) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
