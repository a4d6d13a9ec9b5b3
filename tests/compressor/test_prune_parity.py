"""Physical pruning equals the masked oracle on every zoo model, and the prune API keeps its promises.

The oracle is the unpruned model with the removed channels' producers zeroed
(``compressor.pruning.zero_channels_``); in eval mode the physically smaller model must compute the
same function. Weights are randomised first (``randomize_``) so that every channel
matters; ``allow_renormalization=False`` keeps that equivalence exact.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import compressor as C
from compressor.testing import (
    assert_parity, check_pruned, count_flops, count_params, prune_with_oracle, randomize_, run_eval, zero_rows,
)
from models import create_model, default_input_size, list_models

SELECTIONS = [
    pytest.param({"ratio": 0.3, "seed": 1}, id="ratio0.3"),
    pytest.param({"ratio": 0.6, "seed": 2}, id="ratio0.6"),
    pytest.param({"global_ratio": 0.5, "seed": 3}, id="global0.5"),
]


def zoo_input(name: str, batch: int = 2) -> torch.Tensor:
    size = (3, 128, 64) if name == "reid_resnet50" else default_input_size(name)  # ReID: half size, faster
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(7))


@functools.lru_cache(maxsize=None)
def _zoo_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize_(create_model(name).eval(), seed=1)


def zoo_model(name: str) -> nn.Module:
    """A randomised eval-mode zoo model (a fresh copy: tests may change it)."""
    return copy.deepcopy(_zoo_model(name))


def random_config(**target) -> C.PruneConfig:
    return C.PruneConfig(criterion="random", allow_renormalization=False, **target)


def conv_out_channels(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ---- parity sweep -----------------------------------------------------------------------------------


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_matches_masked_oracle(name, selection):
    model, x = zoo_model(name), zoo_input(name)
    p = prune_with_oracle(model, x, random_config(**selection))
    check_pruned(p, x)  # parity, output shapes, fewer params and FLOPs, consistent layers

    before, after = dict(model.named_modules()), dict(p.pruned.named_modules())
    assert before.keys() == after.keys()
    assert all(type(after[n]) is type(m) for n, m in before.items()), "surgery must keep the module classes"
    shrunk = [n for n, c in conv_out_channels(p.pruned).items() if c < before[n].out_channels]
    assert shrunk, "no Conv2d became smaller"
    zero_before, zero_after = zero_rows(model), zero_rows(p.pruned)
    assert all(zero_after[n] <= zero_before[n] for n in zero_after), "pruned model keeps zeroed filters"
    classifier = [n for n, m in before.items() if isinstance(m, nn.Linear)][-1]  # its outputs are protected
    assert after[classifier].out_features == before[classifier].out_features


def test_in_place_surgery_equals_the_pruned_copy():
    model, x = zoo_model("resnet20"), zoo_input("resnet20")
    config = random_config(ratio=0.5, seed=4)
    result = C.pruning.prune_model(model, x, config)
    in_place = zoo_model("resnet20")
    C.pruning.prune_channels_(in_place, result.graph, result.removed)
    a, b = result.model.state_dict(), in_place.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- what prune() preserves -------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_train_or_eval_mode_is_preserved(training):
    model, x = zoo_model("resnet20").train(training), zoo_input("resnet20")
    pruned = C.prune(model, x, "l2", ratio=0.5).model
    assert all(m.training is training for m in pruned.modules())
    assert all(m.training is training for m in model.modules())
    assert count_params(pruned) < count_params(model)


def test_float64_model_stays_float64_and_matches_the_oracle_tightly():
    model, x = zoo_model("mobilenetv2").double(), zoo_input("mobilenetv2").double()
    p = prune_with_oracle(model, x, random_config(ratio=0.5, seed=5))
    assert all(t.dtype == torch.float64 for t in p.pruned.state_dict().values() if t.is_floating_point())
    out = run_eval(p.pruned, x)
    assert out.dtype == torch.float64
    assert_parity(out, run_eval(p.oracle, x), rtol=1e-9, atol_rel=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_model_stays_on_cuda_and_matches_the_oracle():
    model, x = zoo_model("resnet20").cuda(), zoo_input("resnet20").cuda()
    p = prune_with_oracle(model, x, random_config(ratio=0.5, seed=6))
    assert all(t.is_cuda for t in p.pruned.state_dict().values())
    assert_parity(run_eval(p.pruned, x), run_eval(p.oracle, x), rtol=1e-3, atol_rel=1e-3)


def test_prune_leaves_the_callers_model_untouched_unless_in_place():
    model, x = zoo_model("resnet56"), zoo_input("resnet56")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    widths, n_params = conv_out_channels(model), count_params(model)
    pruned = C.prune(model, x, "l2", ratio=0.5).model
    assert pruned is not model
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert conv_out_channels(model) == widths

    assert C.prune(model, x, "l2", ratio=0.5, inplace=True).model is model
    assert count_params(model) == count_params(pruned) < n_params
    assert conv_out_channels(model) == conv_out_channels(pruned) != widths


# ---- targets and options ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", [{"ratio": 0.4}, {"global_ratio": 0.5}, {"target_flops": 0.6}])
def test_round_to_8_keeps_multiples_of_8(target):
    model, x = zoo_model("resnet56"), zoo_input("resnet56")  # widths 16/32/64
    p = prune_with_oracle(model, x, C.PruneConfig(criterion="l2", round_to=8, allow_renormalization=False,
                                                         **target))
    check_pruned(p, x)
    before, after = conv_out_channels(model), conv_out_channels(p.pruned)
    changed = {n: c for n, c in after.items() if c != before[n]}
    assert changed
    assert all(c % 8 == 0 and c >= 8 for c in changed.values()), changed


def test_at_least_one_channel_is_kept_in_every_layer():
    model, x = zoo_model("resnet20"), zoo_input("resnet20")
    # round_to=1: the floor under test is min_channels alone (an alignment raises it, see test_align.py)
    p = prune_with_oracle(model, x, random_config(global_ratio=0.99, seed=1, round_to=1))
    widths = conv_out_channels(p.pruned)
    assert min(widths.values()) == 1, "global_ratio=0.99 should take some layer down to the floor"
    assert all(c >= 1 for c in widths.values())
    check_pruned(p, x)
    floor4 = C.prune(model, x, "random", global_ratio=0.99, min_channels=4, allow_renormalization=False, round_to=1).model
    assert min(conv_out_channels(floor4).values()) == 4


def test_target_flops_half_is_met_as_measured_by_flop_counter():
    model, x = zoo_model("resnet56"), zoo_input("resnet56", batch=1)
    result = C.pruning.prune_model(model, x, C.PruneConfig(criterion="l2", target_flops=0.5, round_to=1))
    measured = count_flops(result.model, x) / count_flops(model, x)
    assert 0.45 <= measured <= 0.5
    assert result.report.flops_ratio == pytest.approx(measured, abs=0.01)


def test_excluded_layer_keeps_its_channels():
    model, x = zoo_model("resnet56"), zoo_input("resnet56")
    pruned = C.prune(model, x, "l2", ratio=0.5, exclude=("layer1.0.conv1",), round_to=1).model  # exact widths
    assert pruned.layer1[0].conv1.out_channels == 16
    assert pruned.layer1[1].conv1.out_channels == 8  # its neighbour is pruned as asked


def test_unknown_exclude_name_is_an_error_naming_it():
    model, x = zoo_model("resnet20"), zoo_input("resnet20")
    with pytest.raises(ValueError, match="layer9.conv1"):
        C.prune(model, x, "l2", ratio=0.5, exclude=("layer9.conv1",)).model


@pytest.mark.parametrize("bad", [1.0, -0.1])
def test_ratio_outside_zero_one_is_an_error(bad):
    with pytest.raises(ValueError, match=f"ratio must be in .*{bad}"):
        C.PruneConfig(ratio=bad)
    with pytest.raises(ValueError, match="global_ratio"):
        C.prune(zoo_model("lenet5"), zoo_input("lenet5"), "l2", global_ratio=bad).model


def test_unreachable_flops_target_states_the_closest_reachable():
    model, x = zoo_model("resnet56"), zoo_input("resnet56", batch=1)
    with pytest.raises(C.UnreachableTargetError, match="closest reachable") as info:
        C.prune(model, x, "l2", target_flops=0.001).model
    assert isinstance(info.value, ValueError)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return self.conv(-x)


def test_untraceable_model_raises_trace_error_naming_the_class():
    with pytest.raises(C.TraceError, match="DataDependent"):
        C.prune(DataDependent(), torch.randn(1, 3, 8, 8), "l2", ratio=0.5).model


class Cumsum(nn.Module):
    """conv -> cumsum over channels -> conv: the engine has no rule for cumsum."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.c2(torch.cumsum(self.c1(x), 1))
        return self.fc(y.mean((2, 3)))


def test_unknown_channel_op_blocks_its_channels_and_the_rest_still_matches_the_oracle():
    model, x = randomize_(Cumsum().eval()), torch.randn(2, 3, 8, 8)
    p = prune_with_oracle(model, x, random_config(ratio=0.5, seed=1, round_to=1))
    assert any("cumsum" in reason for reason in p.graph.unsupported), p.graph.unsupported
    assert p.pruned.c1[0].out_channels == 8 and p.pruned.c2[0].out_channels == 4
    check_pruned(p, x)
