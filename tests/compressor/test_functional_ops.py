"""Functional forms of the layers the graph handles (``F.batch_norm``, ``F.group_norm``,
``F.layer_norm``, ``F.conv2d``, ``F.linear``) called with a module's own parameters and buffers,
timm's norm-act models built on them, and the unreachable-target message that names what blocks.

Each hand-built model is pruned with the masked-oracle parity check; timm models (optional) are
built offline with ``pretrained=False`` at a small input size.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor as C
from compressor.testing import check_pruned, prune_with_oracle, randomize_

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _vector(c: int, seed: int, low: float = 0.5, high: float = 1.5) -> torch.Tensor:
    return torch.empty(c).uniform_(low, high, generator=torch.Generator().manual_seed(seed))


class FunctionalBatchNorm(nn.Module):
    """A BatchNorm written out: ``F.batch_norm`` on its own parameters and buffers."""

    def __init__(self, c: int, seed: int = 0):
        super().__init__()
        self.weight = nn.Parameter(_vector(c, seed))
        self.bias = nn.Parameter(_vector(c, seed + 1, -0.2, 0.2))
        self.register_buffer("running_mean", _vector(c, seed + 2, -0.2, 0.2))
        self.register_buffer("running_var", _vector(c, seed + 3))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, 1e-5)


class FunctionalConv(nn.Module):
    def __init__(self, cin: int, cout: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3, generator=gen) / (3 * cin ** 0.5))
        self.bias = nn.Parameter(torch.randn(cout, generator=gen) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1)


class FunctionalGroupNorm(nn.Module):
    """One channel per group, ``num_groups`` read from the input so that it shrinks with it."""

    def __init__(self, c: int, seed: int = 0):
        super().__init__()
        self.weight = nn.Parameter(_vector(c, seed))
        self.bias = nn.Parameter(_vector(c, seed + 1, -0.2, 0.2))

    def forward(self, x):
        return F.group_norm(x, x.shape[1], self.weight, self.bias)


class FunctionalLinear(nn.Module):
    def __init__(self, cin: int, cout: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(cout, cin, generator=gen) / cin ** 0.5)
        self.bias = nn.Parameter(torch.randn(cout, generator=gen) * 0.1)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = FunctionalBatchNorm(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = FunctionalBatchNorm(16, seed=10)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class FunctionalNet(nn.Module):
    """Every layer but the classifier in functional form, with module-owned weights."""

    def __init__(self):
        super().__init__()
        self.conv1 = FunctionalConv(3, 16, seed=1)
        self.gn = FunctionalGroupNorm(16, seed=2)
        self.conv2 = FunctionalConv(16, 24, seed=3)
        self.bn = FunctionalBatchNorm(24, seed=4)
        self.fc1 = FunctionalLinear(24, 32, seed=5)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        x = F.relu(self.gn(self.conv1(x)))
        x = F.relu(self.bn(self.conv2(x)))
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


def _atoms(g: C.DependencyGraph, module: str, kind: str) -> np.ndarray:
    found = [m for m, member in enumerate(g.members) if member.module == module and member.kind == kind]
    assert len(found) == 1, f"expected one {kind} member of {module!r}, found {len(found)}"
    return g.member_atoms(found[0])


def _prune_with_parity(model: nn.Module, inputs, **config):
    model.eval()
    p = prune_with_oracle(model, inputs, C.PruneConfig(criterion="random", seed=3, round_to=1, **config))
    check_pruned(p, inputs)
    return p


def test_functional_batch_norm_is_coupled_and_sliced_like_the_module():
    model = BatchNormNet().eval()
    g = C.build_dependency_graph(model, X)
    conv = _atoms(g, "conv1", "conv_out")
    for name in ("weight", "bias", "running_mean", "running_var"):
        found = [m for m, member in enumerate(g.members) if member.module == "bn1" and member.tensors == ((name, 0),)]
        assert len(found) == 1, name
        np.testing.assert_array_equal(g.member_atoms(found[0]), conv)
    assert not g.blocked[conv].any()
    p = _prune_with_parity(model, X, ratio=0.5)
    bn1 = dict(p.pruned.named_modules())["bn1"]
    kept = int(p.pruned.conv1.weight.shape[0])
    assert kept < 16
    assert all(t.shape == (kept,) for t in (bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var))


def test_functional_conv_group_norm_linear_prune_with_parity():
    model = FunctionalNet().eval()
    g = C.build_dependency_graph(model, X)
    np.testing.assert_array_equal(_atoms(g, "conv1", "conv_out"), _atoms(g, "conv2", "conv_in"))
    np.testing.assert_array_equal(_atoms(g, "conv2", "conv_out"), _atoms(g, "fc1", "linear_in"))
    np.testing.assert_array_equal(_atoms(g, "fc1", "linear_out"), _atoms(g, "fc2", "linear_in"))
    assert not g.blocked[_atoms(g, "fc1", "linear_out")].any()
    # the functional convs and Linear are costed as layers, not as an unmodelled rest
    assert {layer.module for layer in g.layers} == {"conv1", "conv2", "fc1", "fc2"}
    assert g.other_macs < 0.01 * g.macs
    p = _prune_with_parity(model, X, ratio=0.5)
    pruned = p.pruned
    assert pruned.conv1.weight.shape[0] == pruned.gn.weight.shape[0] == pruned.conv2.weight.shape[1] < 16
    assert pruned.fc1.weight.shape[0] == pruned.fc1.bias.shape[0] == pruned.fc2.in_features < 32


class LayerNormNet(nn.Module):
    """ConvNeXt-style channels-last LayerNorm in functional form."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.conv(x).permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.norm.normalized_shape, self.norm.weight, self.norm.bias, self.norm.eps)
        return self.head(x.mean((1, 2)))


