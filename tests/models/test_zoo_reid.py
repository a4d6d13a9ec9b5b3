"""ReID heads of "Exploiting prunability for person re-identification": BNNeck train/eval outputs,
frozen neck bias, PCB part features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import models

# Width 16 and 64x32 crops keep these tests fast; the default-size sweep lives in test_zoo.py.
WIDTH = 16
FEATURE_DIM = 32 * WIDTH
NUM_IDS = 11


def _reid(**kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    return models.create_model("reid_resnet50", width=WIDTH, num_ids=NUM_IDS, **kwargs)


def _crops(height: int = 64, width: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, height, width)


def test_bnneck_train_returns_logits_and_global_feature() -> None:
    model = _reid().train()
    logits, global_feature = model(_crops())
    assert logits.shape == (2, NUM_IDS)
    assert global_feature.shape == (2, FEATURE_DIM)
    # The triplet feature is the pre-neck pooled feature: post-ReLU, so non-negative.
    assert (global_feature >= 0).all()


def test_bnneck_eval_returns_the_neck_feature() -> None:
    model = _reid().eval()
    neck = model.bottleneck
    # Non-trivial running statistics, so that applying the neck is visible in the output.
    with torch.no_grad():
        neck.running_mean.uniform_(0.5, 1.5)
        neck.running_var.uniform_(2.0, 4.0)
        neck.weight.uniform_(0.5, 2.0)
    x = _crops()
    with torch.no_grad():
        feature = model(x)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(model.backbone.forward_features(x), 1), 1)
    expected = (pooled - neck.running_mean) / torch.sqrt(neck.running_var + neck.eps) * neck.weight
    assert isinstance(feature, torch.Tensor)
    assert feature.shape == (2, FEATURE_DIM)
    torch.testing.assert_close(feature, expected)
    assert not torch.allclose(feature, pooled, atol=0.1)


def test_bnneck_bias_is_frozen_and_classifier_has_no_bias() -> None:
    model = _reid().train()
    neck = model.bottleneck
    assert isinstance(neck, nn.BatchNorm1d)
    assert neck.bias.requires_grad is False
    assert neck.weight.requires_grad is True
    assert model.classifier.bias is None
    logits, _ = model(_crops())
    logits.sum().backward()
    assert neck.bias.grad is None
    assert neck.weight.grad is not None
    assert torch.count_nonzero(neck.bias) == 0


def test_last_stride_one_keeps_sixteenth_resolution() -> None:
    with torch.no_grad():
        assert _reid().eval().backbone.forward_features(_crops(64, 32)).shape[-2:] == (4, 2)
        assert _reid(last_stride=2).eval().backbone.forward_features(_crops(64, 32)).shape[-2:] == (2, 1)


def test_without_neck_eval_returns_the_global_feature() -> None:
    model = _reid(neck=False).eval()
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    x = _crops()
    with torch.no_grad():
        feature = model(x)
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(model.backbone.forward_features(x), 1), 1)
    torch.testing.assert_close(feature, pooled)


@pytest.mark.parametrize("parts", [1, 3, 6])
def test_pcb_eval_concatenates_part_features(parts: int) -> None:
    model = _reid(pcb_parts=parts).eval()
    x = _crops(96, 32)
    with torch.no_grad():
        features = model(x)
        traced = torch.fx.symbolic_trace(model)(x)
    assert isinstance(features, torch.Tensor)
    assert features.shape == (2, 256 * parts)
    assert torch.equal(traced, features)
    assert (features >= 0).all()  # each part ends in ReLU


def test_pcb_train_returns_one_classifier_per_part() -> None:
    parts = 6
    model = _reid(pcb_parts=parts).train()
    part_logits, part_features = model(_crops(96, 32))
    assert isinstance(part_logits, list) and len(part_logits) == parts
    assert all(logits.shape == (2, NUM_IDS) for logits in part_logits)
    assert part_features.shape == (2, 256 * parts)
    assert len(model.part_classifiers) == len(model.part_reducers) == parts
    # Each stripe gets its own reducer: parameters are not shared between parts.
    assert len({id(reducer[0].weight) for reducer in model.part_reducers}) == parts


def test_pcb_parts_see_their_own_stripe() -> None:
    # Changing only the bottom rows of the feature map must leave the top part's feature unchanged.
    model = _reid(pcb_parts=2).eval()
    feature_map = torch.rand(1, FEATURE_DIM, 8, 4)
    changed = feature_map.clone()
    changed[:, :, 4:, :] += 1.0
    with torch.no_grad():
        before = model._forward_pcb(feature_map)
        after = model._forward_pcb(changed)
    torch.testing.assert_close(before[:, :256], after[:, :256])
    assert not torch.allclose(before[:, 256:], after[:, 256:])
