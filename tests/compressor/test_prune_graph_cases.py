"""Dependency graph on small hand-built models whose correct channel grouping is known.

Each case states which channels must be removed together (same atom), which must stay
independent (different atoms), or which must be blocked and why, and where it matters, that
surgery removes exactly the matching weight columns.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import compressor as C
from compressor.testing import assert_parity, check_pruned, prune_with_oracle, randomize_, run_eval


def atoms_of(g: C.DependencyGraph, module: str, kind: str) -> np.ndarray:
    """Atom of every index of ``module``'s member of ``kind`` (conv_out, conv_in, linear_in ...)."""
    found = [m for m, mem in enumerate(g.members) if mem.module == module and mem.kind == kind]
    assert len(found) == 1, f"expected one {kind} member of {module!r}, found {len(found)}"
    return g.member_atoms(found[0])


def group_of(g: C.DependencyGraph, module: str, kind: str) -> int:
    m = next(i for i, mem in enumerate(g.members) if mem.module == module and mem.kind == kind)
    return next(grp.index for grp in g.groups if m in grp.members)


def remove_atoms(g: C.DependencyGraph, atoms) -> np.ndarray:
    removed = np.zeros(g.num_atoms, dtype=bool)
    removed[np.asarray(atoms)] = True
    return removed


def reasons_of(g: C.DependencyGraph, atoms) -> set[str]:
    return {g.block_reason.get(int(a), "") for a in np.unique(atoms)}