def test_functional_layer_norm_couples_its_owner_parameters():
    model = randomize_(LayerNormNet()).eval()
    g = C.build_dependency_graph(model, X)
    conv = _atoms(g, "conv", "conv_out")
    weight = [m for m, member in enumerate(g.members) if member.module == "norm" and member.tensors == (("weight", 0),)]
    np.testing.assert_array_equal(g.member_atoms(weight[0]), conv)
    assert not g.blocked[conv].any() and g.renormalized[conv].all()
    result = C.prune(model, X, "random", seed=0, round_to=1, ratio=0.5)
    kept = result.model.conv.out_channels
    assert kept < 16 and result.model.norm.weight.shape == (kept,) and result.model.norm.normalized_shape == (kept,)
    assert result.model(X).shape == (2, 5)
    # without renormalisation the same channels are kept, and the reason names the LayerNorm
    kept_all = C.build_dependency_graph(model, X, allow_renormalization=False)
    assert kept_all.blocked[_atoms(kept_all, "conv", "conv_out")].all()


class ComputedScaleNet(nn.Module):
    """F.batch_norm with a scale made in forward: nothing to slice, so its channels are blocked."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = FunctionalBatchNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.conv(x)
        ones = torch.ones(y.shape[1], device=y.device)
        y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, ones, self.bn.bias, False, 0.0, 1e-5)
        return self.head(y.mean((2, 3)))


def test_functional_norm_with_a_computed_tensor_is_blocked_with_the_reason():
    g = C.build_dependency_graph(ComputedScaleNet().eval(), X)
    conv = _atoms(g, "conv", "conv_out")
    assert g.blocked[conv].all()
    assert any("batch_norm with a weight that is not a module's parameter" in g.block_reason[int(a)] for a in conv)


class CumsumStem(nn.Module):
    """An op the graph does not know: a cumulative sum over channels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)

    def forward(self, x):
        return torch.cumsum(self.conv(x), 1)


class CumsumNet(nn.Module):
    """Most FLOPs sit in the stem, whose channels the cumulative sum blocks."""

    def __init__(self):
        super().__init__()
        self.stem = CumsumStem()
        self.conv = nn.Conv2d(32, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(F.relu(self.conv(self.stem(x))).mean((2, 3)))


def test_unreachable_target_names_the_blocking_ops_and_layers():
    with pytest.raises(C.UnreachableTargetError) as raised:
        C.prune(CumsumNet().eval(), X, target_flops=0.5, round_to=1)
    message = str(raised.value)
    assert "\n" not in message
    assert "blocked: 32 channels by unsupported op (cumsum) at stem; 5 channels by model output (protected)" in message


# ---- timm ----------------------------------------------------------------------------------------

TIMM_MODELS = ("efficientnet_b0", "mobilenetv3_large_100")
TIMM_INPUT = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_norm_act_models_reach_half_the_flops_with_parity(name: str):
    timm = pytest.importorskip("timm", reason="timm is not installed")
    model = randomize_(timm.create_model(name, pretrained=False, num_classes=10)).eval()
    p = prune_with_oracle(model, TIMM_INPUT, C.PruneConfig(target_flops=0.5, seed=0))
    check = check_pruned(p, TIMM_INPUT, flops=False)
    assert check.params_after < check.params_before
    base = p.graph.cost()[0]
    reached = p.graph.cost(p.graph.kept_counts(p.removed))[0] / base
    assert abs(reached - 0.5) <= 0.02, reached
    # the norm-act layers were understood: nothing but the outputs is blocked
    assert set(p.graph.unsupported) == {"model output (protected)"}, sorted(p.graph.unsupported)[:3]
