"""The speed guard of `compressor prune`: pruned against unpruned, interleaved, on the target runtime."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compressor.app._speed_guard import speed_check
from benchmarks._timing import TimingConfig

TIMING = TimingConfig(warmup=3, min_runs=30, min_seconds=0.5, max_seconds=3.0)


def convnet(width: int, useless: int = 0) -> nn.Module:
    """Two 3x3 convs at ``width``; ``useless`` adds that many no-FLOP but slow elementwise passes."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
            self.fc = nn.Linear(width, 10)

        def forward(self, x):
            x = torch.relu(self.b(torch.relu(self.a(x))))
            for _ in range(useless):  # transcendental work the FLOPs counter does not see
                x = x + 1e-3 * torch.sin(torch.exp(-x * x))
            return self.fc(x.mean((2, 3)))

    return Net().eval()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_guard_warns_on_a_slower_candidate_and_not_on_a_faster_one(runtime):
    torch.manual_seed(0)
    base, faster, slower = convnet(64), convnet(32), convnet(32, useless=40)
    fast, = speed_check(base, faster, (3, 32, 32), [runtime], theoretical=3.5, batch_size=2, threads=1,
                        alignment=16, timing=TIMING)
    slow, = speed_check(base, slower, (3, 32, 32), [runtime], theoretical=3.5, batch_size=2, threads=1,
                        alignment=16, timing=TIMING)
    assert fast.error is None and slow.error is None
    assert fast.practical > 1.5 and fast.verdict["level"] in ("ok", "inefficient")
    assert slow.practical < 1.0 and not slow.ok and slow.verdict["level"] == "slower"
    assert "slower" in slow.verdict["message"]
    assert slow.rounds >= 30 and slow.practical_ci[0] <= slow.practical <= slow.practical_ci[1]
    json.dumps(slow.to_dict())  # goes into summary.json as is


def test_guard_reports_a_runtime_it_cannot_use():
    check, = speed_check(convnet(16), convnet(8), (3, 16, 16), ["tensorrt"], theoretical=2.0, device="cuda",
                         timing=TIMING)
    assert check.error and not check.ok
