"""Save and reload pruned models without executing pickled code.

A saved model is a directory:

* ``model.json``: schema version, the architecture to rebuild (a zoo name such as
  ``resnet56`` or ``torchvision:resnet50`` plus its kwargs), and for every module its size
  attributes and tensor shapes/dtypes after pruning;
* ``weights.pt``: the ``state_dict``, loaded with ``torch.load(weights_only=True)``, which
  cannot run code.

Loading rebuilds the architecture by name, resizes each module to the recorded shapes and
loads the weights strictly. An architecture recorded as ``package.module:factory`` (a user's
own model) is rebuilt by importing that module and calling the factory with the recorded
kwargs, so such a ``model.json`` runs code from your environment: load only directories you
trust. ``format="pickle"`` saves the whole module instead (for models that cannot be rebuilt
by name); loading it runs arbitrary code from the file, so :func:`load_model` refuses unless
``allow_pickle=True``.

Writes go to a temporary directory next to the target that is renamed into place, so a
failure never leaves a half-written model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from compressor.common.files import read_versioned_json
from compressor.common.outputs import atomic_directory  # noqa: F401  (re-exported: commands import it from here)

from compressor.graph import restore_modes_
from compressor.common.errors import ModelFormatError
from models import create_model

SCHEMA_VERSION = 1
SPEC_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
PICKLE_FILE = "model.pkl.pt"
_SIZE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
               "normalized_shape", "num_parameters")


def _module_spec(model: nn.Module) -> dict[str, Any]:
    spec = {}
    for name, module in model.named_modules():
        tensors = {n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
                   for n, t in list(module._parameters.items()) + list(module._buffers.items()) if t is not None}
        attrs = {}
        for attr in _SIZE_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, (int, tuple)) and not isinstance(value, bool):
                attrs[attr] = list(value) if isinstance(value, tuple) else value
        if tensors or attrs:
            spec[name] = {"type": type(module).__name__, "attrs": attrs, "tensors": tensors}
    return spec


def _arch(model: nn.Module, arch: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if arch is None:
        arch = getattr(model, "zoo_spec", None)
    if isinstance(arch, str):
        arch = {"name": arch, "kwargs": {}}
    if arch is not None:
        try:
            json.dumps(arch)
        except TypeError as exc:
            raise ValueError(f"architecture kwargs must be JSON-serialisable: {exc}") from exc
    return arch


def save_model(model: nn.Module, path: str | os.PathLike, *, arch: str | dict[str, Any] | None = None,
               format: str = "state_dict", extra_files: dict[str, Any] | None = None,
               overwrite: bool = True) -> Path:
    """Save ``model`` to the directory ``path`` (see module docstring).

    Args:
        model: the (pruned) model.
        path: output directory, replaced atomically if it exists and ``overwrite``.
        arch: how to rebuild the architecture: a name accepted by ``models.create_model``
            or ``{"name": ..., "kwargs": {...}}``. Defaults to ``model.zoo_spec``, which
            ``models.create_model`` sets.
        format: ``"state_dict"`` (default, safe to load) or ``"pickle"``.
        extra_files: more files to write alongside, ``{name: dict (as JSON) | str | bytes}``.

    Raises:
        ValueError: no architecture is known for the state_dict format, or a bad format.
    """
    if format not in ("state_dict", "pickle"):
        raise ValueError(f"format must be 'state_dict' or 'pickle', got {format!r}")
    spec_arch = _arch(model, arch)
    if format == "state_dict" and spec_arch is None:
        raise ValueError(
            f"cannot save {type(model).__name__} as a state_dict: its architecture is unknown. Build it with "
            "models.create_model(...), pass arch='<zoo or torchvision:NAME>', or use format='pickle'.")
    spec = {
        "schema_version": SCHEMA_VERSION,
        "format": format,
        "arch": spec_arch,
        "training": model.training,
        "modes": {n: m.training for n, m in model.named_modules() if m.training != model.training},
        "modules": _module_spec(model),
        "metadata": getattr(model, "compressor_metadata", {}) or {},
    }

    def write(tmp: Path) -> None:
        if format == "pickle":
            torch.save(model, tmp / PICKLE_FILE)
        else:
            torch.save(model.state_dict(), tmp / WEIGHTS_FILE)
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=1, default=str))
        for name, content in (extra_files or {}).items():
            data = json.dumps(content, indent=1, default=str) if isinstance(content, (dict, list)) else content
            (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)

    return atomic_directory(path, write, overwrite=overwrite)


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``model.json`` of a saved model directory."""
    spec_path = Path(path) / SPEC_FILE
    spec = read_versioned_json(spec_path, kind="saved model", schema_version=SCHEMA_VERSION, error=ModelFormatError)
    for key in ("format", "modules"):
        if key not in spec:
            raise ModelFormatError(f"{spec_path} lacks the key {key!r}")
    if spec["format"] not in ("state_dict", "pickle"):
        raise ModelFormatError(f"{spec_path}: unknown format {spec['format']!r}")
    return spec


