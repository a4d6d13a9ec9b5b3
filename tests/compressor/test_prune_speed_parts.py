"""The parts that make ``compressor.prune`` fast, checked for behaviour (never for time).

* the report carries every phase's seconds and survives a JSON round trip;
* ``params_after`` comes from the cost model, not from counting the pruned model, and agrees;
* the returned model is a copy that shares no storage with the input, which stays unchanged;
* the verification still catches a broken surgery;
* the dependency graph traced on meta tensors equals the one traced on fake tensors, and the
  meta shape rules agree with the layers they stand for.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import compressor as C
import compressor.pruning._api as _api
import compressor.graph._graph as _graph
import compressor.graph._shape_exec as _shape_exec
import compressor.pruning._surgery as _surgery
from compressor.common.errors import CompressorError
from models import create_model

torchvision = pytest.importorskip("torchvision")
tvm = torchvision.models

PHASES = {"graph", "select", "surgery", "verify", "cost", "total"}


def _config(**kw) -> C.PruneConfig:
    return C.PruneConfig(criterion="l2", ratio=0.3, round_to=1, **kw)


def _zoo(name: str) -> tuple[nn.Module, torch.Tensor]:
    if name.startswith("tv:"):
        return getattr(tvm, name[3:])().eval(), torch.randn(1, 3, 64, 64)
    return create_model(name).eval(), torch.randn(1, 3, 32, 32)


# ---- report -----------------------------------------------------------------------------------------


def test_report_seconds_has_every_phase_and_total_is_their_sum():
    model, x = _zoo("resnet20")
    seconds = C.pruning.prune_model(model, x, _config()).report.seconds
    assert PHASES <= set(seconds)
    assert all(v >= 0 for v in seconds.values())
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"))


def test_report_json_round_trip():
    model, x = _zoo("resnet20")
    report = C.pruning.prune_model(model, x, _config()).report
    back = C.PruneReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert back == report
    assert back.flops_ratio == report.flops_ratio and back.params_ratio == report.params_ratio
    with pytest.raises(ValueError, match="schema_version"):
        C.PruneReport.from_dict({**report.to_dict(), "schema_version": 99})


# ---- cost from shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16_bn_cifar", "lenet5", "tv:mobilenet_v3_small",
                                  "tv:shufflenet_v2_x0_5", "tv:regnet_x_400mf", "tv:efficientnet_b0"])
def test_params_after_from_the_cost_model_equals_the_pruned_models_count(name):
    model, x = _zoo(name) if name != "lenet5" else (create_model("lenet5").eval(), torch.randn(1, 1, 32, 32))
    result = C.pruning.prune_model(model, x, _config())
    assert result.report.params_after == sum(p.numel() for p in result.model.parameters())
    assert result.report.params_before == sum(p.numel() for p in model.parameters())
    assert result.report.params_after < result.report.params_before
    assert result.report.macs_after == pytest.approx(C.count_cost(result.model, x).macs, rel=1e-9)


def test_attention_macs_are_counted_by_the_graph_and_by_count_cost():
    # nn.MultiheadAttention's inference fast path is one fused op; the counts include its matmuls
    model = nn.Sequential(nn.Linear(16, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)).eval()
    x = torch.randn(1, 5, 16)
    graph = C.build_dependency_graph(model, x)
    projections = 5 * 16 * 16 * 4 + 5 * 16 * 32 * 2 + 5 * 16 * 16  # q, k, v, out; the MLP; the first Linear
    attention = 2 * 5 * 5 * 16  # q @ k^T and weights @ v
    assert graph.macs == projections + attention
    assert C.count_cost(model, x).macs == graph.macs


# ---- the copy ----------------------------------------------------------------------------------------


def _storages(model: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers()) if t.numel()}


@pytest.mark.parametrize("name", ["tv:mobilenet_v3_small", "resnet56"])
def test_the_pruned_model_shares_no_storage_and_the_input_is_unchanged(name):
    model, x = _zoo(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = C.prune(model, x, "l2", ratio=0.3, round_to=1).model
    assert not _storages(model) & _storages(pruned)
    assert not {id(m) for m in model.modules()} & {id(m) for m in pruned.modules()}
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    pruned.register_forward_hook(lambda *args: None)  # hook dicts are the copy's own
    assert not any(m._forward_hooks for m in model.modules())
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.b.weight = self.a.weight
        self.shared = self.a  # the same module twice
        self.notes = {"steps": [1, 2]}
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        return self.a(x) + self.b(x) * self.scale.view(1, -1, 1, 1)


def test_copy_module_tree_keeps_sharing_inside_the_copy_and_nothing_with_the_original():
    model = _Tied()
    model.a.weight.requires_grad_(False)
    copy_, named = _surgery.copy_module_tree(model)
    assert copy_.b.weight is copy_.a.weight and copy_.shared is copy_.a
    assert copy_.a.weight is not model.a.weight and not copy_.a.weight.requires_grad
    assert isinstance(copy_.a.weight, nn.Parameter) and isinstance(copy_.scale, torch.Tensor)
    assert copy_.notes == model.notes and copy_.notes is not model.notes
    assert named["a"] is copy_.a and named["b"] is copy_.b
    assert not _storages(model) & _storages(copy_)
    x = torch.randn(1, 3, 5, 5)
    assert torch.equal(copy_(x), model(x))


# ---- verification -----------------------------------------------------------------------------------


def _drop_an_input_channel(model: nn.Module) -> None:
    """Surgery gone wrong: a conv loses one input channel (attributes updated, so it looks fine)."""
    conv = model.layer1[0].conv2
    conv.weight = nn.Parameter(conv.weight.detach()[:, 1:].clone())
    conv.in_channels -= 1


@pytest.mark.parametrize("inplace", [False, True])
def test_verification_catches_a_wrong_shape(monkeypatch, inplace):
    model, x = _zoo("resnet20")
    if inplace:
        original = _api.prune_channels_

        def broken(target, graph, removed):
            out = original(target, graph, removed)
            _drop_an_input_channel(target)
            return out

        monkeypatch.setattr(_api, "prune_channels_", broken)
    else:
        original = _api.pruned_copy

        def broken(source, graph, removed):
            target = original(source, graph, removed)
            _drop_an_input_channel(target)
            return target

        monkeypatch.setattr(_api, "pruned_copy", broken)
    with pytest.raises(CompressorError, match="the pruned model does not run"):
        C.pruning.prune_model(model, x, _config(), inplace=inplace)
    C.pruning.prune_model(create_model("resnet20").eval(), x, _config(), verify=False)  # unchecked: no error


def test_verification_catches_attributes_that_disagree_with_the_tensors(monkeypatch):
    model, x = _zoo("resnet20")
    monkeypatch.setattr(_surgery, "_fix_attributes", lambda module, groups: {})
    with pytest.raises(CompressorError, match="disagrees with its tensors"):
        C.pruning.prune_model(model, x, _config())


class _LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's: the trace holds ``normalized_shape`` as a literal, which surgery changes."""

    def forward(self, x):
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def test_a_trace_holding_a_changed_module_size_is_verified_on_a_fresh_trace(patch_everywhere):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _LayerNorm2d(8), nn.Conv2d(8, 4, 1)).eval()

    def no_fake_tensors(*args, **kwargs):
        raise AssertionError("the meta-tensor checks should have decided")

    assert patch_everywhere(torch._subclasses.fake_tensor, "FakeTensorMode", no_fake_tensors) > 1  # the engine's names too
    result = C.pruning.prune_model(model, torch.randn(1, 3, 8, 8), _config())
    assert result.model[1].normalized_shape == (6,)


