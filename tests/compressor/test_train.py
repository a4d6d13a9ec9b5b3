"""The shared training loop: learning, determinism, exact resume, hooks, schedules, EMA, config."""
import json
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from compressor.training._loop import (
    CheckpointError,
    TrainCallbacks,
    TrainConfig,
    load_checkpoint_weights_,
    lr_at,
    train,
)

FAST = {"epochs": 3, "batch_size": 32, "lr": 0.1, "weight_decay": 1e-4, "seed": 5}


def make_data(n=256, classes=3, side=16, seed=0):
    """Labels are learnable: class c adds +1 to channel c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 3, side, side, generator=g)
    x[torch.arange(n), y] += 1.0
    return TensorDataset(x, y)


class NoisyData(Dataset):
    """Draws from the global torch RNG in __getitem__, as random augmentation does."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x + 0.1 * torch.randn_like(x), y


def make_model(width=8, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, width, 3, padding=1), bn=nn.BatchNorm2d(width), relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), drop=nn.Dropout(dropout), fc=nn.Linear(width, 3)))


def accuracy_on(data):
    def evaluate(model):
        x, y = data.tensors
        return {"accuracy": (model(x).argmax(1) == y).float().mean().item()}
    return evaluate


def losses(result):
    return [r["train_loss"] for r in result.history]


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=atol), k


def test_loss_decreases_and_accuracy_rises(tmp_path):
    data = make_data()
    result = train(make_model(), data, TrainConfig(**FAST, warmup_epochs=0.5), eval_fn=accuracy_on(data),
                   output=tmp_path, progress=True)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < 0.5 * first["train_loss"]
    assert last["train_accuracy"] > max(first["train_accuracy"], 0.9)
    assert result.final_metrics["accuracy"] > 0.9 and result.best_metrics["accuracy"] >= result.final_metrics["accuracy"]
    assert result.epochs_completed == 3 and result.steps == 3 * 8 and result.best_epoch is not None
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["schema_version"] == 1 and doc["config"] == TrainConfig(**FAST, warmup_epochs=0.5).to_dict()
    assert [r["train_loss"] for r in doc["history"]] == losses(result)
    assert set(doc["history"][0]) >= {"epoch", "steps", "train_loss", "train_accuracy", "lr", "throughput_sps",
                                      "epoch_s", "eval"}
    assert doc["history"][0]["throughput_sps"] > 0 and doc["environment"]["world_size"] == 1
    best = load_checkpoint_weights_(make_model(), tmp_path / "best.pt")
    assert accuracy_on(data)(best.eval())["accuracy"] == result.best_metrics["accuracy"]
    with pytest.raises(ValueError, match="monitor metric 'top5' is not among the eval metrics"):
        train(make_model(), data, TrainConfig(**FAST, monitor="top5"), eval_fn=accuracy_on(data), progress=False)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_gives_identical_losses(num_workers):
    data = NoisyData(make_data(n=128))
    config = TrainConfig(**{**FAST, "epochs": 2}, num_workers=num_workers)
    runs = []
    for _ in range(2):
        model = make_model(dropout=0.3)
        runs.append((losses(train(model, data, config, progress=False)), state(model)))
    assert runs[0][0] == runs[1][0]
    assert_same_state(runs[0][1], runs[1][1])
    other = losses(train(make_model(dropout=0.3), data, TrainConfig(**{**FAST, "epochs": 2, "seed": 6},
                                                                    num_workers=num_workers), progress=False))
    assert other != runs[0][0]


def test_resume_with_more_epochs_matches_a_straight_run(tmp_path):
    """The brief's interruption: train 2 epochs, then call again with epochs=4 and resume=True."""
    data = NoisyData(make_data(n=128))
    config = {**FAST, "schedule": "constant", "momentum": 0.9}
    straight = make_model(dropout=0.3)
    expected = train(straight, data, TrainConfig(**{**config, "epochs": 4}), progress=False)
    train(make_model(dropout=0.3), data, TrainConfig(**{**config, "epochs": 2}), output=tmp_path, progress=False)
    resumed = make_model(dropout=0.3, seed=99)  # different init: everything must come from the checkpoint
    result = train(resumed, data, TrainConfig(**{**config, "epochs": 4}), output=tmp_path, resume=True,
                   progress=False)
    assert result.resumed_from_epoch == 2 and result.steps == expected.steps
    assert losses(result) == losses(expected)
    assert_same_state(state(resumed), state(straight))


