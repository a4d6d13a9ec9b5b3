"""Whole detectors: backbone, neck and heads pruned together, every raw head output protected.

The parity is the masked oracle on the network's raw head outputs (before anchors, decoding
and NMS, which are discontinuous), in eval mode at a fixed input size. Each pruned detector
then runs whole: eval (post-processing included) and one train-mode step with its own loss.
"""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from torch import nn

import compressor as C
from compressor.app.cli import main
from compressor.pruning import PruneConfig, prune_model
from compressor.testing import check_pruned, prune_detector_with_oracle, randomize_
from models import create_model

os.environ.setdefault("YOLO_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


CONFIG = PruneConfig(target_flops=0.5, criterion="l2", round_to=8)
# (name, network input size, view options): the R-CNN heads run on a few fixed proposals here
TORCHVISION = [
    ("fasterrcnn_mobilenet_v3_large_fpn", 256, {"proposals": 16, "detections": 4}),
    ("ssdlite320_mobilenet_v3_large", 320, {}),
    pytest.param("fasterrcnn_resnet50_fpn", 192, {"proposals": 8, "detections": 4}, marks=pytest.mark.slow),
    pytest.param("retinanet_resnet50_fpn", 192, {}, marks=pytest.mark.slow),
    pytest.param("fcos_resnet50_fpn", 192, {}, marks=pytest.mark.slow),
    pytest.param("ssd300_vgg16", 300, {}, marks=pytest.mark.slow),
    pytest.param("maskrcnn_resnet50_fpn", 192, {"proposals": 8, "detections": 4}, marks=pytest.mark.slow),
    pytest.param("keypointrcnn_resnet50_fpn", 192, {"proposals": 8, "detections": 2}, marks=pytest.mark.slow),
]


def _torchvision_detector(name: str) -> nn.Module:
    return randomize_(create_model(f"torchvision:{name}")).eval()


def _targets(model: nn.Module, count: int) -> list[dict[str, torch.Tensor]]:
    targets = []
    classes = model.roi_heads.box_predictor.cls_score.out_features if hasattr(model, "roi_heads") else 91
    for i in range(count):
        target = {"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0], [40.0 + i, 30.0, 150.0, 100.0]]),
                  "labels": torch.tensor([1, min(2, classes - 1)])}
        if getattr(model.roi_heads, "mask_roi_pool", None) is not None if hasattr(model, "roi_heads") else False:
            masks = torch.zeros(2, 160, 160, dtype=torch.uint8)
            masks[0, 20:120, 10:90] = 1
            masks[1, 30:100, 40:150] = 1
            target["masks"] = masks
        if hasattr(model, "roi_heads") and getattr(model.roi_heads, "keypoint_roi_pool", None) is not None:
            target["keypoints"] = torch.tensor([[[50.0, 60.0, 1.0]] * 17, [[90.0, 60.0, 1.0]] * 17])
        targets.append(target)
    return targets


@pytest.mark.parametrize("name, size, options", TORCHVISION)
def test_torchvision_detector_pruned_whole_with_parity(name, size, options):
    detector = _torchvision_detector(name)
    pruned, pruned_detector, inputs = prune_detector_with_oracle(detector, torch.rand(1, 3, size, size), CONFIG,
                                                                 **options)
    check = check_pruned(pruned, inputs)  # parity on every raw output; shapes (classes, anchors per level) equal
    assert check.flops_after < 0.75 * check.flops_before
    view = pruned.pruned
    # every part of the network lost channels: backbone, FPN/extra layers and the heads
    changed = {view.part_of(name) for name, module in view.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear)) and _narrower(module, pruned.original.get_submodule(name))}
    assert "backbone" in changed
    heads = {part.name for part in view.parts()} - {"backbone", "FPN"}
    assert changed & heads, f"no head was pruned: {sorted(changed)}"
    if any(part.name == "FPN" for part in view.parts()):
        assert "FPN" in changed
    # the whole detector runs: eval with its own post-processing, and one train-mode step with its losses
    images = [torch.rand(3, 160, 160), torch.rand(3, 160, 160)]
    with torch.no_grad():
        detections = pruned_detector.eval()(images)
    assert len(detections) == 2 and {"boxes", "labels", "scores"} <= set(detections[0])
    pruned_detector.train()
    losses = pruned_detector(images, _targets(pruned_detector, 2))
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in pruned_detector.parameters())


def _narrower(after: nn.Module, before: nn.Module) -> bool:
    return after.weight.shape != before.weight.shape


