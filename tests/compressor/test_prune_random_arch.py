"""Property: on random architectures, physical pruning equals the masked oracle.

Hypothesis draws small networks (8-32 channels, 16x16 inputs) stacked from the building blocks
whose channel coupling the engine has to get right: conv-BN-ReLU, residual adds (identity or
projection shortcut), concatenation, depthwise-separable convs, grouped convs, squeeze-and-
excitation gates and ShuffleNet's channel shuffle, ending in avgpool -> flatten -> Linear. A random
selection of channels is pruned; the result must compute what the oracle (same channels zeroed)
computes, with strictly fewer parameters.
"""
from __future__ import annotations

import torch
from hypothesis import event, given, HealthCheck, note, settings, strategies as st
from torch import nn

import compressor as C
from compressor.testing import assert_parity, check_pruned, count_params, prune_with_oracle, randomize_, run_eval

WIDTHS = (8, 12, 16, 20, 24, 28, 32)  # multiples of 4, so that groups of 2 and 4 always divide
KINDS = ("conv", "residual", "concat", "dwsep", "grouped", "se", "shuffle")


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, cin: int, cout: int, projection: bool):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
                         if projection else nn.Identity())

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class Concat(nn.Module):
    def __init__(self, cin: int, c1: int, c2: int):
        super().__init__()
        self.a, self.b = conv_bn_relu(cin, c1, k=1), conv_bn_relu(cin, c2, k=3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


class SEGate(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, max(c // 4, 2), 1), nn.Conv2d(max(c // 4, 2), c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class ShuffleBlock(nn.Module):
    """1x1 conv, then ShuffleNet's channel shuffle with 2 groups (group width computed, not literal)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = conv_bn_relu(cin, cout, k=1)

    def forward(self, x):
        x = self.conv(x)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w)
        return torch.transpose(x, 1, 2).contiguous().view(n, -1, h, w)


class Net(nn.Module):
    def __init__(self, stem: int, blocks: list[nn.Module], width: int, classes: int = 10):
        super().__init__()
        self.stem = conv_bn_relu(3, stem)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


@st.composite
def architectures(draw) -> tuple[Net, list[str]]:
    """A random Net and a readable description of its blocks."""
    c = draw(st.sampled_from(WIDTHS))
    stem, blocks, desc = c, [], [f"stem 3->{c}"]
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(KINDS))
        if kind == "conv":
            cout, stride = draw(st.sampled_from(WIDTHS)), draw(st.sampled_from((1, 2)))
            blocks.append(conv_bn_relu(c, cout, stride=stride))
            desc.append(f"conv {c}->{cout} s{stride}")
        elif kind == "residual":
            projection = draw(st.booleans())
            cout = draw(st.sampled_from(WIDTHS)) if projection else c
            blocks.append(Residual(c, cout, projection))
            desc.append(f"residual {c}->{cout} {'projection' if projection else 'identity'}")
        elif kind == "concat":
            c1, c2 = draw(st.sampled_from((4, 8, 12, 16))), draw(st.sampled_from((4, 8, 12, 16)))
            blocks.append(Concat(c, c1, c2))
            desc.append(f"concat {c}->{c1}+{c2}")
            cout = c1 + c2
        elif kind == "dwsep":
            cout = draw(st.sampled_from(WIDTHS))
            blocks.append(nn.Sequential(conv_bn_relu(c, c, groups=c), conv_bn_relu(c, cout, k=1)))
            desc.append(f"dwsep {c}->{cout}")
        elif kind == "grouped":
            groups, cout = draw(st.sampled_from((2, 4))), draw(st.sampled_from(WIDTHS))
            blocks.append(conv_bn_relu(c, cout, groups=groups))
            desc.append(f"grouped conv {c}->{cout} g{groups}")
        elif kind == "se":
            cout = c
            blocks.append(SEGate(c))
            desc.append(f"se {c}")
        else:
            cout = draw(st.sampled_from(WIDTHS))
            blocks.append(ShuffleBlock(c, cout))
            desc.append(f"shuffle {c}->{cout}")
        c = cout
    return Net(stem, blocks, c), desc


targets = st.one_of(
    st.builds(lambda r: {"ratio": r}, st.sampled_from((0.2, 0.4, 0.6))),
    st.builds(lambda r: {"global_ratio": r}, st.sampled_from((0.3, 0.6))),
)


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(arch=architectures(), target=targets, seed=st.integers(0, 2**16))
def test_random_architecture_matches_masked_oracle(arch, target, seed):
    net, desc = arch
    note(" | ".join(desc))
    for kind in sorted({d.split()[0] for d in desc[1:]}):
        event(f"block: {kind}")
    model = randomize_(net.eval(), seed=seed)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    p = prune_with_oracle(model, x, C.PruneConfig(criterion="random", seed=seed,
                                                         allow_renormalization=False, **target))
    event(f"channels removed: {bool(p.removed.any())}")
    if p.removed.any():
        check_pruned(p, x)
    else:  # nothing selected (tiny groups round to 0): the model must come back unchanged
        assert count_params(p.pruned) == count_params(model)
        assert_parity(run_eval(p.pruned, x), run_eval(model, x))
