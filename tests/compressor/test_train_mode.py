"""The pruned model runs in train mode too: the graph traces both modes and couples them.

GoogLeNet and Inception-v3 call their auxiliary classifiers only when ``self.training``; the
eval-mode trace never sees them. They (and a hand-built model with a train-only head) are pruned
to half their FLOPs, must equal the masked oracle in eval mode, then take one optimizer step on
a loss over the main and auxiliary outputs, with finite gradients. FLOPs stay the deployed
(eval-mode) ones; the auxiliary heads' parameters count, their MACs do not.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressor as C
from compressor.graph import _graph
from compressor.testing import check_pruned, count_flops, count_params, prune_with_oracle, randomize_, tensors_of

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(autouse=True)
def _one_thread(_deterministic):
    """Small inputs: one intra-op thread is faster than two on a shared 2-core machine."""
    torch.set_num_threads(1)


def half_flops() -> C.PruneConfig:
    return C.PruneConfig(criterion="random", target_flops=0.5, seed=1, allow_renormalization=False)


def images(batch: int, side: int) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(batch))


def train_one_step(model: nn.Module, x: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """One SGD step on cross entropy over every output (main and auxiliary); returns the outputs.

    Asserts that every gradient and every updated parameter is finite."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    outputs = tensors_of(model(x))
    target = torch.arange(x.shape[0]) % num_classes
    loss = sum(F.cross_entropy(out, target) for out in outputs)
    optimizer.zero_grad()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads, "no gradient reached the parameters"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    return outputs


def assert_costs_are_deployed_ones(result, model: nn.Module, x: torch.Tensor) -> None:
    """FLOPs: the eval forward's (auxiliary heads not counted); parameters: all of the model's."""
    assert result.report.flops_before == pytest.approx(count_flops(model, x), rel=1e-6)
    assert result.report.flops_after == pytest.approx(count_flops(result.model, x), rel=1e-6)
    assert result.report.params_before == count_params(model)
    assert result.report.params_after == count_params(result.model)


# ---- GoogLeNet and Inception-v3 -------------------------------------------------------------------------


def test_googlenet_aux_heads_follow_the_pruned_trunk_and_train():
    model = randomize_(torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).eval(), seed=1)
    x = images(1, 112)
    p = prune_with_oracle(model, x, half_flops())
    check_pruned(p, images(2, 112))
    assert p.graph.traced_train is not None and not p.graph.train_cut
    assert {layer.module for layer in p.graph.train_layers} >= {"aux1.conv.conv", "aux1.fc1", "aux2.fc2"}
    assert all(layer.macs(layer.out_size, layer.in_size) == 0 for layer in p.graph.train_layers)
    # the auxiliary heads read the pruned inception outputs; their logits are protected
    assert p.pruned.aux1.conv.conv.in_channels == p.pruned.inception4b.branch1.conv.in_channels < 512
    assert p.pruned.aux2.fc2.out_features == 1000

    result = C.pruning.prune_model(model, x, half_flops())
    assert result.report.flops_ratio <= 0.52
    assert_costs_are_deployed_ones(result, model, x)
    outputs = train_one_step(result.model, images(2, 112), 1000)
    assert [tuple(o.shape) for o in outputs] == [(2, 1000)] * 3  # logits, aux2, aux1


def test_inception_v3_aux_head_follows_the_pruned_trunk_and_trains():
    # the auxiliary head runs only at the training resolution (5x5 after Mixed_6e needs 299x299)
    model = randomize_(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True).eval(), seed=1)
    x = images(1, 299)
    p = prune_with_oracle(model, x, half_flops())
    check_pruned(p, x)
    assert p.graph.traced_train is not None and not p.graph.train_cut
    assert p.pruned.AuxLogits.conv0.conv.in_channels == p.pruned.Mixed_7a.branch3x3_1.conv.in_channels < 768
    assert p.pruned.AuxLogits.fc.out_features == 1000
    outputs = train_one_step(p.pruned, images(2, 299), 1000)
    assert [tuple(o.shape) for o in outputs] == [(2, 1000)] * 2  # logits, aux_logits


def test_inception_v3_at_a_small_input_keeps_what_its_aux_head_reads_and_still_trains_at_299():
    """At 107x107 the auxiliary head cannot run (neither can the original's in train mode): the
    train-mode graph is run past the failing layer, the channels feeding it are kept, with the
    reason, and the pruned model trains at the resolution the head needs."""
    model = randomize_(torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True).eval(), seed=1)
    x = images(1, 107)
    p = prune_with_oracle(model, x, half_flops())
    check_pruned(p, images(2, 107))
    assert "AuxLogits.conv1.conv" in p.graph.train_cut
    reason = next(r for r in p.graph.unsupported if r.startswith("the train-mode forward fails on the example input"))
    assert "layer 'AuxLogits.conv1.conv'" in reason and p.graph.unsupported[reason] == 128  # conv0's outputs
    assert p.pruned.AuxLogits.conv0.conv.in_channels < 768 and p.pruned.AuxLogits.conv0.conv.out_channels == 128
    train_one_step(p.pruned, images(2, 299), 1000)


# ---- a hand-built train-only head ------------------------------------------------------------------------