@pytest.mark.parametrize("config_name", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo_pruned_with_parity_and_head_kept(config_name):
    detector = randomize_(create_model(f"ultralytics:{config_name}", nc=10)).eval()
    head = detector.model[-1]
    pruned, pruned_detector, inputs = prune_detector_with_oracle(detector, torch.rand(2, 3, 160, 160), CONFIG)
    check = check_pruned(pruned, inputs)
    assert check.flops_after < 0.6 * check.flops_before
    new_head = pruned_detector.model[-1]
    assert (new_head.reg_max, new_head.nc, new_head.nl) == (head.reg_max, head.nc, head.nl) == (16, 10, 3)
    assert new_head.no == head.no and torch.equal(new_head.stride, head.stride)
    # neck and head were pruned too, not only the backbone
    changed = {pruned.pruned.part_of(n) for n, m in pruned.pruned.named_modules()
               if isinstance(m, nn.Conv2d) and _narrower(m, pruned.original.get_submodule(n))}
    assert {"backbone", "neck (FPN/PAN)", "Detect head"} <= changed
    # the deployed forward (DFL decoding, anchors) is unchanged in shape: (B, 4 + nc, anchors)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        want, got = detector.eval()(x)[0], pruned_detector.eval()(x)[0]
    assert got.shape == want.shape == (1, 14, 20 * 20 + 10 * 10 + 5 * 5)
    # train mode: forward and backward through every raw output
    pruned_detector.train()
    raw = pruned_detector(torch.rand(2, 3, 160, 160))
    loss = raw["boxes"].square().mean() + raw["scores"].square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in pruned_detector.parameters() if p.grad is not None)


def test_prune_model_takes_the_detector_itself_and_leaves_it_untouched():
    detector = create_model("torchvision:ssdlite320_mobilenet_v3_large").eval()
    state = {k: v.clone() for k, v in detector.state_dict().items()}
    result = prune_model(detector, ([torch.rand(3, 320, 320)],), CONFIG)
    assert type(result.model) is type(detector) and result.model is not detector
    assert all(torch.equal(state[k], v) for k, v in detector.state_dict().items())
    assert result.report.flops_ratio < 0.55
    assert result.model.compressor_metadata["network"]["outputs"] == ["bbox_regression", "cls_logits"]


# ---- a user's own detector: the boundary option -------------------------------------------------