def test_resume_after_interrupt_with_warmup_cosine_and_ema(tmp_path):
    data = NoisyData(make_data(n=128))
    config = TrainConfig(**{**FAST, "epochs": 4, "lr": 0.01}, warmup_epochs=1, ema_decay=0.9, optimizer="adamw",
                         grad_clip=1.0, checkpoint_every=1)
    eval_fn = accuracy_on(make_data(n=64, seed=1))
    straight = make_model(dropout=0.3)
    expected = train(straight, data, config, eval_fn=eval_fn, progress=False)

    def interrupt(epoch, model):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make_model(dropout=0.3), data, config, eval_fn=eval_fn, output=tmp_path, progress=False,
              callbacks=TrainCallbacks(on_epoch_start=interrupt))
    resumed = make_model(dropout=0.3)
    result = train(resumed, data, config, eval_fn=eval_fn, output=tmp_path, resume=True, progress=False)
    assert result.resumed_from_epoch == 2
    assert losses(result) == losses(expected)
    assert [r["eval"] for r in result.history] == [r["eval"] for r in expected.history]
    assert_same_state(state(resumed), state(straight))
    # the checkpoint keeps both weight sets; the model ends holding the EMA ones
    fresh = load_checkpoint_weights_(make_model(), tmp_path)
    assert_same_state(state(fresh), state(resumed))
    raw = load_checkpoint_weights_(make_model(), tmp_path / "checkpoint.pt", ema=False)
    assert not torch.equal(raw.conv.weight, fresh.conv.weight)


def test_checkpoint_of_other_architecture_is_a_named_error(tmp_path):
    data = make_data(n=64)
    train(make_model(width=8), data, TrainConfig(**{**FAST, "epochs": 1}), output=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*'conv\.weight' has shape \[8, 3, 3, 3\] in the "
                                              r"checkpoint but \[6, 3, 3, 3\]"):
        train(make_model(width=6), data, TrainConfig(**{**FAST, "epochs": 2}), output=tmp_path, resume=True,
              progress=False)
    with pytest.raises(CheckpointError, match="checkpoint.pt.*'conv.weight'"):
        load_checkpoint_weights_(make_model(width=6), tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint_weights_(make_model(), tmp_path / "junk.pt")


def test_hooks_are_called_per_step_and_epoch():
    data = make_data(n=96)
    calls = {"steps": [], "epochs_start": [], "epochs_end": [], "lrs": []}
    callbacks = TrainCallbacks(
        on_step_end=lambda info: (calls["steps"].append((info.epoch, info.step)), calls["lrs"].append(info.lr)),
        on_epoch_start=lambda epoch, model: calls["epochs_start"].append(epoch),
        on_epoch_end=lambda epoch, model: calls["epochs_end"].append(epoch))
    config = TrainConfig(**FAST, warmup_epochs=1)
    train(make_model(), data, config, callbacks=callbacks, progress=False)
    assert calls["steps"] == [(e, e * 3 + i) for e in range(3) for i in range(3)]
    assert calls["epochs_start"] == calls["epochs_end"] == [0, 1, 2]
    assert calls["lrs"] == pytest.approx([lr_at(config, s, 3) for s in range(9)], rel=1e-12)


def test_extra_loss_changes_the_gradient():
    data = make_data(n=128)
    config = TrainConfig(**FAST)
    plain = make_model()
    train(plain, data, config, progress=False)
    penalised = make_model()
    l1 = TrainCallbacks(extra_loss=lambda model, output, inputs: 0.05 * model.conv.weight.abs().sum())
    result = train(penalised, data, config, callbacks=l1, progress=False)
    assert penalised.conv.weight.abs().sum() < 0.5 * plain.conv.weight.abs().sum()
    assert result.history[0]["extra_loss"] > 0
    none = TrainCallbacks(extra_loss=lambda model, output, inputs: None)
    again = make_model()
    train(again, data, config, callbacks=none, progress=False)
    assert_same_state(state(again), state(plain))


def test_frozen_parameters_stay_unchanged():
    data = make_data(n=64)
    model = make_model()
    before = state(model)
    train(model, data, TrainConfig(**FAST, frozen=("conv", r"bn\.w.*")), progress=False)
    after = state(model)
    assert torch.equal(before["conv.weight"], after["conv.weight"])
    assert torch.equal(before["conv.bias"], after["conv.bias"])
    assert torch.equal(before["bn.weight"], after["bn.weight"])
    assert not torch.equal(before["bn.bias"], after["bn.bias"])
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards
    with pytest.raises(ValueError, match="'layer9' matches no parameter"):
        train(model, data, TrainConfig(**FAST, frozen=("conv", "layer9")), progress=False)
    assert all(p.requires_grad for p in model.parameters())


def test_tuple_targets_and_extra_items_reach_the_loss():
    base = make_data(n=64)
    x, y = base.tensors
    data = TensorDataset(x, y, torch.arange(64))  # (x, y, extra): loss gets y only
    seen = []

    def loss_fn(output, target):
        seen.append(target.shape)
        return nn.functional.cross_entropy(output, target)

    train(make_model(), data, TrainConfig(**{**FAST, "epochs": 1}), loss_fn=loss_fn, progress=False)
    assert seen == [torch.Size([32])] * 2

    class Pairs(Dataset):  # ReID-style items: (x, (pid, camid))
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return x[i], (y[i], i % 2)

    result = train(make_model(), Pairs(), TrainConfig(**{**FAST, "epochs": 1}), progress=False)
    assert result.history[0]["train_accuracy"] is not None


def test_lr_schedules_match_hand_computation():
    cosine = TrainConfig(epochs=3, lr=0.1, warmup_epochs=1)  # 4 steps/epoch: warm-up 0..3, cosine over 8
    assert [lr_at(cosine, s, 4) for s in (0, 1, 3)] == pytest.approx([0.025, 0.05, 0.1])
    assert lr_at(cosine, 4, 4) == pytest.approx(0.1)
    assert lr_at(cosine, 8, 4) == pytest.approx(0.05)  # halfway: 0.1 * (1 + cos(pi/2)) / 2
    assert lr_at(cosine, 11, 4) == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi)).item()))
    step = TrainConfig(epochs=6, lr=0.1, schedule="step", step_size=2, gamma=0.5)
    assert [lr_at(step, s, 4) for s in (0, 7, 8, 16, 23)] == pytest.approx([0.1, 0.1, 0.05, 0.025, 0.025])
    constant = TrainConfig(epochs=2, lr=0.3, schedule="constant", warmup_epochs=0.5)
    assert [lr_at(constant, s, 4) for s in (0, 1, 2, 7)] == pytest.approx([0.15, 0.3, 0.3, 0.3])


