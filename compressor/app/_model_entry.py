"""Model entry: from what a user names (``--model``, ``--model-arg``, ``--weights``) to an ``nn.Module``.

A model source is one of:

* a zoo name, ``torchvision:NAME``, ``timm:NAME`` or ``package.module:factory`` (your own callable
  returning an ``nn.Module``), built by :func:`models.create_model` with the ``--model-arg``
  keyword arguments, which :func:`compressor.save_model` records so the saved model reloads;
* a saved model directory (``model.json``, or ``model/model.json`` as ``compressor train`` writes);
* a file holding a whole pickled ``nn.Module``, only with ``allow_pickle=True``.

``--weights`` files are read with ``torch.load(weights_only=True)``, which cannot run code. The
common checkpoint layouts are unwrapped (a dict of tensors directly, or under ``state_dict``,
``model_state_dict``, ``model``, ``ema``, ..., nested) and the prefixes of ``DistributedDataParallel``
(``module.``) and ``torch.compile`` (``_orig_mod.``) stripped. A file that does not fit the
model is refused before loading with the first mismatching key and both shapes; a differing
classifier gets the ``num_classes=N`` that would fit.

Unpickling (``torch.load(weights_only=False)``) runs whatever code the file names, so it happens
only with ``allow_pickle=True`` (the CLI's ``--allow-pickle``). Every failure is a
:class:`ModelEntryError` naming the source.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.deploy import load_model, read_spec, SPEC_FILE
from compressor.common.errors import ModelEntryError
from models import create_model, is_factory_spec, list_models, TIMM_PREFIX, TORCHVISION_PREFIX, ULTRALYTICS_PREFIX

__all__ = ["ModelSource", "LoadedModel", "PICKLE_WARNING", "load_source", "load_weights_", "read_state_dict",
           "is_model_name", "saved_model_dir"]

PICKLE_WARNING = ("warning: --allow-pickle: unpickling runs arbitrary code from the file; "
                  "only use it with files you trust")
# Where checkpoints keep their weights, in the order they are tried: the trained weights before an EMA.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network",
                   "ema", "state_dict_ema", "model_ema", "ema_state_dict")
# Prefixes that wrappers add to every key: DistributedDataParallel/DataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
CLASSIFIER_NAMES = ("fc", "classifier", "head", "last_linear")
FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".pkl", ".pickle")
_TRAINED_MODEL_DIR = "model"  # compressor train writes OUTPUT/model/
_SHOWN_KEYS = 5
_NESTING = 3


@dataclass(frozen=True)
class ModelSource:
    """What to load.

    Args:
        spec: a zoo name, ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory``, a saved
            model directory, or a pickled-module file.
        model_args: keyword arguments of the architecture (not for a saved model or a pickled file).
        weights: a state_dict or checkpoint file loaded into the model.
        allow_pickle: let files be unpickled (runs code from them).
    """

    spec: str
    model_args: dict[str, Any] = field(default_factory=dict)
    weights: str | os.PathLike | None = None
    allow_pickle: bool = False


@dataclass
class LoadedModel:
    """The model, the architecture name reports and input-size defaults use, and what the source was."""

    model: nn.Module
    name: str
    kind: str  # "name" (built by create_model), "saved" (a saved model directory) or "pickle" (a module file)


def saved_model_dir(path: str | os.PathLike) -> Path | None:
    """``path`` or ``path/model`` when it holds ``model.json``; ``None`` otherwise."""
    for candidate in (Path(path), Path(path) / _TRAINED_MODEL_DIR):
        if (candidate / SPEC_FILE).is_file():
            return candidate
    return None


def is_model_name(spec: str) -> bool:
    """Whether ``spec`` names an architecture for ``models.create_model`` (zoo, prefixed or factory)."""

    return spec in list_models() or spec.startswith((TORCHVISION_PREFIX, TIMM_PREFIX, ULTRALYTICS_PREFIX)) or is_factory_spec(spec)


def _looks_like_path(spec: str) -> bool:
    return ("/" in spec or os.sep in spec or spec.startswith((".", "~"))
            or Path(spec).suffix.lower() in FILE_SUFFIXES)


def load_source(source: ModelSource) -> LoadedModel:
    """Build or load the model ``source`` names, then load its ``weights``.

    Raises:
        ModelEntryError: a path that does not exist, a directory that is not a saved model,
            ``model_args`` for a saved model or a pickled file, a pickled file without
            ``allow_pickle``, arguments the architecture does not take, or weights that do not fit
            (see :func:`load_weights_`).
        ValueError, ImportError: from ``models.create_model``: an unknown name (with the closest
            ones), a factory that cannot be imported, is not callable or returns no module.
        ModelFormatError: a damaged saved model.
    """
    spec = source.spec
    saved = saved_model_dir(spec)
    path = Path(spec).expanduser()
    if saved is not None:
        _refuse_model_args(source, f"{spec} is a saved model directory; its architecture and arguments are "
                                   f"recorded in {SPEC_FILE}")
        model = load_model(saved, allow_pickle=source.allow_pickle)
        loaded = LoadedModel(model, (read_spec(saved).get("arch") or {}).get("name", str(saved)), "saved")
    elif is_model_name(spec):
        loaded = LoadedModel(_create(spec, source.model_args), spec, "name")
    elif path.is_file():
        _refuse_model_args(source, f"{spec} is a file holding a whole model")
        model = _load_module_file(path, allow_pickle=source.allow_pickle)
        loaded = LoadedModel(model, f"{type(model).__module__}:{type(model).__qualname__}", "pickle")
    elif path.is_dir():
        raise ModelEntryError(f"{spec} is a directory but not a saved model: it has no {SPEC_FILE} "
                              f"(nor {_TRAINED_MODEL_DIR}/{SPEC_FILE}, as `compressor train` writes)")
    elif _looks_like_path(spec):
        what = "file" if path.suffix.lower() in FILE_SUFFIXES else "directory"
        raise ModelEntryError(f"{spec} does not exist: no such {what} (a model is a saved model directory, a "
                              "zoo name, torchvision:NAME, timm:NAME or package.module:factory)")
    else:
        loaded = LoadedModel(_create(spec, source.model_args), spec, "name")  # raises: unknown, with the known
    if source.weights is not None:
        load_weights_(loaded.model, source.weights, allow_pickle=source.allow_pickle, target=loaded.name)
    return loaded


def _refuse_model_args(source: ModelSource, why: str) -> None:
    if source.model_args:
        raise ModelEntryError(f"--model-arg {', '.join(source.model_args)} cannot apply: {why}")


def _create(spec: str, model_args: dict[str, Any]) -> nn.Module:
    try:
        return create_model(spec, **model_args)
    except TypeError as exc:  # an argument the architecture does not take
        raise ModelEntryError(f"{spec} cannot be built with {model_args}: {exc}") from exc


def _unpickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling can fail in any way the file's code chooses
        raise ModelEntryError(f"{path} cannot be unpickled: {type(exc).__name__}: {_first_line(exc)}") from exc


def _load_module_file(path: Path, *, allow_pickle: bool) -> nn.Module:
    """A whole pickled ``nn.Module`` (or a checkpoint holding one under ``model``/``ema``/...)."""
    if not allow_pickle:
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not plain weights: a pickled module (or not a torch file at all)
            raise ModelEntryError(f"{path} is not a saved model directory and not plain weights; loading it as "
                                  "a pickled nn.Module needs --allow-pickle, which runs code from the file: "
                                  "only pass it for a file you trust") from None
        raise ModelEntryError(f"{path} holds weights, not a model: name the architecture with --model "
                              f"(e.g. torchvision:resnet18) and pass this file as --weights {path}")
    obj = _unpickle(path)
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), nn.Module)), obj)
    if not isinstance(obj, nn.Module):
        raise ModelEntryError(f"{path} holds a {type(obj).__name__}, not an nn.Module; if it is a state dict, "
                              "name the architecture with --model and pass the file as --weights")
    return obj


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _weights_only_reason(exc: BaseException) -> str:
    """What torch's weights_only unpickler refused (its message is a page of advice around one line)."""
    match = re.search(r"WeightsUnpickler error: (.+?)(\. |\n|$)", str(exc))
    return match.group(1) if match else f"{type(exc).__name__}: {_first_line(exc)}"


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _find_state_dict(obj: Any, depth: int = 0) -> dict[str, torch.Tensor] | None:
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, nn.Module):  # a pickled module inside a checkpoint (only reachable with allow_pickle)
        return obj.state_dict()
    if isinstance(obj, Mapping) and depth < _NESTING:
        for key in STATE_DICT_KEYS:
            if key in obj:
                found = _find_state_dict(obj[key], depth + 1)
                if found is not None:
                    return found
    return None


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:8]
        return f"a dict with keys {keys}{' ...' if len(obj) > len(keys) else ''}"
    return f"a {type(obj).__name__}"