def _cpu_ones(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[0], 1, x.shape[2], x.shape[3])  # on the CPU whatever x is


torch.fx.wrap("_cpu_ones")


class _MakesACpuTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.conv(x) * _cpu_ones(x))  # a CPU tensor cannot meet a meta one


def test_a_model_meta_tensors_cannot_run_is_traced_and_verified_on_fake_tensors():
    model, x = _MakesACpuTensor().eval(), torch.randn(1, 3, 8, 8)
    result = C.pruning.prune_model(model, x, _config())
    assert result.graph.execution == "fake"
    assert result.model.conv.out_channels == 6 and result.model.head.in_channels == 6
    assert result.report.params_after == sum(p.numel() for p in result.model.parameters())


# ---- meta tracing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tv:shufflenet_v2_x0_5", "tv:mobilenet_v3_small", "tv:efficientnet_b0",
                                  "tv:regnet_x_400mf", "tv:convnext_tiny", "resnet20"])
def test_the_graph_on_meta_tensors_equals_the_graph_on_fake_tensors(name, monkeypatch):
    model, x = _zoo(name)
    meta = C.build_dependency_graph(model, x)
    monkeypatch.setattr(_graph, "EXECUTIONS", ("fake",))
    fake = C.build_dependency_graph(model, x)
    assert (meta.execution, fake.execution) == ("meta", "fake")
    assert meta.num_atoms == fake.num_atoms and (meta.atom_of_id == fake.atom_of_id).all()
    assert (meta.blocked == fake.blocked).all() and meta.block_reason == fake.block_reason
    assert [(g.members, g.atoms.tolist()) for g in meta.groups] == [(g.members, g.atoms.tolist()) for g in fake.groups]
    assert [vars(a) for a in meta.layers] == [vars(b) for b in fake.layers]
    assert meta.macs == pytest.approx(fake.macs, rel=1e-12) and meta.params == fake.params


