"""Pruning a traceable submodule of a model that cannot be traced whole (a detector's backbone)."""
import copy

import pytest
import torch

import compressor as C
from compressor.pruning._api import capture_inputs
from models import create_model


@pytest.fixture(scope="module")
def detector():
    return create_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn").eval()


def test_whole_detector_is_refused_with_a_pointer_to_submodules(detector):
    with pytest.raises(C.TraceError, match="FasterRCNN.*submodule='backbone'"):
        C.build_dependency_graph(detector, ([torch.rand(3, 320, 320)],))


def test_backbone_pruned_heads_untouched(detector):
    images = ([torch.rand(3, 320, 320), torch.rand(3, 320, 320)],)
    config = C.PruneConfig(criterion="random", ratio=0.4, submodule="backbone", seed=2)
    result = C.pruning.prune_model(detector, images, config)
    assert result.removed.any()
    assert sum(p.numel() for p in result.model.parameters()) < sum(p.numel() for p in detector.parameters())
    # heads are the same tensors' values, FPN outputs keep their width
    assert torch.equal(result.model.roi_heads.box_predictor.cls_score.weight, detector.roi_heads.box_predictor.cls_score.weight)
    (features,) = capture_inputs(detector, detector.backbone, images)
    oracle = copy.deepcopy(detector.backbone)
    C.pruning.zero_channels_(oracle, result.graph, result.removed)
    with torch.no_grad():
        got, want = result.model.backbone(features), oracle(features)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4 * want[key].abs().max().item())
    with torch.no_grad():
        detections = result.model(images[0])
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "labels", "scores"}


def test_unknown_submodule_lists_children(detector):
    with pytest.raises(ValueError, match="'neck' does not exist.*backbone"):
        C.pruning.prune_model(detector, ([torch.rand(3, 320, 320)],), C.PruneConfig(ratio=0.3, submodule="neck"))