def test_ema_equals_hand_computation():
    data = make_data(n=64)
    model = make_model()
    weights = [state(model)]
    config = TrainConfig(epochs=1, batch_size=32, lr=0.5, ema_decay=0.5, seed=1)
    train(model, data, config, progress=False,
          callbacks=TrainCallbacks(on_step_end=lambda info: weights.append(state(info.model))))
    assert len(weights) == 3
    expected = dict(weights[0])
    for w in weights[1:]:
        expected = {k: 0.5 * expected[k] + 0.5 * w[k] if w[k].is_floating_point() else w[k] for k in w}
    assert_same_state(state(model), expected, atol=1e-6)
    assert not torch.allclose(model.fc.weight, weights[-1]["fc.weight"])


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs.*0"), ({"batch_size": 1.5}, "batch_size.*1.5"), ({"lr": -1}, "lr.*-1"),
    ({"optimizer": "lion"}, "optimizer.*'lion'"), ({"schedule": "poly"}, "schedule.*'poly'"),
    ({"momentum": 1.0}, "momentum.*1.0"), ({"nesterov": True, "optimizer": "adamw"}, "nesterov"),
    ({"warmup_epochs": 11}, "warmup_epochs.*11"), ({"label_smoothing": 1.0}, "label_smoothing.*1.0"),
    ({"ema_decay": 1.0}, "ema_decay.*1.0"), ({"grad_clip": 0}, "grad_clip.*0"), ({"threads": 0}, "threads.*0"),
    ({"frozen": ("conv[",)}, r"frozen entry 'conv\['"), ({"monitor_mode": "up"}, "monitor_mode.*'up'"),
    ({"seed": -1}, "seed.*-1"), ({"epochs": True}, "epochs.*True"),
])
def test_config_validation_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_config_round_trips_and_rejects_unknown_keys():
    config = TrainConfig(epochs=3, optimizer="adamw", ema_decay=0.99, frozen=("conv", r"bn\..*"), threads=2,
                         grad_clip=5.0, schedule="step", monitor="accuracy")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert TrainConfig.from_json(config.to_json()) == config
    assert TrainConfig(frozen="conv").frozen == ("conv",)
    with pytest.raises(ValueError, match=r"unknown TrainConfig key\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