RULE_CASES = [
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 11, 13)),
    (nn.Conv2d(4, 8, (3, 5), stride=(2, 1), padding=(0, 2), dilation=(2, 1), groups=2), (1, 4, 17, 9)),
    (nn.Conv2d(4, 4, 3, padding="same", dilation=2), (1, 4, 9, 10)),
    (nn.Conv2d(4, 4, 3, padding="valid"), (1, 4, 9, 10)),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (1, 4, 6, 7)),
    (nn.Conv2d(4, 5, 3), (4, 9, 9)),  # unbatched
    (nn.Conv1d(4, 6, 5, stride=3), (2, 4, 20)),
    (nn.Conv3d(2, 4, 3, padding=1, stride=2), (1, 2, 5, 6, 7)),
    (nn.Linear(8, 3), (2, 5, 8)),
    (nn.BatchNorm2d(4), (2, 4, 5, 5)),
    (nn.BatchNorm1d(4), (2, 4, 7)),
    (nn.LayerNorm(5), (2, 3, 5)),
    (nn.MaxPool2d(3, 2, 1), (1, 4, 11, 12)),
    (nn.MaxPool2d(3, 2, ceil_mode=True), (1, 4, 10, 13)),
    (nn.MaxPool2d(2, dilation=2), (1, 4, 9, 9)),
    (nn.AvgPool2d(2), (1, 4, 7, 9)),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True), (1, 4, 8, 11)),
    (nn.MaxPool1d(2), (2, 3, 9)),
    (nn.AdaptiveAvgPool2d((None, 3)), (1, 4, 7, 8)),
    (nn.AdaptiveMaxPool2d(1), (1, 4, 7, 8)),
    (nn.ReLU6(), (1, 4, 3, 3)),
    (nn.Dropout2d(), (1, 4, 3, 3)),
]


@pytest.mark.parametrize("module,shape", RULE_CASES, ids=[f"{type(m).__name__}-{s}" for m, s in RULE_CASES])
def test_shape_rules_agree_with_the_layers(module, shape):
    module.eval()
    rule = _shape_exec.SHAPE_RULES[type(module)]
    x = torch.randn(shape)
    with torch.no_grad():
        expected = module(x)
    got = rule(module, _shape_exec.to_meta(x), True)
    assert got.device.type == "meta" and got.shape == expected.shape and got.dtype == expected.dtype


@pytest.mark.parametrize("module,shape", [(nn.Conv2d(4, 6, 3), (1, 5, 8, 8)), (nn.BatchNorm2d(4), (1, 5, 3, 3)),
                                          (nn.Linear(8, 3), (2, 7)), (nn.Conv2d(4, 6, 5), (1, 4, 3, 3))])
def test_shape_rules_refuse_what_the_layer_refuses(module, shape):
    with pytest.raises(Exception):
        module.eval()(torch.randn(shape))
    with pytest.raises(Exception):
        _shape_exec.SHAPE_RULES[type(module)](module, torch.empty(shape, device="meta"), True)


@pytest.mark.parametrize("name", ["resnet20", "torchvision:mobilenet_v2", "torchvision:squeezenet1_1",
                                  "torchvision:densenet121"])
def test_feasible_order_equals_the_atom_by_atom_rule(name):
    """The per-group shortcut of the feasible order gives exactly what the atom-by-atom loop gives."""
    import numpy as np

    import compressor.pruning._align as _align
    import compressor.pruning._select as _select

    model = create_model(name).eval()
    graph = C.build_dependency_graph(model, torch.randn(1, 3, 32, 32))
    group_of = np.full(graph.num_atoms, -1, dtype=np.int64)
    for g in graph.groups:
        group_of[g.atoms] = g.index
    rng = np.random.default_rng(0)
    for round_to, min_channels in ((1, 1), (8, 1), (4, 10)):
        config = C.PruneConfig("l2", ratio=0.3, round_to=round_to, min_channels=min_channels)
        inc = _select._Incidence(graph, _select.member_floors(graph, config, _align.group_alignment(graph, config)))
        scores = rng.random(graph.num_atoms)
        candidates = graph.removable[np.argsort(scores[graph.removable], kind="stable")]
        remaining, expected = inc.sizes.copy(), []
        for a in candidates.tolist():  # the rule, one atom at a time
            start, stop = inc.matrix.indptr[a], inc.matrix.indptr[a + 1]
            members, left = inc.matrix.indices[start:stop], remaining[inc.matrix.indices[start:stop]] - inc.matrix.data[start:stop]
            if (left >= inc.floor[members]).all():
                remaining[members] = left
                expected.append(a)
        assert np.array_equal(inc.feasible(candidates, group_of), np.array(expected, dtype=np.int64))