def conv_bn(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Head(nn.Module):
    def __init__(self, c: int, classes: int = 5):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


# ---- residual add --------------------------------------------------------------------------------


class TwoBlocks(nn.Module):
    """stem -> identity block -> projection block (8 -> 12) -> head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.a1, self.a2 = conv_bn(8, 6), conv_bn(6, 8)
        self.b1, self.b2 = conv_bn(8, 6), conv_bn(6, 12)
        self.proj = conv_bn(8, 12, k=1)
        self.head = Head(12)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        s = torch.relu(self.a2(torch.relu(self.a1(s))) + s)
        s = torch.relu(self.b2(torch.relu(self.b1(s))) + self.proj(s))
        return self.head(s)


def test_residual_add_couples_every_producer_of_the_stream():
    g = C.build_dependency_graph(TwoBlocks().eval(), X)
    stem, a2 = atoms_of(g, "stem.0", "conv_out"), atoms_of(g, "a2.0", "conv_out")
    b2, proj = atoms_of(g, "b2.0", "conv_out"), atoms_of(g, "proj.0", "conv_out")
    # channel i of every conv writing into one stream is one atom
    np.testing.assert_array_equal(stem, a2)
    np.testing.assert_array_equal(b2, proj)
    assert len(set(stem)) == 8 and len(set(b2)) == 12
    # the stream's BN and its readers' input columns carry the same atoms
    np.testing.assert_array_equal(atoms_of(g, "a1.0", "conv_in"), stem)
    np.testing.assert_array_equal(atoms_of(g, "a2.1", "bn"), stem)
    np.testing.assert_array_equal(atoms_of(g, "head.fc", "linear_in"), b2)
    assert group_of(g, "stem.0", "conv_out") == group_of(g, "a2.0", "conv_out")
    assert group_of(g, "b2.0", "conv_out") == group_of(g, "proj.0", "conv_out")
    # the two streams and the blocks' inner convs are independent
    inner = atoms_of(g, "a1.0", "conv_out")
    assert not set(inner) & set(stem) and not set(stem) & set(b2)
    assert group_of(g, "a1.0", "conv_out") != group_of(g, "stem.0", "conv_out")
    assert not g.blocked[stem].any() and not g.blocked[b2].any()


def test_removing_a_stream_channel_slices_every_block_that_touches_it():
    model = randomize_(TwoBlocks().eval())
    g = C.build_dependency_graph(model, X)
    stem = atoms_of(g, "stem.0", "conv_out")
    pruned = copy.deepcopy(model)
    C.pruning.prune_channels_(pruned, g, remove_atoms(g, [stem[2], stem[5]]))
    keep = [0, 1, 3, 4, 6, 7]
    assert pruned.stem[0].out_channels == pruned.a2[0].out_channels == 6
    assert pruned.a1[0].in_channels == pruned.b1[0].in_channels == pruned.proj[0].in_channels == 6
    torch.testing.assert_close(pruned.a1[0].weight, model.a1[0].weight[:, keep])
    torch.testing.assert_close(pruned.a2[1].running_mean, model.a2[1].running_mean[keep])
    assert pruned.b2[0].out_channels == 12  # the second stream is untouched


# ---- concat --------------------------------------------------------------------------------------


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 4, k=1), conv_bn(3, 6)
        self.mix = nn.Conv2d(10, 7, 1)
        self.head = Head(7)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.head(self.mix(y))


def test_concat_maps_each_branch_to_its_offset_in_the_consumer():
    model = randomize_(Concat().eval())
    g = C.build_dependency_graph(model, X)
    a, b = atoms_of(g, "a.0", "conv_out"), atoms_of(g, "b.0", "conv_out")
    np.testing.assert_array_equal(atoms_of(g, "mix", "conv_in"), np.concatenate([a, b]))
    assert len(set(a) | set(b)) == 10  # branches stay independent
    j = 3
    pruned = copy.deepcopy(model)
    C.pruning.prune_channels_(pruned, g, remove_atoms(g, [b[j]]))
    assert (pruned.a[0].out_channels, pruned.b[0].out_channels, pruned.mix.in_channels) == (4, 5, 9)
    columns = [c for c in range(10) if c != 4 + j]
    torch.testing.assert_close(pruned.mix.weight, model.mix.weight[:, columns])
    torch.testing.assert_close(pruned.mix.bias, model.mix.bias)


# ---- flatten -> Linear ---------------------------------------------------------------------------


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_bn(3, 4)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(4 * 9, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc(torch.flatten(self.pool(self.conv(x)), 1))))


def test_flatten_then_linear_removes_h_times_w_features_per_channel():
    model = randomize_(FlattenLinear().eval())
    g = C.build_dependency_graph(model, X)
    conv = atoms_of(g, "conv.0", "conv_out")
    np.testing.assert_array_equal(atoms_of(g, "fc", "linear_in"), np.repeat(conv, 9))
    pruned = copy.deepcopy(model)
    C.pruning.prune_channels_(pruned, g, remove_atoms(g, [conv[1]]))
    assert pruned.fc.in_features == 27
    columns = [i for i in range(36) if not 9 <= i < 18]
    torch.testing.assert_close(pruned.fc.weight, model.fc.weight[:, columns])
    assert_parity(run_eval(pruned, X), run_eval(_zeroed(model, g, [conv[1]]), X))


def _zeroed(model, g, atoms):
    out = copy.deepcopy(model)
    C.pruning.zero_channels_(out, g, remove_atoms(g, atoms))
    return out


# ---- depthwise -----------------------------------------------------------------------------------


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1 = conv_bn(3, 8, k=1)
        self.dw = conv_bn(8, 8, groups=8)
        self.pw2 = conv_bn(8, 5, k=1)
        self.head = Head(5)

    def forward(self, x):
        return self.head(self.pw2(torch.relu(self.dw(torch.relu(self.pw1(x))))))


def test_depthwise_conv_couples_its_input_and_output_channel():
    model = randomize_(Depthwise().eval())
    g = C.build_dependency_graph(model, X)
    pw1, dw_out = atoms_of(g, "pw1.0", "conv_out"), atoms_of(g, "dw.0", "conv_out")
    np.testing.assert_array_equal(pw1, dw_out)
    np.testing.assert_array_equal(atoms_of(g, "pw2.0", "conv_in"), dw_out)
    assert len(set(pw1)) == 8 and not g.blocked[pw1].any()
    pruned = copy.deepcopy(model)
    C.pruning.prune_channels_(pruned, g, remove_atoms(g, pw1[[0, 6]]))
    dw = pruned.dw[0]
    assert (dw.in_channels, dw.out_channels, dw.groups) == (6, 6, 6)
    torch.testing.assert_close(dw.weight, model.dw[0].weight[[1, 2, 3, 4, 5, 7]])
    assert_parity(run_eval(pruned, X), run_eval(_zeroed(model, g, pw1[[0, 6]]), X))


# ---- squeeze-and-excitation ----------------------------------------------------------------------


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_bn(3, 8)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.head = Head(8)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(x * gate)


def test_se_inner_fc_is_its_own_group_and_the_gate_is_coupled_to_the_gated_channels():
    g = C.build_dependency_graph(SE().eval(), X)
    conv, inner, gate = (atoms_of(g, "conv.0", "conv_out"), atoms_of(g, "fc1", "conv_out"),
                         atoms_of(g, "fc2", "conv_out"))
    np.testing.assert_array_equal(gate, conv)
    np.testing.assert_array_equal(atoms_of(g, "fc1", "conv_in"), conv)
    assert not set(inner) & set(conv) and len(set(inner)) == 4
    assert group_of(g, "fc1", "conv_out") != group_of(g, "conv.0", "conv_out")
    assert not g.blocked[inner].any() and not g.blocked[conv].any()


# ---- broadcast multiply by a spatial attention map -------------------------------------------------


class SpatialAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_bn(3, 8)
        self.att = nn.Conv2d(8, 1, 3, padding=1)
        self.head = Head(8)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.head(x * torch.sigmoid(self.att(x)))  # (N,8,H,W) * (N,1,H,W)


def test_broadcast_attention_map_does_not_couple_the_channels_it_scales():
    model = randomize_(SpatialAttention().eval())
    g = C.build_dependency_graph(model, X)
    conv = atoms_of(g, "conv.0", "conv_out")
    assert len(set(conv)) == 8 and not g.blocked[conv].any()
    att = atoms_of(g, "att", "conv_out")
    assert g.blocked[att].all() and "broadcast" in " ".join(reasons_of(g, att))
    p = prune_with_oracle(model, X, C.PruneConfig(criterion="random", ratio=0.5, seed=3, round_to=1))
    assert p.pruned.conv[0].out_channels == 4 and p.pruned.att.out_channels == 1
    check_pruned(p, X)


# ---- channel shuffle ------------------------------------------------------------------------------


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_bn(3, 8, k=1)
        self.after = conv_bn(8, 6, k=1)
        self.head = Head(6)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # ShuffleNet, groups=2
        return self.head(self.after(x))


def test_channel_shuffle_with_two_groups_couples_pairs():
    model = randomize_(Shuffle().eval())
    g = C.build_dependency_graph(model, X)
    conv = atoms_of(g, "conv.0", "conv_out")
    # channel i of group 0 and channel i of group 1 must go together: the literal 2 stays valid
    np.testing.assert_array_equal(conv[:4], conv[4:])
    assert len(set(conv)) == 4 and not g.blocked[conv].any()
    # the consumer reads the interleaved order: input 2i+k is channel k*4+i
    np.testing.assert_array_equal(atoms_of(g, "after.0", "conv_in"), conv.reshape(2, 4).T.reshape(-1))
    pruned = copy.deepcopy(model)
    C.pruning.prune_channels_(pruned, g, remove_atoms(g, [conv[1]]))
    assert pruned.conv[0].out_channels == 6 and pruned.after[0].in_channels == 6
    torch.testing.assert_close(pruned.after[0].weight, model.after[0].weight[:, [0, 1, 4, 5, 6, 7]])
    assert_parity(run_eval(pruned, X), run_eval(_zeroed(model, g, [conv[1]]), X))


# ---- blocks ---------------------------------------------------------------------------------------


class HardCodedView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = conv_bn(3, 64)
        self.inner = conv_bn(3, 16)
        self.fc = nn.Linear(64 + 16, 4)

    def forward(self, x):
        n = x.size(0)
        a = self.conv(x).view(n, 64, -1).mean(-1)
        b = self.inner(x).flatten(2).mean(-1)
        return self.fc(torch.cat([a, b], 1))


def test_hard_coded_view_blocks_its_channels_with_the_reason():
    g = C.build_dependency_graph(HardCodedView().eval(), X)
    conv = atoms_of(g, "conv.0", "conv_out")
    assert g.blocked[conv].all()
    assert all("hard-coded" in r for r in reasons_of(g, conv)), reasons_of(g, conv)
    assert any("hard-coded" in r for r in g.unsupported)
    inner = atoms_of(g, "inner.0", "conv_out")  # computed sizes stay prunable
    assert not g.blocked[inner].any()


def test_classifier_outputs_are_blocked_as_model_output():
    g = C.build_dependency_graph(TwoBlocks().eval(), X)
    fc = atoms_of(g, "head.fc", "linear_out")
    assert g.blocked[fc].all()
    assert all("model output" in r for r in reasons_of(g, fc))
    assert not set(fc) & set(g.removable.tolist())


# ---- tracing leaves the model as it was ----------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_build_restores_train_and_eval_mode(training):
    model = TwoBlocks().train(training)
    C.build_dependency_graph(model, X)
    assert model.training is training
    assert all(m.training is training for m in model.modules())


def test_build_restores_per_module_modes_of_a_frozen_bn_model(tmp_path):
    model = TwoBlocks().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # fine-tuning with frozen BatchNorm statistics
    before = {n: m.training for n, m in model.named_modules()}
    C.build_dependency_graph(model, X)
    assert {n: m.training for n, m in model.named_modules()} == before
    pruned = C.prune(model, X, "l2", ratio=0.5).model
    assert {n: m.training for n, m in model.named_modules()} == before
    assert {n: m.training for n, m in pruned.named_modules()} == before
    folded, _ = C.fold_batchnorm(pruned, X)
    assert {n: m.training for n, m in folded.named_modules()} == before  # Identity takes its BN's mode


def test_tracing_in_train_mode_does_not_update_batchnorm_statistics():
    model = randomize_(TwoBlocks()).train()
    state = copy.deepcopy(model.state_dict())
    C.build_dependency_graph(model, X * 10 + 3)
    after = model.state_dict()
    assert state.keys() == after.keys()
    for key, value in state.items():
        assert torch.equal(value, after[key]), f"{key} changed while tracing"
