"""Pruning strategies on real data: target reached, physically smaller, equal to the masked oracle."""
import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import compressor as C
import compressor.pruning._api as api
import models

sys.path.insert(0, str(Path(__file__).parent))
from oracle import assert_parity, run_eval, zero_rows  # noqa: E402

TRAIN = C.TrainConfig(epochs=1, lr=0.003, optimizer="adamw", weight_decay=1e-4, batch_size=64, threads=2)


@pytest.fixture(scope="module")
def digits():
    train = C.digits_dataset("train")
    return torch.utils.data.Subset(train, range(512)), C.digits_dataset("test")


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = models.create_model("lenet5", in_chans=3)
    C.train(model, digits[0], C.TrainConfig(epochs=4, lr=0.01, optimizer="adamw", weight_decay=1e-4, batch_size=32,
                                            threads=2), progress=False)
    return model


@pytest.fixture
def removals(monkeypatch):
    """Every physical removal the strategy makes: (model before, graph, mask, model after)."""
    calls = []
    real = api.pruned_copy

    def spy(model, graph, removed):
        out = real(model, graph, removed)
        calls.append((copy.deepcopy(model), graph, removed.copy(), copy.deepcopy(out)))
        return out

    monkeypatch.setattr(api, "pruned_copy", spy)
    return calls


def _check_removals(calls, x):
    assert calls, "the strategy removed nothing physically"
    for before, graph, removed, after in calls:
        assert removed.any()
        oracle = copy.deepcopy(before)
        C.zero_channels_(oracle, graph, removed)
        assert_parity(run_eval(after, x), run_eval(oracle, x))


@pytest.mark.parametrize("name", ["oneshot", "iterative", "psfp", "autobalance", "play_and_prune"])
def test_strategy_reaches_flops_target_physically(name, digits, trained, removals):
    train, test = digits
    x = train[0][0].unsqueeze(0)
    strategy = C.StrategyConfig(name=name, epochs=3, retrain_epochs=1, step=0.25, finetune_epochs=1)
    before = copy.deepcopy(trained.state_dict())
    # round_to=1: LeNet-5's 4-16 channel layers have too few aligned widths to land within 0.5 (see test_align.py)
    result = C.run_strategy(trained, x, C.PruneConfig(criterion="l2", target_flops=0.5, round_to=1), strategy,
                            train_data=train, eval_data=test, train_config=TRAIN)
    assert result.flops_ratio <= 0.5 and result.flops_ratio > 0.4  # reached, not overshot by far
    assert result.params_ratio < 1
    assert all(n == 0 for n in zero_rows(result.model).values()), zero_rows(result.model)
    _check_removals(removals, x)
    # the input model is untouched, and the recipe is in the metadata the bundle manifest shows
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    entry = result.model.compressor_metadata["history"][-1]
    assert entry["step"] == "strategy" and entry["recipe"]["strategy"]["name"] == name
    assert entry["recipe"]["prune"]["target_flops"] == 0.5
    assert C.evaluate_classification(result.model, test).top1 > 0.5  # still a digit classifier


def test_iterative_removes_step_per_iteration(digits, trained):
    train, _ = digits
    x = train[0][0].unsqueeze(0)
    strategy = C.StrategyConfig(name="iterative", step=0.1, retrain_epochs=0)
    result = C.run_strategy(trained, x, C.PruneConfig(criterion="l1", ratio=0.3), strategy, train_data=train)
    prunes = [h for h in result.history if h["phase"].endswith("prune")]
    assert len(prunes) == 3
    base = models.create_model("lenet5", in_chans=3)
    assert result.model.conv1.out_channels == round(base.conv1.out_channels * 0.7)


def test_psfp_schedule_matches_formula():
    total, p = 40, 0.6
    assert C.psfp_schedule(0, total, p) == pytest.approx(0.0, abs=1e-12)
    assert C.psfp_schedule(total, total, p) == pytest.approx(p)
    assert C.psfp_schedule(total / 8, total, p) == pytest.approx(3 * p / 4)
    values = [C.psfp_schedule(t, total, p) for t in range(total + 1)]
    assert all(a < b for a, b in zip(values, values[1:]))
    # the same system with another D: P'_{D T} = 3P/4
    assert C.psfp_schedule(0.25 * total, total, p, d=0.25) == pytest.approx(3 * p / 4)


