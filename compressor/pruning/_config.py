"""Typed, validated configuration of a pruning run (round-trips through JSON)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from compressor.common.config import JsonConfig, is_int
from compressor.criteria import get_criterion
from compressor.graph import RESIDUAL_POLICIES

TARGET_KEYS = ("ratio", "global_ratio", "target_flops", "target_params")
DEPLOY_RUNTIMES = ("onnxruntime", "openvino", "torch", "tensorrt")
@dataclass(frozen=True)
class PruneConfig(JsonConfig):
    """What to prune and how much.

    Exactly one target is given:

    * ``ratio``: fraction of each channel group's channels removed (layer-wise ranking);
    * ``global_ratio``: fraction of all removable channels removed, ranked across layers;
    * ``target_flops``: keep this fraction of the model's FLOPs (global ranking);
    * ``target_params``: keep this fraction of the parameters (global ranking).

    ``layer_ratios`` maps regexes of layer names to a ratio that overrides ``ratio`` for the
    channel groups a matching conv/Linear layer produces (its output channels). ``round_to=N`` makes kept channel counts multiples of
    N, rounded to the nearest multiple that still meets the target. At least
    ``max(min_channels, round_to)`` channels are kept in every layer. The default
    ``round_to="auto"`` aligns each group to what the deployment target needs (``runtime`` on
    ``device`` at ``batch_size`` and ``threads``; no runtime means the CPU runtimes of this
    machine), measured by a short cached probe; see ``compressor.pruning._align``. The choice is
    recorded in ``alignment`` (filled in by ``resolve_alignment``; leave it empty). ``exclude`` lists layer
    names or regexes whose channels are all kept. ``allow_renormalization=False`` keeps the
    channels that a LayerNorm normalises together (so the result equals zeroing channels).
    ``submodule`` prunes only that submodule (e.g. ``"backbone"`` of a detection model that
    cannot be traced as a whole); its outputs are protected, so the rest of the model is
    unaffected, and the example inputs are still those of the whole model.

    ``boundary`` names submodules that are run as opaque leaves: never traced, never pruned, and
    the channels they read are protected. It is how a model whose post-processing (anchors,
    NMS, data-dependent decoding) cannot be traced is pruned whole: name the post-processing
    module, and the network in front of it is pruned. The detectors the toolchain knows
    (torchvision's and Ultralytics') need no boundary: their network is found automatically.

    ``criterion_options`` are the criterion's own options (``{"tau": 0.9}`` for simc; see
    ``compressor.get_criterion(name).defaults``). ``residual`` is the ResNet policy:
    ``"coupled"`` also prunes residual-stream channels, ``"internal"`` keeps the stream at full
    width and prunes inside the blocks. Data-based criteria read ``calib_batches`` batches of
    ``calib_batch_size`` samples from the data given to ``prune_model``.
    """

    _TUPLE_FIELDS = ("exclude", "boundary")

    criterion: str = "l2"
    ratio: float | None = None
    global_ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    layer_ratios: dict[str, float] = field(default_factory=dict)
    round_to: int | str = "auto"
    min_channels: int = 1
    exclude: tuple[str, ...] = ()
    allow_renormalization: bool = True
    seed: int = 0
    submodule: str | None = None
    boundary: tuple[str, ...] = ()
    criterion_options: dict[str, Any] = field(default_factory=dict)
    residual: str = "coupled"
    calib_batches: int = 8
    calib_batch_size: int = 64
    runtime: str | None = None
    device: str = "cpu"
    batch_size: int = 1
    threads: int | None = None
    alignment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = [k for k in TARGET_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(TARGET_KEYS)}; got {given or 'none'}")
        for key in ("ratio", "global_ratio"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value}")
        for key in ("target_flops", "target_params"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value <= 1.0:
                raise ValueError(f"{key} is the fraction to keep and must be in (0, 1], got {value}")
        for pattern, value in self.layer_ratios.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"layer_ratios[{pattern!r}] must be in [0, 1), got {value}")
            _compile(pattern, "layer_ratios")
        if self.layer_ratios and self.ratio is None:
            raise ValueError("layer_ratios needs the layer-wise target 'ratio'")
        if self.round_to != "auto" and (not is_int(self.round_to) or self.round_to < 1):
            raise ValueError(f"round_to must be 'auto' or an integer >= 1, got {self.round_to!r}")
        if self.runtime is not None and self.runtime not in DEPLOY_RUNTIMES:
            raise ValueError(f"runtime must be one of {list(DEPLOY_RUNTIMES)} (or None: the CPU runtimes of this "
                             f"machine), got {self.runtime!r}")
        if self.device not in ("cpu", "cuda", "gpu"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'gpu', got {self.device!r}")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size (the deployment batch size) must be an integer >= 1, got {self.batch_size!r}")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1 or None, got {self.threads!r}")
        if not isinstance(self.alignment, dict):
            raise ValueError(f"alignment is filled in by resolve_alignment and must be a dict, got {self.alignment!r}")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise ValueError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        for pattern in self.exclude:
            _compile(pattern, "exclude")
        if isinstance(self.boundary, str):
            object.__setattr__(self, "boundary", (self.boundary,))
        object.__setattr__(self, "boundary", tuple(self.boundary))
        if not all(isinstance(b, str) and b for b in self.boundary):
            raise ValueError(f"boundary lists submodule names (strings), got {list(self.boundary)!r}")
        if self.boundary and self.submodule:
            raise ValueError("give boundary or submodule, not both: submodule prunes one traceable part, "
                             "boundary prunes the whole model in front of the named parts")

        get_criterion(self.criterion).resolve_options(self.criterion_options)
        if self.residual not in RESIDUAL_POLICIES:
            raise ValueError(f"residual must be one of {RESIDUAL_POLICIES}, got {self.residual!r}")
        for key in ("calib_batches", "calib_batch_size"):
            value = getattr(self, key)
            if not is_int(value) or value < 1:
                raise ValueError(f"{key} must be an integer >= 1, got {value!r}")

    @property
    def target(self) -> tuple[str, float]:
        key = next(k for k in TARGET_KEYS if getattr(self, k) is not None)
        return key, float(getattr(self, key))



def _compile(pattern: str, key: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{key} entry {pattern!r} is not a valid regular expression: {exc}") from exc
