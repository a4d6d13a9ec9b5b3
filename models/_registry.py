"""Name -> factory registry for the model zoo, with torchvision/timm pass-through.

Follows the timm ``register_model`` / ``list_models`` / ``create_model`` pattern, with one
difference: registering a name twice is an error (timm only warns).

Names with a ``torchvision:`` or ``timm:`` prefix are forwarded to those libraries, which are
imported lazily inside the functions below so that ``import models`` costs only torch. A name of
the form ``package.module:factory`` imports that module and calls ``factory(**kwargs)``: the way to
bring your own ``nn.Module`` class or builder function.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, TypeVar

from torch import nn

__all__ = ["register_model", "list_models", "create_model", "default_input_size", "is_factory_spec"]

InputSize = tuple[int, int, int]
ModelFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=ModelFactory)

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
ULTRALYTICS_PREFIX = "ultralytics:"
# package.module:attribute, each part a Python identifier (the entry-point syntax of setuptools)
_FACTORY_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

# Natural example inputs (C, H, W) for torchvision models, by task.
_TV_CLASSIFICATION_SIZE: InputSize = (3, 224, 224)
_TV_INCEPTION_SIZE: InputSize = (3, 299, 299)  # Szegedy et al. 2016 use 299x299 crops
_TV_DETECTION_SIZE: InputSize = (3, 320, 320)
_TV_SEGMENTATION_SIZE: InputSize = (3, 224, 224)
_TIMM_FALLBACK_SIZE: InputSize = (3, 224, 224)
_ULTRALYTICS_SIZE: InputSize = (3, 640, 640)  # Ultralytics' default imgsz


@dataclass(frozen=True)
class _ModelEntry:
    """One registered zoo model: its factory and its natural (C, H, W) example input."""

    name: str
    factory: ModelFactory
    input_size: InputSize


_MODEL_ENTRIES: dict[str, _ModelEntry] = {}


def _check_input_size(name: str, input_size: InputSize) -> InputSize:
    size = tuple(input_size)
    if len(size) != 3 or not all(isinstance(d, int) and d > 0 for d in size):
        raise ValueError(
            f"input_size for model {name!r} must be three positive ints (C, H, W), got {input_size!r}"
        )
    return size  # type: ignore[return-value]


def register_model(name: str, *, input_size: InputSize = (3, 32, 32)) -> Callable[[_F], _F]:
    """Register a zoo model factory under ``name``.

    Args:
        name: the zoo name, e.g. ``"resnet56"``. Must not contain ``":"`` (reserved for the
            ``torchvision:``/``timm:`` prefixes).
        input_size: the model's natural example input as (C, H, W); defaults to CIFAR's 3x32x32.

    Returns:
        A decorator that records the factory and returns it unchanged.

    Raises:
        ValueError: if ``name`` is empty, contains ``":"``, or is already registered.
    """
    if not name or ":" in name:
        raise ValueError(f"model name must be non-empty and contain no ':', got {name!r}")
    if name in _MODEL_ENTRIES:
        raise ValueError(f"model {name!r} is already registered")
    size = _check_input_size(name, input_size)

    def decorator(factory: _F) -> _F:
        # Checked again here: two decorators for one name may be created before either is applied.
        if name in _MODEL_ENTRIES:
            raise ValueError(f"model {name!r} is already registered")
        _MODEL_ENTRIES[name] = _ModelEntry(name=name, factory=factory, input_size=size)
        return factory

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Return the sorted zoo names, optionally filtered by an ``fnmatch`` pattern such as ``"resnet*"``.

    torchvision/timm models are not listed; reach them with the ``torchvision:``/``timm:`` prefixes.
    """
    names = sorted(_MODEL_ENTRIES)
    if pattern is None:
        return names
    return fnmatch.filter(names, pattern)


def _import_optional(package: str) -> ModuleType:
    """Import an optional dependency, or raise ImportError that names what to install."""
    try:
        return importlib.import_module(package)
    except ImportError as err:
        raise ImportError(
            f"{package} is not installed; `pip install {package}` to use {package}: models"
        ) from err


def _unknown_model_error(name: str) -> ValueError:
    known = ", ".join(list_models())
    return ValueError(
        f"unknown model {name!r}. Known zoo models: {known}. "
        f"Other models: '{TORCHVISION_PREFIX}NAME' (torchvision.models), '{TIMM_PREFIX}NAME' (timm) or "
        "'package.module:factory' (your own callable returning an nn.Module)."
    )


def _close_matches(name: str, known: list[str]) -> str:
    """`` Did you mean: a, b?`` for the known names closest to ``name``, or ``""``."""
    matches = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""