def read_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a weights or checkpoint file (see the module docstring for the layouts).

    Args:
        path: the file.
        allow_pickle: when the file holds more than tensors and plain containers (a pickled
            module, or objects a training script saved), unpickle it; this runs code from the file.

    Raises:
        ModelEntryError: the file is missing, cannot be read without pickle (the message names
            --allow-pickle), or holds no state dict (the message lists its top-level keys).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelEntryError(f"weights file {path} does not exist" if not path.exists()
                              else f"weights file {path} is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only runs no code, so any failure just means "not plain weights"
        if not allow_pickle:
            raise ModelEntryError(
                f"weights file {path} cannot be read as plain weights (torch.load weights_only=True: "
                f"{_weights_only_reason(exc)}): it holds Python objects beyond tensors, or is no torch.save "
                "file. If it is a checkpoint or a pickled nn.Module and you trust it, pass --allow-pickle: "
                "unpickling runs code from the file") from None
        obj = _unpickle(path)
    state = _find_state_dict(obj)
    if state is None:
        raise ModelEntryError(f"weights file {path} holds no state dict: it is {_describe(obj)}; expected a dict "
                              "of tensors, or one under 'state_dict', 'model_state_dict', 'model' or 'ema'")
    return state


def _strip_wrapper_prefixes(state: dict[str, torch.Tensor], expected: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Remove ``module.``/``_orig_mod.`` when every key has it and the model's keys do not."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not all(k.startswith(prefix) for k in expected):
                state = {k[len(prefix):]: v for k, v in state.items()}
                stripped = True
    return state


def _classifier(model: nn.Module) -> str | None:
    """The output layer: the last module with a weight that is a Linear or is named fc/classifier/head."""
    found = None
    for name, module in model.named_modules():
        named = any(part in CLASSIFIER_NAMES for part in name.split("."))
        if isinstance(getattr(module, "weight", None), torch.Tensor) and (isinstance(module, nn.Linear) or named):
            found = name
    return found


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"{shown}{f' and {len(keys) - _SHOWN_KEYS} more' if len(keys) > _SHOWN_KEYS else ''}"


def check_state_dict_fits(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str,
                          target: str) -> None:
    """Raise ModelEntryError naming the first key that ``state`` lacks, adds or shapes differently."""
    expected = model.state_dict()
    # BatchNorm fills num_batches_tracked in for state dicts written before it existed
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"{len(missing)} keys of the model are missing from the file ({_listing(missing)})"] if missing
                 else []) + ([f"{len(unexpected)} keys of the file are not in the model ({_listing(unexpected)})"]
                             if unexpected else [])
        raise ModelEntryError(f"{source} does not fit {target}: {'; '.join(parts)}")
    differ = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not differ:
        return
    first = differ[0]
    message = (f"{source} does not fit {target}: {first!r} is {list(state[first].shape)} in the file but "
               f"{list(expected[first].shape)} in the model"
               + (f" ({len(differ)} tensors differ)" if len(differ) > 1 else ""))
    classifier = _classifier(model)
    weight = f"{classifier}.weight" if classifier is not None else None
    if weight in differ and state[weight].ndim >= 1 and state[weight].shape[0] != expected[weight].shape[0]:
        classes = int(state[weight].shape[0])
        message += (f". The classifier {classifier!r} has {classes} outputs in the file and "
                    f"{int(expected[weight].shape[0])} in the model: build it with num_classes={classes} "
                    f"(--model-arg num_classes={classes})")
    raise ModelEntryError(message)