def test_psfp_zeroes_on_schedule_and_filters_can_recover(digits, trained):
    train, _ = digits
    x = train[0][0].unsqueeze(0)
    strategy = C.StrategyConfig(name="psfp", epochs=4)
    result = C.run_strategy(trained, x, C.PruneConfig(criterion="l2", ratio=0.5, round_to=1), strategy, train_data=train,
                            train_config=TRAIN)
    zeroed = [h["zeroed"] for h in result.history if h["phase"].endswith("soft prune")]
    assert len(zeroed) == 4 and zeroed == sorted(zeroed) and zeroed[0] > 0
    graph = C.build_dependency_graph(trained, x)
    assert zeroed[-1] == sum(round(0.5 * len(g.removable)) for g in graph.groups if len(g.removable))


def test_residual_policy_internal_keeps_the_stream(digits):
    x = digits[0][0][0].unsqueeze(0)
    model = models.create_model("resnet20")
    result = C.run_strategy(model, x, C.PruneConfig(criterion="l1", ratio=0.5, residual="internal", round_to=1))
    assert result.model.conv1.out_channels == 16 and result.model.layer1[0].conv2.out_channels == 16
    assert result.model.layer1[0].conv1.out_channels == 8
    coupled = C.run_strategy(model, x, C.PruneConfig(criterion="l1", ratio=0.5, residual="coupled", round_to=1))
    assert coupled.model.conv1.out_channels == 8


def test_bad_input_is_named(digits, trained):
    with pytest.raises(ValueError, match="known strategies: .*iterative.*oneshot.*psfp"):
        C.StrategyConfig(name="lottery")
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        C.StrategyConfig(name="play_and_prune", tolerance=-0.01)
    with pytest.raises(ValueError, match="step must be in"):
        C.StrategyConfig(name="iterative", step=0)
    with pytest.raises(ValueError, match="residual must be one of"):
        C.PruneConfig(ratio=0.5, residual="outer")
    with pytest.raises(ValueError, match="known criteria: .*fpgm.*l1.*l2.*simc.*taylor"):
        C.PruneConfig(criterion="l3", ratio=0.5)
    x = digits[0][0][0].unsqueeze(0)
    with pytest.raises(ValueError, match="strategy 'psfp' trains and needs training data"):
        C.run_strategy(trained, x, C.PruneConfig(ratio=0.5), C.StrategyConfig(name="psfp"))
    with pytest.raises(ValueError, match="use a weight-based criterion"):
        C.run_strategy(trained, x, C.PruneConfig(criterion="taylor", ratio=0.5), C.StrategyConfig(name="psfp"),
                       train_data=digits[0])
    with pytest.raises(ValueError, match="needs .*data"):
        C.run_strategy(trained, x, C.PruneConfig(criterion="taylor", ratio=0.5))
    with pytest.raises(ValueError, match="ema_decay"):
        C.run_strategy(trained, x, C.PruneConfig(ratio=0.5), C.StrategyConfig(name="psfp"), train_data=digits[0],
                       train_config=C.TrainConfig(ema_decay=0.9))


def test_config_round_trip():
    config = C.StrategyConfig(name="iterative", step=0.1, finetune_epochs=2)
    assert C.StrategyConfig.from_json(config.to_json()) == config
    prune = C.PruneConfig(criterion="l2", target_flops=0.5, residual="internal", criterion_options={})
    assert C.PruneConfig.from_json(prune.to_json()) == prune
    with pytest.raises(ValueError, match="allowed"):
        C.StrategyConfig.from_dict({"name": "oneshot", "stepp": 0.1})
    assert np.isfinite(C.psfp_schedule(3, 10, 0.5))


def test_recalibrate_batchnorm_matches_hand_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).eval()
    x = torch.randn(40, 2, 6, 6)
    data = torch.utils.data.TensorDataset(x, torch.zeros(40, dtype=torch.long))
    assert C.recalibrate_batchnorm_(model, data, batches=100, batch_size=40) == 1
    with torch.no_grad():
        h = model[0](x).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(model[1].running_mean, h.mean(1))
    torch.testing.assert_close(model[1].running_var, h.var(1, unbiased=True))
    assert not model.training and model[1].momentum == 0.1  # modes and momentum restored
