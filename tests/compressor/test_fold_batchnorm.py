"""BatchNorm folding: parity, nothing foldable left, and a named reason for every kept BN."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import compressor as C
from compressor.testing import assert_parity, randomize_
from models import create_model, default_input_size, list_models

BN = nn.modules.batchnorm._BatchNorm


def _fold_and_check(model: nn.Module, x: torch.Tensor) -> C.FoldReport:
    randomize_(model.eval(), seed=1)
    with torch.no_grad():
        expected = model(x)
    folded, report = C.fold_batchnorm(model, x)
    with torch.no_grad():
        assert_parity(folded(x), expected)
    left = {n for n, m in folded.named_modules() if isinstance(m, BN)}
    assert left == set(report.kept)  # every remaining BN is explained ...
    assert all(report.kept.values())  # ... with a reason
    assert report.params_after < report.params_before
    assert report.macs_after == pytest.approx(report.macs_before)
    assert sum(isinstance(m, BN) for m in model.modules()) > len(left)  # the caller's model is untouched
    return report


@pytest.mark.parametrize("name", [n for n in list_models() if n != "lenet5"])
def test_zoo_models_fold_completely(name):
    size = (3, 128, 64) if name == "reid_resnet50" else default_input_size(name)
    report = _fold_and_check(create_model(name), torch.randn(2, *size))
    expected_kept = {"bottleneck"} if name == "reid_resnet50" else set()  # BNNeck follows pooling
    assert set(report.kept) == expected_kept


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "regnet_x_400mf", "efficientnet_b0", "shufflenet_v2_x0_5",
                                  "densenet121", "googlenet"])
def test_torchvision_depthwise_grouped_se_concat(name):
    report = _fold_and_check(create_model(f"torchvision:{name}"), torch.randn(2, 3, 96, 96))
    if name == "densenet121":
        assert any("follows call_function cat" in why for why in report.kept.values())
    elif name == "googlenet":
        assert all("not called" in why for why in report.kept.values())  # auxiliary heads
    else:
        assert report.kept == {}


class Shapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=True)
        self.bn_b = nn.BatchNorm2d(8)
        self.bn_add = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 1)
        self.bn_c = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.bn_fc = nn.BatchNorm1d(6)

    def forward(self, x):
        a = self.bn_a(self.a(x))
        b = self.bn_b(self.b(a))
        s = self.bn_add(a + b)
        c = self.c(s)
        tapped = self.bn_c(c) + c  # c is also used after its BN
        return self.bn_fc(self.fc(tapped.mean(dim=(2, 3))))


def test_reasons_and_linear_fold():
    report = _fold_and_check(Shapes(), torch.randn(4, 3, 8, 8))
    assert set(report.folded) == {("a", "bn_a"), ("b", "bn_b"), ("fc", "bn_fc")}
    assert "follows call_function add" in report.kept["bn_add"]
    assert "also used elsewhere" in report.kept["bn_c"]


def test_folded_model_saves_and_reloads(tmp_path):
    model = randomize_(create_model("resnet20").eval())
    x = torch.randn(2, 3, 32, 32)
    pruned = C.prune(model, x[:1], "l2", target_flops=0.6).model
    folded, _ = C.fold_batchnorm(pruned, x)
    C.save_model(folded, tmp_path / "f")
    again = C.load_model(tmp_path / "f")
    assert not any(isinstance(m, BN) for m in again.modules())
    with torch.no_grad():
        assert torch.equal(again(x), folded(x))


def test_train_mode_is_restored():
    model = create_model("resnet20").train()
    folded, _ = C.fold_batchnorm(model, torch.randn(2, 3, 32, 32))
    assert model.training and folded.training
