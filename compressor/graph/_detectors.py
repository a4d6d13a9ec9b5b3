"""Whole detectors as traceable networks: image tensor in, raw head outputs out.

A detector's forward mixes a network (backbone, neck, heads: convs the graph can prune) with
parts torch.fx cannot trace: resizing a list of images, anchor generation, proposal selection,
NMS, data-dependent post-processing. :func:`network_view` gives, for the families it knows, an
``nn.Module`` that *shares* the detector's submodules under their own names and whose forward
runs only the network, from an already normalised ``(B, 3, H, W)`` batch to every raw head
output (box regression, class logits, objectness, mask and keypoint logits). Pruning the view
prunes the detector: the surgery slices the shared modules, and the parts left out (transform,
anchors, NMS) stay in the detector, unchanged, and run after the smaller network.

Where the network itself reads features through a non-traceable op (the RoI pooling of a
two-stage detector), that op becomes a :class:`Boundary`: a leaf that runs the original module
unchanged on fixed boxes, whose input channels are protected (the FPN outputs feed the pooled
box, mask and keypoint heads, whose first layers keep their input width).

:func:`with_boundaries` does the same for a user's own model: the named submodules are run as
opaque leaves (never traced, never pruned) and the channels they read are protected.
"""
from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

import compressor.graph._ops as _ops


class Boundary(nn.Module):
    """A part of the model the graph does not trace: it runs ``inner`` unchanged and protects the
    channels it reads (they are "model outputs" of the network in front of it)."""

    def __init__(self, inner: nn.Module, what: str):
        super().__init__()
        self.inner = inner
        self.what = what

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def _boundary_handler(run, node, module: Boundary, args, kwargs, labels, value):
    for lab in _ops._labelled_inputs(node, labels):
        run.coupling.block(lab, f"read by {module.what} (protected boundary)")
    return _ops.fresh_labels(value)


_ops.NAMED_MODULE_HANDLERS[f"{Boundary.__module__}.{Boundary.__qualname__}"] = _boundary_handler


@dataclass(frozen=True)
class Part:
    """A named part of a detector (backbone, neck, head ...) and the module-name prefixes it owns."""

    name: str
    prefixes: tuple[str, ...]

    def owns(self, module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in self.prefixes)


class NetworkView(nn.Module):
    """The traceable network of a detector. Subclasses register the detector's own submodules
    under their own names, so layer names (reports, ``exclude``) are the detector's."""

    family = "detector"
    #: what the network takes and what runs after it, for reports and the export notes
    input_note = "a normalised (B, 3, H, W) float batch"
    postprocess_note = ""

    @property
    def deploy_note(self) -> str:
        """What :meth:`deployable` ships and what runs after it."""
        return f"the network's raw outputs; after it: {self.postprocess_note}"

    def network_input(self, example_inputs: Any) -> tuple[torch.Tensor]:
        """The network's input for a detector's example input: a batch tensor is taken as the
        network input itself; a list of images goes through the detector's own transform."""
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor):
            return (inputs[0],)
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) and inputs[0] \
                and all(isinstance(t, torch.Tensor) for t in inputs[0]):
            return (self._transform(list(inputs[0])),)
        raise ValueError(f"a {self.family} detector takes a (B, 3, H, W) batch or a list of (3, H, W) images, "
                         f"got {type(example_inputs).__name__}")

    def _transform(self, images: list[torch.Tensor]) -> torch.Tensor:
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) != 1:
            raise ValueError(f"a detector is pruned at one input size; the example images have sizes {sorted(shapes)}")
        return torch.stack(images)

    def parts(self) -> list[Part]:
        raise NotImplementedError

    def output_names(self) -> list[str]:
        raise NotImplementedError

    def deployable(self) -> nn.Module:
        """The module that ships: by default the network itself (raw head outputs, with the
        post-processing in ``postprocess_note`` run by the application)."""
        return self

    def part_of(self, module: str) -> str:
        """The part owning ``module`` ("other" when none does)."""
        return next((p.name for p in self.parts() if p.owns(module)), "other")


