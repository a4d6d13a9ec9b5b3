"""The built-in example (``compressor demo``): prune, save, reload in a fresh process, verify.

It uses the zoo's CIFAR ResNet-56 with random weights: it shows the engine, not accuracy
(training and evaluation come with the pipeline).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from ._api import prune_model
from ._config import PruneConfig
from ._cost import count_cost
from ._serialize import save_model

_RELOAD = """
import sys, torch, compressor
model = compressor.load_model(sys.argv[1]).eval()
x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    torch.save(model(x), sys.argv[3])
"""


def run_demo(output: Path) -> int:
    from models import create_model

    torch.manual_seed(0)
    model = create_model("resnet56").eval()
    example = torch.randn(8, 3, 32, 32)
    config = PruneConfig(criterion="l2", target_flops=0.5)
    result = prune_model(model, example[:1], config)
    before, after = count_cost(model, example[:1]), count_cost(result.model, example[:1])
    out = save_model(result.model, output / "resnet56_half")
    with torch.no_grad():
        expected = result.model(example)
    torch.save(example, output / "input.pt")
    subprocess.run([sys.executable, "-c", _RELOAD, str(out), str(output / "input.pt"), str(output / "reloaded.pt")],
                   check=True)
    reloaded = torch.load(output / "reloaded.pt", weights_only=True)
    same = torch.allclose(expected, reloaded, rtol=1e-5, atol=1e-6)
    print("resnet56 (random weights), l2, target_flops=0.5 at 3x32x32:")
    print(f"  params {before.params:,} -> {after.params:,} ({after.params / before.params:.1%})")
    print(f"  FLOPs  {before.flops / 1e6:.1f}M -> {after.flops / 1e6:.1f}M ({after.macs / before.macs:.1%})")
    print(f"  TRM at batch 64: {before.trm_bytes(64) / 2**20:.1f} MiB -> {after.trm_bytes(64) / 2**20:.1f} MiB (theoretical)")
    print(f"  graph {result.report.seconds['graph']:.2f}s, selection {result.report.seconds['select']:.2f}s, "
          f"surgery {result.report.seconds['surgery']:.2f}s")
    print(f"  saved to {out}/; reloaded in a fresh process: outputs {'identical' if same else 'DIFFER'}")
    return 0 if same else 1