class _TopK(nn.Module):
    """Data-dependent post-processing torch.fx cannot trace: keep the scores above a threshold."""

    def forward(self, scores: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = scores.flatten(2).amax((0, 1)) > 0  # per position; a Python branch on values follows
        if bool(keep.any()):
            return scores.flatten(2)[:, :, keep], boxes.flatten(2)[:, :, keep]
        return scores.flatten(2), boxes.flatten(2)


class TinyDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.cls_head = nn.Conv2d(32, 3, 1)
        self.box_head = nn.Conv2d(32, 4, 1)
        self.postprocess = _TopK()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.neck(self.backbone(x))
        return self.postprocess(self.cls_head(features), self.box_head(features))


def test_untraceable_custom_detector_gets_a_named_error_suggesting_the_boundary():
    with pytest.raises(C.TraceError, match=r"TinyDetector.*boundary"):
        prune_model(TinyDetector().eval(), torch.rand(1, 3, 32, 32), CONFIG)


def test_boundary_prunes_the_network_in_front_of_the_post_processing():
    model = randomize_(TinyDetector()).eval()
    x = torch.rand(2, 3, 32, 32)
    config = PruneConfig(ratio=0.5, criterion="l2", round_to=1, boundary=("postprocess",))
    result = prune_model(model, x, config)
    assert isinstance(result.model.postprocess, _TopK)  # the model gets its own module back
    assert isinstance(model.postprocess, _TopK)
    assert result.model.backbone[0].out_channels < 16 and result.model.neck[0].out_channels < 32
    assert (result.model.cls_head.out_channels, result.model.box_head.out_channels) == (3, 4)  # read by the boundary
    oracle = copy.deepcopy(model)
    with C.graph.with_boundaries(oracle, ["postprocess"]):
        C.pruning.zero_channels_(oracle, result.graph, result.removed)
    with torch.no_grad():
        got, want = result.model(x), oracle(x)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_boundary_names_a_missing_module():
    with pytest.raises(ValueError, match=r"boundary 'post' is not a submodule.*postprocess"):
        prune_model(TinyDetector().eval(), torch.rand(1, 3, 32, 32),
                    PruneConfig(ratio=0.5, boundary=("post",)))


def test_boundary_and_submodule_are_exclusive():
    with pytest.raises(ValueError, match="boundary or submodule"):
        PruneConfig(ratio=0.5, boundary=("postprocess",), submodule="backbone")


# ---- the command line ------------------------------------------------------------------------------


def test_cli_prunes_a_whole_torchvision_detector_and_shows_each_part(tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["prune", "--model", "torchvision:fasterrcnn_mobilenet_v3_large_fpn", "--target-flops", "0.5",
                       "--output", str(out), "--round-to", "8", "--changed-only", "--no-speed-check"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    parts = {row["part"]: row for row in summary["network"]["parts"]}
    assert set(parts) == {"backbone", "FPN", "RPN head", "box head"}
    for row in parts.values():
        assert row["flops_after"] < row["flops_before"], row
    assert 0.45 < summary["flops_ratio"] < 0.55
    assert summary["network"]["input_shape"] == [1, 3, 800, 800]  # what the detector's transform makes of 320x320
    assert "box head" in capsys.readouterr().out


def test_cli_boundary_flag_and_ultralytics_names(tmp_path, capsys):
    code = main(["prune", "--model", "ultralytics:yolov8n.pt", "--target-flops", "0.5",
                       "--output", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "yolov8n.pt" in err and "YAML" in err and "--allow-pickle" in err
    code = main(["prune", "--model", "ultralytics:yolov8n.yaml", "--model-arg", "nc=3", "--target-flops", "0.5",
                       "--input-size", "3,160,160", "--output", str(tmp_path / "y"), "--quiet", "--no-speed-check"])
    assert code == 0
    summary = json.loads((tmp_path / "y" / "summary.json").read_text())
    assert summary["network"]["outputs"] == ["box_distribution", "class_logits"]
    reloaded = C.load_model(tmp_path / "y")
    assert reloaded.model[-1].nc == 3


# ---- export: the deployable network on ONNX and OpenVINO, parity on every output -------------------

EXPORTED = [
    ("torchvision:ssdlite320_mobilenet_v3_large", 320, 2),
    ("torchvision:fasterrcnn_mobilenet_v3_large_fpn", 256, 3 + 3 + 3),  # feature maps, objectness, deltas x 3 levels
    ("ultralytics:yolov8n.yaml", 160, 1),
    pytest.param("ultralytics:yolo11n.yaml", 160, 1, marks=pytest.mark.slow),
    pytest.param("torchvision:retinanet_resnet50_fpn", 160, 2, marks=pytest.mark.slow),
    pytest.param("torchvision:fcos_resnet50_fpn", 160, 3, marks=pytest.mark.slow),
    pytest.param("torchvision:ssd300_vgg16", 300, 2, marks=pytest.mark.slow),
    pytest.param("torchvision:fasterrcnn_resnet50_fpn", 160, 5 + 5 + 5, marks=pytest.mark.slow),
    pytest.param("torchvision:maskrcnn_resnet50_fpn", 160, 5 + 5 + 5, marks=pytest.mark.slow),
    pytest.param("torchvision:keypointrcnn_resnet50_fpn", 160, 5 + 5 + 5, marks=pytest.mark.slow),
]


@pytest.mark.openvino
@pytest.mark.parametrize("name, side, outputs", EXPORTED)
def test_pruned_detector_exports_to_onnx_and_openvino_with_parity(name, side, outputs, tmp_path):
    from compressor.app._bundle import export_bundle
    from compressor.graph import deployable_module
    from runtimes import BundleConfig, load_bundle

    detector = randomize_(create_model(name, **({"nc": 10} if name.startswith("ultralytics") else {}))).eval()
    pruned = prune_model(detector, torch.rand(1, 3, side, side), CONFIG).model
    exported = export_bundle(deployable_module(pruned), tmp_path / "bundle", (3, side, side),
                             BundleConfig(targets=("onnx", "openvino"), batch_sizes=(1, 2), threads=2))
    bundle = load_bundle(tmp_path / "bundle")  # checks the manifest against the ONNX graph
    assert len(bundle.manifest["outputs"]) == outputs
    rows = exported.bundle.parity
    assert {r["runtime"] for r in rows} == {"onnxruntime", "openvino"}
    assert len(rows) == 2 * 2 * outputs and all(r["passed"] for r in rows)  # runtimes x batch sizes x outputs


USER_DETECTOR = '''
import torch
from torch import nn


class Det(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Conv2d(16, 6, 1)
        self.postprocess = Keep()

    def forward(self, x):
        return self.postprocess(self.head(self.backbone(x)))


class Keep(nn.Module):
    def forward(self, raw):
        scores = raw[:, 4:].sigmoid().flatten(2).amax(1)
        if bool((scores > 2).any()):  # data-dependent branch: not traceable
            return raw[:, :4]
        return raw
'''


def test_cli_untraceable_user_detector_exit_2_names_the_boundary_then_prunes_with_it(tmp_path, monkeypatch, capsys):
    package = tmp_path / "src" / "det_userpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_DETECTOR)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    args = ["prune", "--model", "det_userpkg.nets:Det", "--input-size", "3,32,32", "--ratio", "0.5", "--round-to", "1",
            "--no-speed-check", "--quiet"]
    assert main([*args, "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "layer 'postprocess'" in err and "--boundary postprocess" in err
    assert main([*args, "--boundary", "postprocess", "--output", str(tmp_path / "b")]) == 0
    pruned = C.load_model(tmp_path / "b")
    assert pruned.backbone[0].out_channels == 8 and pruned.head.out_channels == 6
    assert pruned(torch.rand(1, 3, 32, 32)).shape == (1, 6, 32, 32)