# ---- torchvision ------------------------------------------------------------------------------


def _grid_boxes(height: int, width: int, count: int) -> torch.Tensor:
    """``count`` fixed proposals (xyxy pixels) spread over the image at many sizes and places:
    a deterministic low-discrepancy sequence, the same for every call."""
    index = torch.arange(count, dtype=torch.float64)
    frac = 0.1 + 0.8 * torch.remainder(index * 0.6180339887, 1.0)  # box size, fraction of the image
    cx = torch.remainder(0.5 + index * 0.7548776662, 1.0)
    cy = torch.remainder(0.5 + index * 0.5698402910, 1.0)
    bw, bh = frac * width, frac * height
    x0 = torch.clamp(cx * width - bw / 2, min=0.0).minimum(width - bw)
    y0 = torch.clamp(cy * height - bh / 2, min=0.0).minimum(height - bh)
    return torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1).float()


class _FixedRoIPool(nn.Module):
    """A detector's RoI pooling on ``count`` fixed proposals per image, scaled to the batch's image
    size (the real proposals come from the RPN and NMS, which are data-dependent). On meta or fake
    tensors it only gives the output's shape."""

    def __init__(self, pool: nn.Module, count: int):
        super().__init__()
        self.pool = pool
        self.count = count

    def forward(self, features: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        height, width, batch = int(images.shape[-2]), int(images.shape[-1]), int(images.shape[0])
        if _ops.shape_only(images):
            first = features[self.pool.featmap_names[0]]
            size = tuple(self.pool.output_size)
            return first.new_zeros((batch * self.count, first.shape[1], *size))
        boxes = _grid_boxes(height, width, self.count).to(images.device, images.dtype)
        return self.pool(features, [boxes] * batch, [(height, width)] * batch)


def _box_predictor(predictor: nn.Module, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's FastRCNNPredictor without its rank check (``if x.dim() == 4``, which torch.fx
    cannot branch on); any other predictor is called as it is."""
    if type(predictor).__name__ == "FastRCNNPredictor" and hasattr(predictor, "cls_score"):
        flat = features.flatten(1)
        return predictor.cls_score(flat), predictor.bbox_pred(flat)
    return predictor(features)


class _TorchvisionView(NetworkView):
    def __init__(self, model: nn.Module):
        super().__init__()
        self._transforms = (model.transform,)  # not a child: it is not part of the network

    def _transform(self, images: list[torch.Tensor]) -> torch.Tensor:
        """The detector's own GeneralizedRCNNTransform (resize, normalise, pad to a batch)."""
        transform = self._transforms[0]
        was_training = transform.training
        transform.eval()
        try:
            with torch.no_grad():
                return transform(images)[0].tensors
        finally:
            transform.train(was_training)


class _RPNNetwork(nn.Module):
    """An R-CNN's first stage: image batch -> every feature map, RPN objectness and box deltas per level."""

    def __init__(self, backbone: nn.Module, rpn: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(images).values())
        objectness, deltas = self.rpn.head(features)
        return (*features, *objectness, *deltas)


class RCNNView(_TorchvisionView):
    """Faster / Mask / Keypoint R-CNN: backbone (+FPN) -> RPN head on every level, and the RoI
    heads (box, mask, keypoint) on features pooled at fixed proposals."""

    family = "two-stage (R-CNN)"
    postprocess_note = ("GeneralizedRCNNTransform (resize, normalise), anchors, proposal selection and NMS, "
                        "RoI pooling of the selected proposals, box decoding and per-class NMS")

    def __init__(self, model: nn.Module, proposals: int | None = None, detections: int | None = None):
        """``proposals``: boxes per image the box head runs on (default: the RPN's test-time
        post-NMS count, 1000 for most models); ``detections``: boxes per image the mask and
        keypoint heads run on (default ``detections_per_img``, 100). They weigh the RoI heads'
        FLOPs as the deployed model runs them; tests pass small counts to run fast."""
        super().__init__(model)
        self.backbone = model.backbone
        self.rpn = model.rpn
        self.roi_heads = model.roi_heads
        heads = model.roi_heads
        proposals = proposals or int(model.rpn._post_nms_top_n.get("testing", 1000))
        detections = detections or int(heads.detections_per_img)
        self.box_pool = Boundary(_FixedRoIPool(heads.box_roi_pool, proposals), "RoI pooling of the box head")
        self.mask_pool = (Boundary(_FixedRoIPool(heads.mask_roi_pool, detections), "RoI pooling of the mask head")
                          if getattr(heads, "mask_roi_pool", None) is not None else None)
        self.keypoint_pool = (Boundary(_FixedRoIPool(heads.keypoint_roi_pool, detections),
                                       "RoI pooling of the keypoint head")
                              if getattr(heads, "keypoint_roi_pool", None) is not None else None)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        objectness, deltas = self.rpn.head(list(features.values()))
        heads = self.roi_heads
        class_logits, box_regression = _box_predictor(heads.box_predictor, heads.box_head(self.box_pool(features, images)))
        outputs = [*objectness, *deltas, class_logits, box_regression]
        if self.mask_pool is not None:
            outputs.append(heads.mask_predictor(heads.mask_head(self.mask_pool(features, images))))
        if self.keypoint_pool is not None:
            outputs.append(heads.keypoint_predictor(heads.keypoint_head(self.keypoint_pool(features, images))))
        return tuple(outputs)

    deploy_note = ("the first stage (backbone, FPN, RPN head: feature maps and RPN outputs); after it, in "
                   "PyTorch: anchors, proposal selection and NMS, RoI pooling, the RoI heads, box decoding and NMS")

    def deployable(self) -> nn.Module:
        """The first stage, which runs on the whole image: backbone (+FPN) and RPN head, giving the
        feature maps and the RPN's raw outputs. The RoI heads run on features pooled at the
        proposals that anchor decoding and NMS select; OpenVINO cannot convert the exported RoI
        pooling, so they stay in PyTorch (``model.roi_heads``) after the shipped network."""
        return _RPNNetwork(self.backbone, self.rpn)

    def parts(self) -> list[Part]:
        has_fpn = hasattr(self.backbone, "fpn")
        return [Part("backbone", ("backbone.body",) if has_fpn else ("backbone",)),
                *([Part("FPN", ("backbone.fpn",))] if has_fpn else []),
                Part("RPN head", ("rpn",)),
                Part("box head", ("roi_heads.box_head", "roi_heads.box_predictor")),
                *([Part("mask head", ("roi_heads.mask_head", "roi_heads.mask_predictor"))]
                  if self.mask_pool is not None else []),
                *([Part("keypoint head", ("roi_heads.keypoint_head", "roi_heads.keypoint_predictor"))]
                  if self.keypoint_pool is not None else [])]

    def output_names(self) -> list[str]:
        levels = len(self.rpn.anchor_generator.sizes)
        names = [f"rpn_objectness_{i}" for i in range(levels)] + [f"rpn_box_deltas_{i}" for i in range(levels)]
        names += ["class_logits", "box_regression"]
        if self.mask_pool is not None:
            names.append("mask_logits")
        if self.keypoint_pool is not None:
            names.append("keypoint_logits")
        return names


class DenseHeadView(_TorchvisionView):
    """One-stage torchvision detectors (RetinaNet, FCOS, SSD, SSDlite): backbone -> head on every
    level; the head's dict of outputs comes back in its own key order."""

    family = "one-stage"
    postprocess_note = "GeneralizedRCNNTransform / SSD transform (resize, normalise), anchors, box decoding and NMS"

    def __init__(self, model: nn.Module, keys: tuple[str, ...]):
        super().__init__(model)
        self.backbone = model.backbone
        self.head = model.head
        self._keys = keys

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.head(list(self.backbone(images).values()))
        return tuple(outputs[key] for key in self._keys)

    def parts(self) -> list[Part]:
        if hasattr(self.backbone, "fpn"):
            return [Part("backbone", ("backbone.body",)), Part("FPN", ("backbone.fpn",)), Part("head", ("head",))]
        return [Part("backbone", ("backbone",)), Part("head", ("head",))]

    def output_names(self) -> list[str]:
        return list(self._keys)


# ---- Ultralytics ------------------------------------------------------------------------------


class YOLOView(NetworkView):
    """An Ultralytics detection model: the layer list (backbone, neck) -> the Detect head's raw
    box distributions ``(B, 4 * reg_max, A)`` and class logits ``(B, nc, A)``. The DFL decoding,
    anchors and strides stay in the Detect head; NMS runs after it."""

    family = "YOLO (Ultralytics)"
    input_note = "a (B, 3, H, W) float batch in [0, 1], H and W multiples of the largest stride (32)"
    postprocess_note = ("the Detect head's DFL decoding with anchors and strides (inside the exported model), "
                        "then class-aware NMS (compressor.training.yolo_postprocess)")

    def __init__(self, model: nn.Module):
        super().__init__()
        self._owner = (model,)  # not a child: the view registers only the network's modules
        self.model = model.model
        self._save = tuple(model.save)
        head = model.model[-1]
        self._end2end = getattr(head, "one2one_cv2", None) is not None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, saved = images, []
        for layer in self.model[:-1]:
            if layer.f != -1:
                x = saved[layer.f] if isinstance(layer.f, int) else [x if j == -1 else saved[j] for j in layer.f]
            x = layer(x)
            saved.append(x if layer.i in self._save else None)
        head = self.model[-1]
        feats = [saved[j] if j != -1 else x for j in head.f]
        raw = head.forward_head(feats, **head.one2many)
        outputs = [raw["boxes"], raw["scores"]]
        if self._end2end:
            raw = head.forward_head(feats, **head.one2one)
            outputs += [raw["boxes"], raw["scores"]]
        return tuple(outputs)

    deploy_note = ("the whole model, one output (B, 4 + nc, anchors) with boxes decoded inside it; after it: "
                   "class-aware NMS (compressor.training.yolo_postprocess)")

    def deployable(self) -> nn.Module:
        """The whole Ultralytics model in export mode: one output ``(B, 4 + nc, anchors)``, boxes
        decoded (cx, cy, w, h in input pixels, DFL, anchors and strides inside the graph) and class
        probabilities; NMS runs after it (``compressor.training.yolo_postprocess``)."""
        model = copy.deepcopy(self._owner[0]).eval()
        head = model.model[-1]
        head.export = True
        # anchors from every input's shape: no comparison with a cached shape for the exporter to
        # specialise on (it would fix the batch size at the example's)
        head.dynamic, head.shape = True, None
        return model

    def parts(self) -> list[Part]:
        layers = list(self.model)
        head = layers[-1]
        # the backbone ends at the last layer before the first upsample (SPPF / C2PSA); the neck is the rest
        first_up = next((i for i, m in enumerate(layers) if isinstance(m, nn.Upsample)), len(layers) - 1)
        backbone = tuple(f"model.{i}" for i in range(first_up))
        neck = tuple(f"model.{i}" for i in range(first_up, len(layers) - 1))
        return [Part("backbone", backbone), Part("neck (FPN/PAN)", neck), Part("Detect head", (f"model.{head.i}",))]

    def output_names(self) -> list[str]:
        names = ["box_distribution", "class_logits"]
        return names + ["one2one_box_distribution", "one2one_class_logits"] if self._end2end else names


# ---- which view ---------------------------------------------------------------------------------


def _torchvision_view(model: nn.Module, **options: Any) -> NetworkView | None:
    detection = sys.modules.get("torchvision.models.detection")
    if detection is None:
        return None
    if isinstance(model, detection.generalized_rcnn.GeneralizedRCNN):
        return RCNNView(model, **options)
    if isinstance(model, detection.retinanet.RetinaNet):
        return DenseHeadView(model, ("cls_logits", "bbox_regression"))
    if isinstance(model, detection.fcos.FCOS):
        return DenseHeadView(model, ("cls_logits", "bbox_regression", "bbox_ctrness"))
    if isinstance(model, detection.ssd.SSD):
        return DenseHeadView(model, ("bbox_regression", "cls_logits"))
    return None


def _ultralytics_view(model: nn.Module, **options: Any) -> NetworkView | None:
    tasks = sys.modules.get("ultralytics.nn.tasks")
    if tasks is None or not isinstance(model, tasks.DetectionModel):
        return None
    head = model.model[-1]
    if type(head).__name__ != "Detect" or not hasattr(head, "forward_head"):
        return None  # segmentation / pose / OBB heads: not covered (their extra outputs are not modelled)
    return YOLOView(model)


_VIEWS: tuple[Callable[..., NetworkView | None], ...] = (_torchvision_view, _ultralytics_view)


def network_view(model: nn.Module, **options: Any) -> NetworkView | None:
    """The traceable network of a detector the toolchain knows (None for any other model).

    ``options`` go to the view (``proposals``/``detections`` for the R-CNN family)."""
    if isinstance(model, NetworkView):
        return model
    for view in _VIEWS:
        found = view(model, **options)
        if found is not None:
            return found
    return None


def deployable_module(model: nn.Module) -> nn.Module:
    """What to export for ``model``: a detector's deployable network (see
    :meth:`NetworkView.deployable`), or the model itself."""
    view = network_view(model)
    return view.deployable() if view is not None else model


def part_rows(view: NetworkView, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FLOPs (2 x MACs, per sample) of each part of a detector before and after pruning, from the
    per-layer rows of a prune summary (``name``, ``macs_before``, ``macs_after``)."""
    rows: dict[str, dict[str, Any]] = {part.name: {"part": part.name, "layers": 0, "flops_before": 0.0,
                                                   "flops_after": 0.0} for part in view.parts()}
    for layer in layers:
        row = rows.setdefault(view.part_of(layer["name"]), {"part": view.part_of(layer["name"]), "layers": 0,
                                                            "flops_before": 0.0, "flops_after": 0.0})
        row["layers"] += 1
        row["flops_before"] += 2 * layer["macs_before"]
        row["flops_after"] += 2 * layer["macs_after"]
    return [row for row in rows.values() if row["layers"]]


# ---- user-named boundaries ----------------------------------------------------------------------


@contextlib.contextmanager
def with_boundaries(model: nn.Module, names: Iterable[str]) -> Iterator[nn.Module]:
    """Run the named submodules of ``model`` as :class:`Boundary` leaves while the block runs:
    never traced, never pruned, and the channels they read are protected. The model gets its
    own submodules back afterwards.

    Raises:
        ValueError: a name is not a submodule of the model (the message lists close names).
    """
    names = list(dict.fromkeys(names))
    known = {n for n, _ in model.named_modules() if n}
    for name in names:
        if name not in known:
            close = [n for n in sorted(known) if name.split(".")[-1] in n][:5]
            hint = f"; similar: {close}" if close else f"; top-level submodules: {[n for n, _ in model.named_children()]}"
            raise ValueError(f"boundary {name!r} is not a submodule of {type(model).__name__}{hint}")
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            inner = getattr(parent, attr)
            setattr(parent, attr, Boundary(inner, f"boundary '{name}'"))
            swapped.append((parent, attr, inner))
        yield model
    finally:
        for parent, attr, inner in reversed(swapped):
            setattr(parent, attr, inner)