def load_weights_(model: nn.Module, path: str | os.PathLike, *, allow_pickle: bool = False,
                  target: str | None = None) -> nn.Module:
    """Load the state dict in ``path`` into ``model``, in place, strictly.

    Args:
        model: the architecture the weights were trained for.
        path: a state_dict or checkpoint file (see :func:`read_state_dict`).
        allow_pickle: see :func:`read_state_dict`.
        target: the model's name in error messages (default: its class name).

    Raises:
        ModelEntryError: the file cannot be read, or keys or shapes do not match the model (the
            first mismatching key with both shapes, and ``num_classes=N`` when the classifier differs).
    """
    target = target or type(model).__name__
    state = _strip_wrapper_prefixes(read_state_dict(path, allow_pickle=allow_pickle), model.state_dict())
    check_state_dict_fits(model, state, source=f"weights file {path}", target=target)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelEntryError(f"weights file {path} does not fit {target}: {_first_line(exc)}") from exc
    return model


# Help of the command-line options, shared by every command that takes a model.
MODEL_HELP = ("zoo name (see models.list_models), torchvision:NAME, timm:NAME, package.module:factory (your own "
              "callable returning an nn.Module), or a saved model directory")
MODEL_ARG_HELP = ("argument of the architecture, e.g. num_classes=10 or width=32; values are JSON, else strings "
                  "(repeatable; recorded in the saved model so it reloads)")
WEIGHTS_HELP = ("state_dict or checkpoint file to load into the model (torch.load weights_only=True; finds the "
                "weights under state_dict/model/model_state_dict/ema and strips DDP's module. prefix)")
ALLOW_PICKLE_HELP = ("let a file be unpickled: a whole pickled nn.Module as the model, or a checkpoint holding "
                     "Python objects as --weights. Unpickling runs arbitrary code from the file: only for files "
                     "you trust")


def build_model(name: str, spec: Any, num_outputs: int,
                 extra: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """A zoo model sized for the data (classes, input channels), or a saved model to fine-tune.

    Returns the model and its zoo spec (None for a saved model). ValueError when the model does
    not take the needed arguments.
    """

    if (Path(name) / SPEC_FILE).is_file():
        if extra:
            raise ValueError("--model-arg applies to zoo models, not to a saved model directory")
        return load_model(name), None

    kwargs: dict[str, Any] = {"num_ids": num_outputs} if spec.task == "reid" else {"num_classes": num_outputs}
    kwargs.update(extra)
    attempts = [kwargs]
    if spec.task == "classification":  # zoo CNNs take in_chans; torchvision's models are RGB only
        attempts.insert(0, {**kwargs, "in_chans": spec.input_size[0]})
    for attempt in attempts:
        try:
            model = create_model(name, **attempt)
            break
        except TypeError as err:
            error = err
    else:
        raise ValueError(f"model {name!r} does not take {sorted(kwargs)} ({error}); pick a zoo model that does")
    return model, getattr(model, "zoo_spec", None)