def load_model(path: str | os.PathLike, *, map_location: str | torch.device = "cpu", allow_pickle: bool = False,
               factory: Callable[[], nn.Module] | None = None) -> nn.Module:
    """Reload a model saved by :func:`save_model`.

    Args:
        path: the saved directory.
        map_location: device for the weights.
        allow_pickle: required to load ``format="pickle"`` models; unpickling runs code from
            the file, so only use it for files you trust.
        factory: builds the unpruned architecture, overriding the saved ``arch`` (for models
            not in the zoo).

    Raises:
        ModelFormatError: missing/invalid files, or weights that do not fit the architecture.
    """
    spec = read_spec(path)
    if spec["format"] == "pickle":
        if not allow_pickle:
            raise ModelFormatError(
                f"{path} holds a pickled module; unpickling can execute arbitrary code. "
                "Pass allow_pickle=True only if you trust this file.")
        return torch.load(Path(path) / PICKLE_FILE, map_location=map_location, weights_only=False)
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFormatError(f"{path} is missing {WEIGHTS_FILE}")
    if factory is not None:
        model = factory()
    else:
        arch = spec.get("arch") or {}
        if "name" not in arch:
            raise ModelFormatError(f"{Path(path) / SPEC_FILE} has no 'arch.name'; pass factory= to load_model")

        model = create_model(arch["name"], **arch.get("kwargs", {}))
    for name in (spec.get("metadata") or {}).get("folded_batchnorms", []):
        _replace_module(model, name, nn.Identity(), source=str(Path(path) / SPEC_FILE))
    resize_to_spec_(model, spec["modules"], source=str(Path(path) / SPEC_FILE))
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelFormatError(f"{weights} does not fit the architecture in {SPEC_FILE}: {exc}") from exc
    model.to(map_location)
    model.train(bool(spec.get("training", False)))
    restore_modes_(model, spec.get("modes", {}))
    model.compressor_metadata = spec.get("metadata", {})
    if spec.get("arch"):
        model.zoo_spec = spec["arch"]
    return model


def _replace_module(model: nn.Module, name: str, module: nn.Module, source: str) -> None:
    parent, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(parent) if parent else model
        getattr(owner, attr)
    except AttributeError:
        raise ModelFormatError(f"{source} names layer {name!r}, which the architecture does not have") from None
    setattr(owner, attr, module)


def resize_to_spec_(model: nn.Module, modules: dict[str, Any], source: str = "spec") -> None:
    """Give every module the attributes and (empty) tensor shapes recorded in ``modules``."""
    have = dict(model.named_modules())
    for name, entry in modules.items():
        module = have.get(name)
        if module is None:
            raise ModelFormatError(f"{source} names layer {name!r}, which the architecture does not have")
        for attr, value in entry.get("attrs", {}).items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for tname, t in entry.get("tensors", {}).items():
            current = getattr(module, tname, None)
            dtype = getattr(torch, t["dtype"])
            if current is not None and list(current.shape) == t["shape"] and current.dtype == dtype:
                continue
            empty = torch.empty(t["shape"], dtype=dtype)
            if tname in module._parameters:
                old = module._parameters[tname]
                module._parameters[tname] = nn.Parameter(empty, requires_grad=old.requires_grad if old is not None else True)
            elif tname in module._buffers:
                module._buffers[tname] = empty
            else:
                raise ModelFormatError(f"{source}: layer {name!r} has no tensor {tname!r}")
