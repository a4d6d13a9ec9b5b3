"""Pruning strategies on real data: target reached, physically smaller, equal to the masked oracle."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

import compressor as C
import compressor.pruning as P
import compressor.pruning._api as api
import compressor.pruning._strategy_configs as strategy_configs
import models
from compressor.testing import assert_parity, run_eval, zero_rows

TRAIN = C.TrainConfig(epochs=1, lr=0.003, optimizer="adamw", weight_decay=1e-4, batch_size=64, threads=2)
# the flat format a recipe records a strategy in, unchanged since one StrategyConfig held every strategy's options
RECIPE_KEYS = ["name", "finetune_epochs", "step", "rank_epochs", "retrain_epochs", "epochs", "psfp_d", "ab_alpha",
               "pp_fraction", "pp_lambda", "pp_delta", "tolerance", "bn_recalibration"]


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
        P.zero_channels_(oracle, graph, removed)
        assert_parity(run_eval(after, x), run_eval(oracle, x))


@pytest.mark.parametrize("name,strategy", [
    ("oneshot", C.OneShotConfig(finetune_epochs=1)),
    ("iterative", C.IterativeConfig(step=0.25, retrain_epochs=1, finetune_epochs=1)),
    ("psfp", C.PSFPConfig(epochs=3, finetune_epochs=1)),
    ("autobalance", C.AutoBalanceConfig(epochs=3, finetune_epochs=1)),
    ("play_and_prune", C.PlayAndPruneConfig(epochs=3, finetune_epochs=1)),
])
def test_strategy_reaches_flops_target_physically(name, strategy, digits, trained, removals):
    train, test = digits
    x = train[0][0].unsqueeze(0)
    before = copy.deepcopy(trained.state_dict())
    # round_to=1: LeNet-5's 4-16 channel layers have too few aligned widths to land within 0.5 (see test_align.py)
    result = P.run_strategy(trained, x, C.PruneConfig(criterion="l2", target_flops=0.5, round_to=1), strategy,
                            train_data=train, eval_data=test, train_config=TRAIN)
    assert result.flops_ratio <= 0.5 and result.flops_ratio > 0.4  # reached, not overshot by far
    assert result.params_ratio < 1
    assert all(n == 0 for n in zero_rows(result.model).values()), zero_rows(result.model)
    _check_removals(removals, x)
    # the input model is untouched, and the recipe is in the metadata the bundle manifest shows
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    entry = result.model.compressor_metadata["history"][-1]
    assert entry["step"] == "strategy" and entry["recipe"]["strategy"]["name"] == name
    assert list(entry["recipe"]["strategy"]) == RECIPE_KEYS and entry["recipe"]["strategy"]["finetune_epochs"] == 1
    assert entry["recipe"]["prune"]["target_flops"] == 0.5
    assert C.evaluate_classification(result.model, test).top1 > 0.5  # still a digit classifier


def test_iterative_removes_step_per_iteration(digits, trained):
    train, _ = digits
    x = train[0][0].unsqueeze(0)
    strategy = C.IterativeConfig(step=0.1, retrain_epochs=0)
    result = P.run_strategy(trained, x, C.PruneConfig(criterion="l1", ratio=0.3), strategy, train_data=train)
    prunes = [h for h in result.history if h["phase"].endswith("prune")]
    assert len(prunes) == 3
    base = models.create_model("lenet5", in_chans=3)
    assert result.model.conv1.out_channels == round(base.conv1.out_channels * 0.7)


def test_psfp_schedule_matches_formula():
    total, p = 40, 0.6
    assert P.psfp_schedule(0, total, p) == pytest.approx(0.0, abs=1e-12)
    assert P.psfp_schedule(total, total, p) == pytest.approx(p)
    assert P.psfp_schedule(total / 8, total, p) == pytest.approx(3 * p / 4)
    values = [P.psfp_schedule(t, total, p) for t in range(total + 1)]
    assert all(a < b for a, b in zip(values, values[1:]))
    # the same system with another D: P'_{D T} = 3P/4
    assert P.psfp_schedule(0.25 * total, total, p, d=0.25) == pytest.approx(3 * p / 4)


def test_psfp_zeroes_on_schedule_and_filters_can_recover(digits, trained):
    train, _ = digits
    x = train[0][0].unsqueeze(0)
    strategy = C.PSFPConfig(epochs=4)
    result = P.run_strategy(trained, x, C.PruneConfig(criterion="l2", ratio=0.5, round_to=1), strategy, train_data=train,
                            train_config=TRAIN)
    zeroed = [h["zeroed"] for h in result.history if h["phase"].endswith("soft prune")]
    assert len(zeroed) == 4 and zeroed == sorted(zeroed) and zeroed[0] > 0
    graph = C.build_dependency_graph(trained, x)
    assert zeroed[-1] == sum(round(0.5 * len(g.removable)) for g in graph.groups if len(g.removable))


def test_residual_policy_internal_keeps_the_stream(digits):
    x = digits[0][0][0].unsqueeze(0)
    model = models.create_model("resnet20")
    result = P.run_strategy(model, x, C.PruneConfig(criterion="l1", ratio=0.5, residual="internal", round_to=1))
    assert result.model.conv1.out_channels == 16 and result.model.layer1[0].conv2.out_channels == 16
    assert result.model.layer1[0].conv1.out_channels == 8
    coupled = P.run_strategy(model, x, C.PruneConfig(criterion="l1", ratio=0.5, residual="coupled", round_to=1))
    assert coupled.model.conv1.out_channels == 8


def test_bad_input_is_named(digits, trained):
    with pytest.raises(ValueError, match="known strategies: .*iterative.*oneshot.*psfp"):
        C.strategy_config_from_dict("lottery", {})
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        C.PlayAndPruneConfig(tolerance=-0.01)
    with pytest.raises(ValueError, match="step must be in"):
        C.IterativeConfig(step=0)
    with pytest.raises(ValueError, match="residual must be one of"):
        C.PruneConfig(ratio=0.5, residual="outer")
    with pytest.raises(ValueError, match="known criteria: .*fpgm.*l1.*l2.*simc.*taylor"):
        C.PruneConfig(criterion="l3", ratio=0.5)
    x = digits[0][0][0].unsqueeze(0)
    with pytest.raises(ValueError, match="strategy 'psfp' trains and needs training data"):
        P.run_strategy(trained, x, C.PruneConfig(ratio=0.5), C.PSFPConfig())
    with pytest.raises(ValueError, match="use a weight-based criterion"):
        P.run_strategy(trained, x, C.PruneConfig(criterion="taylor", ratio=0.5), C.PSFPConfig(),
                       train_data=digits[0])
    with pytest.raises(ValueError, match="needs .*data"):
        P.run_strategy(trained, x, C.PruneConfig(criterion="taylor", ratio=0.5))
    with pytest.raises(ValueError, match="ema_decay"):
        P.run_strategy(trained, x, C.PruneConfig(ratio=0.5), C.PSFPConfig(), train_data=digits[0],
                       train_config=C.TrainConfig(ema_decay=0.9))


def test_config_round_trip():
    for config in (C.OneShotConfig(finetune_epochs=1), C.IterativeConfig(step=0.1, finetune_epochs=2),
                   C.PSFPConfig(3, 0.25), C.AutoBalanceConfig(alpha=1e-3), C.PlayAndPruneConfig(lambda_=0.01)):
        assert type(config).from_json(config.to_json()) == config
    prune = C.PruneConfig(criterion="l2", target_flops=0.5, residual="internal", criterion_options={})
    assert C.PruneConfig.from_json(prune.to_json()) == prune
    with pytest.raises(ValueError, match="allowed"):
        C.OneShotConfig.from_dict({"stepp": 0.1})
    with pytest.raises(ValueError, match="allowed"):
        C.strategy_config_from_dict("oneshot", {"stepp": 0.1})
    assert np.isfinite(P.psfp_schedule(3, 10, 0.5))


def test_flat_options_map_to_each_strategys_own_config():
    """The CLI's --strategy-option and the pipeline YAML keep today's keys, prefixed ones included."""
    assert C.strategy_config_from_dict("psfp", {"psfp_d": 0.25, "epochs": 3}) == C.PSFPConfig(epochs=3, d=0.25)
    assert C.strategy_config_from_dict("autobalance", {"ab_alpha": 1e-3}) == C.AutoBalanceConfig(alpha=1e-3)
    options = {"pp_fraction": 0.2, "pp_lambda": 0.01, "pp_delta": 2.0, "tolerance": 0.02, "finetune_epochs": 1}
    assert C.strategy_config_from_dict("play_and_prune", options) == C.PlayAndPruneConfig(
        fraction=0.2, lambda_=0.01, delta=2.0, tolerance=0.02, finetune_epochs=1)
    assert C.strategy_config_from_dict("iterative", {"step": 0.1}).name == "iterative"
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epochs'\] for strategy 'oneshot'; "
                                         r"allowed: \['bn_recalibration', 'finetune_epochs'\]"):
        C.strategy_config_from_dict("oneshot", {"epochs": 3})  # another strategy's option no longer leaks in
    with pytest.raises(ValueError, match=r"d \(psfp_d\) must be in \(0, 0.75\), got 0.9"):
        C.strategy_config_from_dict("psfp", {"psfp_d": 0.9})


def test_user_strategy_brings_its_own_config(monkeypatch):
    monkeypatch.setattr(strategy_configs, "_STRATEGIES", strategy_configs._STRATEGIES.copy())

    @dataclasses.dataclass(frozen=True)
    class HalfConfig(C.StrategyConfig):
        share: float = 0.5

    @C.register_strategy("half", HalfConfig)
    def half(run):
        return P.prune_model(run.model, run.inputs, dataclasses.replace(run.prune, ratio=run.strategy.share)).model

    config = C.strategy_config_from_dict("half", {"share": 0.25})
    assert config == HalfConfig(share=0.25) and config.name == "half" and "half" in C.list_strategies()
    model, x = models.create_model("lenet5", in_chans=3), torch.randn(1, 3, 32, 32)
    result = P.run_strategy(model, x, C.PruneConfig(ratio=0.9, round_to=1), config)
    expected = P.prune_model(model, x, C.PruneConfig(ratio=0.25, round_to=1)).model  # its own option was used
    assert result.model.conv1.out_channels == expected.conv1.out_channels < model.conv1.out_channels
    assert result.recipe["strategy"] == {"name": "half", "finetune_epochs": 0, "bn_recalibration": 8, "share": 0.25}
    with pytest.raises(ValueError, match="strategy 'half' is already registered"):
        C.register_strategy("half", C.StrategyConfig)
    with pytest.raises(ValueError, match="HalfConfig already selects strategy 'half'"):
        C.register_strategy("half2", HalfConfig)
    with pytest.raises(TypeError, match="StrategyConfig subclass"):
        C.register_strategy("half3", dict)

    @dataclasses.dataclass(frozen=True)
    class Unregistered(C.StrategyConfig):
        pass

    with pytest.raises(ValueError, match="Unregistered is not the config of a registered strategy"):
        P.run_strategy(model, x, C.PruneConfig(ratio=0.5), Unregistered())


def test_recalibrate_batchnorm_matches_hand_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3)).eval()
    x = torch.randn(40, 2, 6, 6)
    data = torch.utils.data.TensorDataset(x, torch.zeros(40, dtype=torch.long))
    assert P.recalibrate_batchnorm_(model, data, batches=100, batch_size=40) == 1
    with torch.no_grad():
        h = model[0](x).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(model[1].running_mean, h.mean(1))
    torch.testing.assert_close(model[1].running_var, h.var(1, unbiased=True))
    assert not model.training and model[1].momentum == 0.1  # modes and momentum restored
