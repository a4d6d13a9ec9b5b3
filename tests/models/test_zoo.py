"""Sweep over every registered zoo model: builds, output shapes, torch.fx traceability, layers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import models
from models._mobilenetv2 import _make_divisible

# Output shape (without the batch dimension) of each zoo model built with defaults, eval mode.
EXPECTED_EVAL_OUTPUT: dict[str, tuple[int, ...]] = {
    "resnet20": (10,),
    "resnet56": (10,),
    "resnet110": (10,),
    "vgg16_bn_cifar": (10,),
    "mobilenetv2": (10,),
    "lenet5": (10,),
    "resnet50": (1000,),
    "reid_resnet50": (2048,),  # BNNeck feature
}

EXPECTED_INPUT_SIZE: dict[str, tuple[int, int, int]] = {
    "resnet20": (3, 32, 32),
    "resnet56": (3, 32, 32),
    "resnet110": (3, 32, 32),
    "vgg16_bn_cifar": (3, 32, 32),
    "mobilenetv2": (3, 32, 32),
    "lenet5": (1, 32, 32),
    "resnet50": (3, 224, 224),
    "reid_resnet50": (3, 256, 128),
}

# Layers allowed to own parameters: the pruning engine slices only these.
STANDARD_PARAM_LAYERS = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear)

# Non-default constructions: (name, kwargs, input (C, H, W), expected eval output shape without batch).
VARIANTS: list[tuple[str, dict[str, Any], tuple[int, int, int], tuple[int, ...]]] = [
    ("resnet20", {"width": 5, "num_classes": 100, "in_chans": 1}, (1, 32, 32), (100,)),
    ("resnet56", {"width": 8}, (3, 32, 32), (10,)),
    ("vgg16_bn_cifar", {"width_mult": 0.3, "num_classes": 100}, (3, 32, 32), (100,)),
    ("mobilenetv2", {"width_mult": 0.5, "num_classes": 7}, (3, 32, 32), (7,)),
    ("mobilenetv2", {"cifar_stem": False, "num_classes": 1000}, (3, 64, 64), (1000,)),
    ("lenet5", {"num_classes": 26, "in_chans": 3}, (3, 32, 32), (26,)),
    ("resnet50", {"width": 12, "num_classes": 5, "last_stride": 1, "in_chans": 4}, (4, 64, 64), (5,)),
    ("reid_resnet50", {"width": 16, "num_ids": 20}, (3, 64, 32), (512,)),
    ("reid_resnet50", {"width": 16, "pcb_parts": 3}, (3, 96, 32), (256 * 3,)),
    ("reid_resnet50", {"width": 16, "neck": False}, (3, 64, 32), (512,)),
]


def _eval_model(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return models.create_model(name, **kwargs).eval()


def test_every_registered_model_has_expectations() -> None:
    # A new registration must come with its expected shapes, or the sweep below would skip it.
    assert sorted(EXPECTED_EVAL_OUTPUT) == models.list_models()
    assert sorted(EXPECTED_INPUT_SIZE) == models.list_models()


@pytest.mark.parametrize("name", models.list_models())
def test_default_input_size(name: str) -> None:
    assert models.default_input_size(name) == EXPECTED_INPUT_SIZE[name]


@pytest.mark.parametrize("name", models.list_models())
def test_builds_runs_and_traces_with_defaults(name: str) -> None:
    model = _eval_model(name)
    x = torch.randn(2, *models.default_input_size(name))
    with torch.no_grad():
        eager = model(x)
        traced = torch.fx.symbolic_trace(model)
        traced_out = traced(x)
    assert isinstance(eager, torch.Tensor)
    assert eager.shape == (2, *EXPECTED_EVAL_OUTPUT[name])
    assert torch.isfinite(eager).all()
    assert torch.equal(traced_out, eager)
    # The two samples differ, so the outputs must too (catches a forward that ignores its input).
    assert not torch.equal(eager[0], eager[1])


@pytest.mark.parametrize("name", models.list_models())
def test_parameters_live_in_standard_layers(name: str) -> None:
    model = models.create_model(name)
    owners = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    assert owners, f"{name} has no parameters"
    odd = sorted({type(m).__name__ for m in owners if not isinstance(m, STANDARD_PARAM_LAYERS)})
    assert odd == [], f"{name} keeps parameters outside standard layers: {odd}"


@pytest.mark.parametrize("name", models.list_models())
def test_traced_graph_calls_every_conv_as_a_module(name: str) -> None:
    # The pruning engine maps fx call_module nodes back to nn.Conv2d modules to slice them.
    model = models.create_model(name).eval()
    graph = torch.fx.symbolic_trace(model).graph
    called = {node.target for node in graph.nodes if node.op == "call_module"}
    convs = {qualname for qualname, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert convs and convs <= called


@pytest.mark.parametrize(
    ("name", "kwargs", "input_size", "expected"),
    VARIANTS,
    ids=[f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw, _, _ in VARIANTS],
)
def test_variants_run_and_trace(
    name: str, kwargs: dict[str, Any], input_size: tuple[int, int, int], expected: tuple[int, ...]
) -> None:
    # Other widths exercise the "no hard-coded channel counts in forward" contract.
    model = _eval_model(name, **kwargs)
    x = torch.randn(2, *input_size)
    with torch.no_grad():
        eager = model(x)
        traced_out = torch.fx.symbolic_trace(model)(x)
    assert eager.shape == (2, *expected)
    assert torch.equal(traced_out, eager)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet110"])
def test_cifar_resnet_stage_layout(name: str) -> None:
    depth = int(name.removeprefix("resnet"))
    model = models.create_model(name, width=4)
    stages = [model.layer1, model.layer2, model.layer3]
    assert [len(stage) for stage in stages] == [(depth - 2) // 6] * 3
    assert [stage[-1].conv2.out_channels for stage in stages] == [4, 8, 16]
    assert [stage[0].conv1.stride for stage in stages] == [(1, 1), (2, 2), (2, 2)]
    # Projection shortcuts, as in "ThinResNet: A New Baseline for Structured Convolutional Networks
    # Pruning": exactly the two shape-changing blocks have a 1x1 conv + BN.
    projections = [m.downsample for m in model.modules() if getattr(m, "downsample", None) is not None]
    assert len(projections) == 2
    for projection in projections:
        conv, bn = projection
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
        assert isinstance(bn, nn.BatchNorm2d)


def test_vgg_keeps_a_1x1_map_before_the_classifier() -> None:
    model = _eval_model("vgg16_bn_cifar")
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 512, 1, 1)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 13
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 10)]


@pytest.mark.parametrize(("cifar_stem", "final_side"), [(True, 4), (False, 1)])
def test_mobilenetv2_stem_strides(cifar_stem: bool, final_side: int) -> None:
    model = _eval_model("mobilenetv2", cifar_stem=cifar_stem)
    with torch.no_grad():
        features = model.features(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 1280, final_side, final_side)


def test_mobilenetv2_residuals_only_where_shapes_match() -> None:
    model = models.create_model("mobilenetv2")
    blocks = [m for m in model.modules() if isinstance(m, models.InvertedResidual)]
    assert len(blocks) == 17
    assert sum(block.use_residual for block in blocks) == 10  # Table 2: repeats minus first of each stage
    for block in blocks:
        depthwise = next(m for m in block.conv.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels
        assert all(not isinstance(m, (nn.ReLU, nn.ReLU6)) for m in list(block.conv)[-2:])  # linear bottleneck


def test_lenet5_layout() -> None:
    model = models.create_model("lenet5")
    assert model.fc1.in_features == 16 * 5 * 5
    assert sum(p.numel() for p in model.parameters()) == 61_706


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("resnet20", {"width": 0}),
        ("resnet56", {"num_classes": 0}),
        ("resnet50", {"last_stride": 3}),
        ("resnet50", {"width": 0}),
        ("vgg16_bn_cifar", {"width_mult": 0.0}),
        ("mobilenetv2", {"width_mult": -1.0}),
        ("lenet5", {"in_chans": 0}),
        ("reid_resnet50", {"pcb_parts": -1}),
        ("reid_resnet50", {"num_ids": 0}),
    ],
)
def test_invalid_arguments_raise_value_error(name: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        models.create_model(name, **kwargs)


def test_cifar_resnet_rejects_depth_not_6n_plus_2() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        models.CifarResNet(21)


def test_unknown_kwarg_is_rejected() -> None:
    with pytest.raises(TypeError):
        models.create_model("resnet20", widht=8)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1.0, max_value=5000.0, allow_nan=False))
def test_make_divisible_rounds_to_8_without_losing_more_than_10_percent(value: float) -> None:
    rounded = _make_divisible(value)
    assert rounded % 8 == 0
    assert rounded >= 8
    assert rounded >= 0.9 * value
    assert rounded <= max(8, value + 8)


@settings(max_examples=8, deadline=None)
@given(width=st.integers(min_value=1, max_value=24), depth=st.sampled_from([8, 14, 20]))
def test_cifar_resnet_any_width_traces(width: int, depth: int) -> None:
    model = models.CifarResNet(depth, width=width).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        eager = model(x)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), eager)
    assert eager.shape == (1, 10)
    assert model.fc.in_features == 4 * width