def is_factory_spec(name: str) -> bool:
    """Whether ``name`` has the ``package.module:factory`` form (torchvision:/timm:/ultralytics: names do not count)."""
    if name.startswith((TORCHVISION_PREFIX, TIMM_PREFIX, ULTRALYTICS_PREFIX)):
        return False
    return _FACTORY_SPEC.fullmatch(name) is not None


def _resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable named by ``package.module:factory``; ImportError/ValueError naming ``spec``."""
    module_name, _, attr_path = spec.partition(":")
    if module_name.split(".")[0] in sys.stdlib_module_names or module_name == "builtins":
        raise ValueError(f"model factory {spec!r} names the standard library module {module_name!r}, "
                         "not a model")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"model factory {spec!r}: cannot import {module_name!r} ({err}); is its package "
                          "installed or its directory on PYTHONPATH?") from err
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            public = [n for n in dir(target) if not n.startswith("_")]
            raise ValueError(f"model factory {spec!r}: {getattr(target, '__name__', module_name)!r} has no "
                             f"attribute {part!r}.{_close_matches(part, public)}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model factory {spec!r} is a {type(target).__name__}, not a callable")
    return target


def _create_from_factory(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    model = _resolve_factory(spec)(**kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model factory {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def _reject_pretrained_kwargs(name: str, kwargs: dict[str, Any], keys: tuple[str, ...]) -> None:
    # The zoo never downloads anything: weights are loaded explicitly by the caller.
    for key in keys:
        if kwargs.get(key) not in (None, False):
            raise ValueError(
                f"{name}: {key}={kwargs[key]!r} is not supported; create_model never downloads "
                "weights. Build the model, then load a state_dict yourself."
            )
        kwargs.pop(key, None)


def _create_torchvision(tv_name: str, kwargs: dict[str, Any]) -> nn.Module:
    _import_optional("torchvision")
    tv_models = importlib.import_module("torchvision.models")
    _reject_pretrained_kwargs(TORCHVISION_PREFIX + tv_name, kwargs, ("weights", "weights_backbone"))
    if tv_name not in tv_models.list_models():
        raise ValueError(f"unknown torchvision model {tv_name!r}."
                         f"{_close_matches(tv_name, tv_models.list_models())}")
    builder = tv_models.get_model_builder(tv_name)
    if "weights_backbone" in inspect.signature(builder).parameters:
        # Detection/segmentation builders default to ImageNet backbone weights: switch that off.
        kwargs["weights_backbone"] = None
    return builder(weights=None, **kwargs)


def _create_timm(timm_name: str, kwargs: dict[str, Any]) -> nn.Module:
    timm = _import_optional("timm")
    _reject_pretrained_kwargs(TIMM_PREFIX + timm_name, kwargs, ("pretrained",))
    if not timm.is_model(timm_name):  # timm raises a bare RuntimeError for unknown names
        raise ValueError(f"unknown timm model {timm_name!r}.{_close_matches(timm_name, timm.list_models())}")
    return timm.create_model(timm_name, pretrained=False, **kwargs)


def _create_ultralytics(config: str, kwargs: dict[str, Any]) -> nn.Module:
    """An Ultralytics detection model built from a packaged YAML config, with random weights.

    Only ``*.yaml`` names: a ``*.pt`` name would make Ultralytics download weights. ``nc`` (the
    class count, default the config's 80) is the one keyword taken.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or downloads at import or build
    if not config.endswith((".yaml", ".yml")):
        raise ValueError(f"{ULTRALYTICS_PREFIX}{config}: only a packaged YAML config is built here (e.g. "
                         f"{ULTRALYTICS_PREFIX}yolov8n.yaml, {ULTRALYTICS_PREFIX}yolo11n.yaml), with random weights; "
                         "a .pt name would download weights. Your own trained checkpoint loads as a file with "
                         "--allow-pickle (it is a pickle), or as a state dict with --weights")
    extra = sorted(set(kwargs) - {"nc"})
    if extra:
        raise TypeError(f"{ULTRALYTICS_PREFIX}{config} takes only nc (the class count), got {extra}")
    _import_optional("ultralytics")
    tasks = importlib.import_module("ultralytics.nn.tasks")
    try:
        return tasks.DetectionModel(config, nc=kwargs.get("nc"), verbose=False)
    except FileNotFoundError as exc:
        raise ValueError(f"unknown Ultralytics config {config!r} (a packaged detection YAML such as "
                         "yolov8n.yaml, yolov8s.yaml, yolo11n.yaml)") from exc


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a randomly initialised model by name.

    Args:
        name: a zoo name (see :func:`list_models`), ``"torchvision:NAME"`` (built with
            ``torchvision.models.get_model(NAME, weights=None)``, and ``weights_backbone=None``
            where the builder takes it), ``"timm:NAME"`` (``timm.create_model(NAME, pretrained=False)``),
            ``"ultralytics:CONFIG.yaml"`` (an Ultralytics detection model from its packaged YAML,
            e.g. ``ultralytics:yolov8n.yaml``; ``nc`` sets the class count),
            or ``"package.module:factory"``: any importable callable (a function or an ``nn.Module``
            class) that returns an ``nn.Module``; that module is imported and the callable run.
        **kwargs: forwarded to the factory, e.g. ``num_classes=100, width=8``.

    Returns:
        The model, in training mode, on CPU, with ``model.zoo_spec = {"name", "kwargs"}`` so
        that it can be rebuilt by name (used to reload saved models without pickle).

    Raises:
        ValueError: for an unknown name (the message lists the zoo names and the prefixes, or the
            closest torchvision/timm names), if weights/pretrained are requested, or for a factory
            that is missing, not callable, in the standard library, or returns no ``nn.Module``.
        ImportError: if the name needs torchvision or timm and it is not installed, or a factory's
            module cannot be imported.
        TypeError: the factory does not take ``kwargs``.
    """
    if name.startswith(ULTRALYTICS_PREFIX):
        model = _create_ultralytics(name[len(ULTRALYTICS_PREFIX) :], dict(kwargs))
    elif is_factory_spec(name):
        model = _create_from_factory(name, dict(kwargs))
    elif name.startswith(TORCHVISION_PREFIX):
        model = _create_torchvision(name[len(TORCHVISION_PREFIX) :], dict(kwargs))
    elif name.startswith(TIMM_PREFIX):
        model = _create_timm(name[len(TIMM_PREFIX) :], dict(kwargs))
    else:
        entry = _MODEL_ENTRIES.get(name)
        if entry is None:
            raise _unknown_model_error(name)
        model = entry.factory(**kwargs)
    # how to rebuild this architecture: lets a saved model reload without pickled code
    model.zoo_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def _torchvision_input_size(tv_name: str) -> InputSize:
    _import_optional("torchvision")
    tv_models = importlib.import_module("torchvision.models")
    if tv_name not in tv_models.list_models():
        raise ValueError(f"unknown torchvision model {tv_name!r}."
                         f"{_close_matches(tv_name, tv_models.list_models())}")
    if tv_name in tv_models.list_models(module=tv_models.video):
        raise ValueError(f"torchvision:{tv_name} is a video model with 5-D (N, C, T, H, W) inputs")
    if tv_name in tv_models.list_models(module=tv_models.optical_flow):
        raise ValueError(f"torchvision:{tv_name} is an optical-flow model taking two images")
    if tv_name in tv_models.list_models(module=tv_models.detection):
        return _TV_DETECTION_SIZE
    if tv_name in tv_models.list_models(module=tv_models.segmentation):
        return _TV_SEGMENTATION_SIZE
    if tv_name.endswith("inception_v3"):
        return _TV_INCEPTION_SIZE
    return _TV_CLASSIFICATION_SIZE


def _timm_input_size(timm_name: str) -> InputSize:
    timm = _import_optional("timm")
    cfg = timm.models.get_pretrained_cfg(timm_name, allow_unregistered=True)
    size = getattr(cfg, "input_size", None)
    if size is None:
        return _TIMM_FALLBACK_SIZE
    return _check_input_size(TIMM_PREFIX + timm_name, tuple(int(d) for d in size))  # type: ignore[arg-type]


def default_input_size(name: str) -> InputSize:
    """Return the natural example input (C, H, W) for a model name accepted by :func:`create_model`.

    Zoo models give the size they were registered with (CIFAR 3x32x32, LeNet 1x32x32, ReID
    3x256x128, ImageNet 3x224x224). torchvision classification models give 3x224x224
    (inception_v3: 3x299x299), detection 3x320x320 and segmentation 3x224x224; timm models give
    their pretrained config's size.

    Raises:
        ValueError: for an unknown name, a ``package.module:factory`` name (its size is not known),
            or a torchvision video/optical-flow model whose input is not one (C, H, W) image.
        ImportError: if the name needs torchvision or timm and it is not installed.
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_input_size(name[len(TORCHVISION_PREFIX) :])
    if name.startswith(TIMM_PREFIX):
        return _timm_input_size(name[len(TIMM_PREFIX) :])
    if name.startswith(ULTRALYTICS_PREFIX):
        return _ULTRALYTICS_SIZE
    if is_factory_spec(name):
        raise ValueError(f"{name} is a user model: its input size is not known; give it explicitly "
                         "(C,H,W; the CLI's --input-size)")
    entry = _MODEL_ENTRIES.get(name)
    if entry is None:
        raise _unknown_model_error(name)
    return entry.input_size
