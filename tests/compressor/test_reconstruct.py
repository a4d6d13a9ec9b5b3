"""ThiNet and LASSO (next-layer reconstruction criteria) and their least-squares refit.

These criteria change the kept weights after the surgery, so the pruned model is *not* equal
to the masked oracle (``zero_channels_``) by design; the parity sweep does not apply to them.
Here they are checked against known answers instead.
"""
# These tests pin which channels a criterion removes, so they prune without channel alignment
# (round_to=1); the default alignment is tested in test_align.py.
import copy

import numpy as np
import pytest
import torch
from torch import nn

import compressor as C
import models
from compressor.criteria._reconstruct import conv_patches, lasso_channel_selection, thinet_order


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).mean(dim=(2, 3))


def _data(n=64, size=8, classes=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 1, size, size, generator=gen),
                                          torch.randint(0, classes, (n,), generator=gen))


def _two_conv(seed=0):
    torch.manual_seed(seed)
    return TwoConv().eval()


@pytest.mark.parametrize("criterion,options", [("thinet", {}), ("lasso", {}), ("lasso", {"keep_ratio": 0.75})])
def test_channel_the_next_layer_ignores_is_removed(criterion, options):
    model = _two_conv()
    with torch.no_grad():
        model.b.weight[:, 2] = 0  # channel 2 of a contributes nothing to b's output
    config = C.PruneConfig(round_to=1, criterion=criterion, ratio=0.25, criterion_options=options)
    result = C.pruning.prune_model(model, torch.randn(1, 1, 8, 8), config, data=_data())
    pruned = result.model
    assert pruned.a.out_channels == 3 and pruned.b.in_channels == 3
    assert torch.equal(pruned.a.weight, model.a.weight[[0, 1, 3]])
    x = torch.randn(8, 1, 8, 8)
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-6)


def test_refit_folds_a_duplicate_channel_where_zeroing_cannot():
    model = _two_conv()
    with torch.no_grad():  # channel 2 copies channel 1 and matters least to b, but not nothing
        model.a.weight[2] = model.a.weight[1]
        model.a.bias[2] = model.a.bias[1]
        model.b.weight[:, 2] *= 0.05
    example = torch.randn(1, 1, 8, 8)
    result = C.pruning.prune_model(model, example, C.PruneConfig(round_to=1, criterion="thinet", ratio=0.25), data=_data())
    assert torch.equal(result.model.a.weight, model.a.weight[[0, 1, 3]])

    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(result.model(x), reference, rtol=1e-4, atol=1e-5)
        oracle = copy.deepcopy(model)
        C.pruning.zero_channels_(oracle, result.graph, result.removed)
        assert (oracle(x) - reference).abs().max() > 1e-3  # plain zeroing loses the channel
    # b's weights on channel 1 absorbed channel 2's: W'[:, 1] = W[:, 1] + W[:, 2]
    torch.testing.assert_close(result.model.b.weight[:, 1], model.b.weight[:, 1] + model.b.weight[:, 2],
                               rtol=1e-4, atol=1e-5)
    errors = result.report.config["after_removal"]["refit"]["b"]
    assert errors["rel_error_before"] > 1e-3
    assert errors["rel_error_after"] < 1e-5 < errors["rel_error_before"]


class ConvFlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3, padding=1, stride=2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.a(x)).flatten(1))


@pytest.mark.parametrize("criterion", ["thinet", "lasso"])
def test_linear_consumer_after_flatten(criterion):
    """A Linear reads 16 features per channel; the channel whose 16 weights are 0 goes."""
    torch.manual_seed(0)
    model = ConvFlattenLinear().eval()
    with torch.no_grad():
        model.fc.weight.view(5, 4, 16)[:, 1] = 0
    result = C.pruning.prune_model(model, torch.randn(1, 1, 8, 8), C.PruneConfig(round_to=1, criterion=criterion, ratio=0.25),
                           data=_data())
    assert torch.equal(result.model.a.weight, model.a.weight[[0, 2, 3]])
    assert result.model.fc.in_features == 48 and "fc" in result.report.config["after_removal"]["refit"]
    x = torch.randn(8, 1, 8, 8)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-6)


def test_thinet_greedy_accounts_for_cancellation():
    """Columns 0 and 1 nearly cancel: removing both changes the sum less than removing column 2."""
    v, w = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    z = np.stack([v, -0.9 * v, 0.95 * w], axis=1)
    assert thinet_order(z).tolist() == [1, 0, 2]  # by norms alone it would be [1, 2, 0]


def test_lasso_channel_selection_finds_the_support():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8))
    y = a[:, [1, 4, 6]] @ np.array([2.0, -3.0, 1.5])
    mask = lasso_channel_selection(a, y, keep=3)
    assert np.flatnonzero(mask).tolist() == [1, 4, 6]
    assert lasso_channel_selection(a, y, keep=8).all()


def test_conv_patches_equal_unfold():
    conv = nn.Conv2d(3, 2, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    x = torch.randn(2, 3, 7, 6)
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # (N, C*K, L)
    ho, wo = conv(x).shape[2:]
    n, oh, ow = torch.tensor([0, 1, 1]), torch.tensor([0, 2, ho - 1]), torch.tensor([wo - 1, 1, 0])
    patches = conv_patches(x, conv, n, oh, ow)
    expected = cols[n, :, oh * wo + ow].reshape(3, 3, -1)
    torch.testing.assert_close(patches, expected)


@pytest.mark.parametrize("criterion", ["thinet", "lasso"])
def test_resnet20_on_digits(criterion):
    data = C.digits_dataset("train", channels=1)
    assert data[0][0].shape == (1, 32, 32)
    torch.manual_seed(0)
    model = models.create_model("resnet20", in_chans=1).eval()
    config = C.PruneConfig(round_to=1, criterion=criterion, target_flops=0.5, calib_batches=2, calib_batch_size=16,
                           criterion_options={"points": 512})  # fewer rows than a 64x9 layer has weights: ridge path
    result = C.pruning.prune_model(model, torch.randn(1, 1, 32, 32), config, data=data)
    assert result.report.flops_ratio <= 0.5
    x = torch.stack([data[i][0] for i in range(4)])
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape == (4, 10)
    for name, module in result.model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert (module.weight.flatten(1).abs().sum(1) > 0).all(), f"all-zero filter left in {name}"
    refit = result.report.config["after_removal"]["refit"]
    assert refit and all(e["rel_error_after"] <= e["rel_error_before"] + 1e-9 for e in refit.values())


@pytest.mark.parametrize("criterion,options,name", [
    ("thinet", {"points": 0}, "points"), ("lasso", {"points": 0}, "points"),
    ("lasso", {"alphas": 1}, "alphas"), ("lasso", {"keep_ratio": 1.5}, "keep_ratio"),
])
def test_bad_options(criterion, options, name):
    with pytest.raises(ValueError, match=f"option {name} must be"):
        C.PruneConfig(round_to=1, criterion=criterion, ratio=0.25, criterion_options=options)


def test_data_is_required():
    with pytest.raises(ValueError, match="needs calibration data"):
        C.pruning.prune_model(_two_conv(), torch.randn(1, 1, 8, 8), C.PruneConfig(round_to=1, criterion="thinet", ratio=0.25))