class TrainOnlyHead(nn.Module):
    """A trunk whose middle features feed an auxiliary classifier, in train mode only."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.fc = nn.Linear(64, num_classes)
        self.aux = nn.Sequential(nn.Conv2d(32, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(16, num_classes))

    def forward(self, x):
        x = self.stem(x)
        aux = self.aux(x) if self.training else None
        out = self.fc(self.block(x).mean((2, 3)))
        return (out, aux) if self.training else out


def test_a_train_only_head_is_pruned_with_the_channels_it_reads_and_trains():
    model, x = randomize_(TrainOnlyHead().eval(), seed=1), torch.randn(1, 3, 16, 16)
    g = C.build_dependency_graph(model, x)
    assert g.traced_train is not None
    stem = next(i for i, m in enumerate(g.members) if m.module == "stem.0" and m.kind == "conv_out")
    aux_in = next(i for i, m in enumerate(g.members) if m.module == "aux.0" and m.kind == "conv_in")
    assert (g.member_atoms(stem) == g.member_atoms(aux_in)).all()  # one group: the stem's channels
    assert g.blocked[g.member_atoms(next(i for i, m in enumerate(g.members) if m.module == "aux.5"
                                         and m.kind == "linear_out"))].all()  # a train-mode output
    assert [layer.module for layer in g.train_layers] == ["aux.0", "aux.5"]

    result = C.pruning.prune_model(model, x, C.PruneConfig(criterion="random", ratio=0.5, seed=1, round_to=1))
    pruned = result.model
    assert pruned.aux[0].in_channels == pruned.stem[0].out_channels == 16
    assert pruned.aux[0].out_channels == 8 and pruned.aux[5].out_features == 10
    assert_costs_are_deployed_ones(result, model, x)
    p = prune_with_oracle(model, x, C.PruneConfig(criterion="random", ratio=0.5, seed=1, round_to=1))
    check_pruned(p, torch.randn(2, 3, 16, 16))
    outputs = train_one_step(pruned, torch.randn(4, 3, 16, 16), 10)
    assert [tuple(o.shape) for o in outputs] == [(4, 10), (4, 10)]


class ModeFlagsOnly(nn.Module):
    """Train mode changes only functional mode flags: the two traces count as the same calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.batch_norm(self.conv(x), self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                         self.training)
        x = F.dropout(x.mean((2, 3)), 0.2, training=self.training)
        return self.fc(x)


def test_models_whose_traces_differ_only_in_mode_flags_run_one_pass():
    model = ModeFlagsOnly().eval()
    g = C.build_dependency_graph(model, torch.randn(1, 3, 8, 8))
    assert g.traced_train is None and not g.train_layers
    resnet = torchvision.models.resnet18(weights=None).eval()
    assert C.build_dependency_graph(resnet, torch.randn(1, 3, 32, 32)).traced_train is None


class CountsSteps(nn.Module):
    """Train mode updates a buffer in forward and runs BatchNorm on one value per channel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x).amax((2, 3), keepdim=True)  # (N, 8, 1, 1)
        if self.training:
            self.steps.add_(1)
            x = F.batch_norm(x, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, True)
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("execution", ["meta", "fake", "real"])
def test_the_train_pass_neither_changes_buffers_nor_trips_on_train_mode_batchnorm(execution, monkeypatch):
    monkeypatch.setattr(_graph, "EXECUTIONS", (execution,))  # fake and real: fallbacks for models meta cannot run
    model = CountsSteps().eval()
    before = {n: b.clone() for n, b in model.state_dict().items()}
    x = torch.randn(1, 3, 6, 6)
    result = C.pruning.prune_model(model, x, C.PruneConfig(criterion="random", ratio=0.5, seed=1, round_to=1))
    assert result.graph.traced_train is not None and result.graph.execution == execution
    assert not result.graph.train_cut
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), f"building the graph changed {name}"
    assert result.model.conv.out_channels == 4 and result.model.bn.num_features == 4
    assert result.model.training is False and model.training is False


# ---- errors name the layer and the mode -------------------------------------------------------------------


class DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class Nested(nn.Module):
    def __init__(self, train_only: bool):
        super().__init__()
        self.train_only = train_only
        self.conv = nn.Conv2d(3, 8, 3)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3), DataDependent())

    def forward(self, x):
        x = self.conv(x)
        return self.body(x) if self.training or not self.train_only else x


@pytest.mark.parametrize("train_only", [False, True])
def test_a_trace_error_names_the_layer_and_the_mode(train_only):
    with pytest.raises(C.TraceError, match=r"cannot trace Nested.* in layer 'body\.1' \(DataDependent\)") as err:
        C.build_dependency_graph(Nested(train_only).eval(), torch.randn(1, 3, 8, 8))
    assert ("in train mode" in str(err.value)) == train_only


def test_modes_are_restored_after_tracing_both():
    model = TrainOnlyHead()
    model.train()
    model.stem[1].eval()  # a frozen BatchNorm stays frozen
    C.build_dependency_graph(model, torch.randn(1, 3, 8, 8))
    assert model.training and model.block[1].training and not model.stem[1].training
    assert copy.deepcopy(model).stem[1].training is False


@pytest.mark.parametrize("criterion", ["thinet", "lasso"])
def test_reconstruction_criteria_keep_a_train_only_heads_sliced_weights(criterion):
    """ThiNet/LASSO refit layers from eval-mode samples; a train-only head has none and keeps its slice."""
    torch.manual_seed(0)
    model = TrainOnlyHead().eval()
    x = images(4, 32)
    data = torch.utils.data.TensorDataset(images(16, 32), torch.randint(0, 10, (16,)))
    config = C.PruneConfig(criterion=criterion, ratio=0.5, round_to=1, calib_batches=2, calib_batch_size=8)
    result = C.pruning.prune_model(model, x, config, data=data)
    assert result.removed.any()
    train_one_step(result.model.train(), images(2, 32), 10)
