"""Which timm CNN families the pruning engine handles: prune each to half its FLOPs, check parity.

    python benchmarks/timm_sweep.py                   # the fast representative models (a few seconds)
    python benchmarks/timm_sweep.py --slow --threads 1 --json benchmarks/results/timm/results.json   # every family

One small model per timm CNN family (``MODELS``), built offline with ``pretrained=False`` and
``num_classes=10`` through ``models.create_model("timm:NAME")``, weights randomised as in
``benchmarks/coverage.py`` so that every channel matters, at the smallest square input it accepts
(64x64, or ``INPUT_SIZE``). Each is pruned with the ``random`` criterion to ``target_flops=0.5``
(``allow_renormalization=False``, so that the result must equal the masked oracle), the target a
user gives ``compressor prune``. Unlike a fixed ratio, a FLOPs target also shows the models whose
channels are mostly blocked: they end in an ``UnreachableTargetError`` that names the blocking ops,
where a ratio would remove a few channels and call them pruned.

Outcomes (``status``):

* ``pruned``: equal to the masked oracle (``compressor.testing.compare_with_oracle``), and one
  train-mode forward and backward pass of the pruned model runs on a batch of two;
* ``refused``: a ``TraceError``, ``UnprunableModelError`` or ``UnreachableTargetError``, whose
  class and message are in ``detail``; the channel groups and block reasons are still reported;
* ``parity-failed``: a silent wrong result (or no smaller model), problems in ``detail``;
* ``train-failed``: the pruned model does not run in train mode, the exception in ``detail``;
* ``error``: any other exception (an unnamed refusal).

Prints a Markdown table and optionally writes the rows as JSON (schema_version 1). Use
``--threads 1``: at these input sizes every op is tiny, and on a busy 2-core machine two threads
made the sweep 15-50x slower (19 s on one thread for all of ``MODELS``). The rows reuse
``benchmarks.coverage.CoverageRow`` with the family in ``task``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

import compressor as C
from benchmarks.coverage import CoverageRow, _top_reason, environment, prune_and_check, record_graph, train_step_problem
from compressor.testing import ATOL_REL, RTOL, randomize_
from models import create_model

SCHEMA_VERSION = 1
WEIGHT_SEED = 1  # randomize_'s seed, as in benchmarks/coverage.py
TARGET_FLOPS = 0.5
NUM_CLASSES = 10  # a small head: the classifier's outputs are protected either way
DEFAULT_INPUT = 64

# model -> family (timm's module), in the order; one small variant per family at least.
MODELS: dict[str, str] = {
    "efficientnet_b0": "efficientnet",
    "efficientnetv2_rw_t": "efficientnet (v2)",
    "tf_efficientnetv2_b0": "efficientnet (tf_, v2)",
    "tf_efficientnet_b0": "efficientnet (tf_)",
    "mobilenetv2_050": "mobilenetv2 (efficientnet)",
    "mobilenetv3_small_050": "mobilenetv3",
    "mobilenetv3_large_100": "mobilenetv3",
    "mobilenetv4_conv_small": "mobilenetv4 (mobilenetv5)",
    "lcnet_050": "lcnet (mobilenetv3)",
    "mnasnet_small": "mnasnet (efficientnet)",
    "ghostnet_050": "ghostnet",
    "regnetx_002": "regnet (x)",
    "regnety_002": "regnet (y)",
    "regnetz_b16": "regnet (z, byobnet)",
    "resnet18d": "resnet (d)",
    "resnext26ts": "resnext (byobnet)",
    "seresnet18": "resnet (se)",
    "rexnet_100": "rexnet",
    "repvgg_a0": "repvgg (byobnet)",
    "cs3darknet_focus_s": "cspnet (cspdarknet)",
    "cspresnet50": "cspnet (cspresnet)",
    "dla34": "dla",
    "dpn48b": "dpn",
    "hrnet_w18_small": "hrnet",
    "convnext_atto": "convnext",
    "efficientformer_l1": "efficientformer",
    "fastvit_t8": "fastvit",
}
# The default test run covers these: one per kind of block (depthwise + SE, norm-act, residual,
# TF "SAME" padding).
FAST = ("efficientnet_b0", "mobilenetv3_small_050", "lcnet_050", "regnetx_002", "resnet18d", "convnext_atto",
        "tf_efficientnet_b0")
# Models that do not run at 64x64: EfficientFormer's attention biases are sized for a 7x7 last stage.
INPUT_SIZE: dict[str, int] = {"efficientformer_l1": 224}


def input_size(name: str) -> tuple[int, int, int]:
    side = INPUT_SIZE.get(name, DEFAULT_INPUT)
    return (3, side, side)


def build_model(name: str) -> nn.Module:
    """timm model ``name`` in eval mode, random weights under which every channel matters."""
    torch.manual_seed(0)
    return randomize_(create_model(f"timm:{name}", num_classes=NUM_CLASSES).eval(), seed=WEIGHT_SEED)


def prune_config(seed: int = 1, target_flops: float = TARGET_FLOPS) -> C.PruneConfig:
    return C.PruneConfig(criterion="random", target_flops=target_flops, allow_renormalization=False, seed=seed)


def evaluate(name: str, seed: int = 1, target_flops: float = TARGET_FLOPS) -> CoverageRow:
    """Build timm model ``name``, prune it to ``target_flops``, check parity and a train step."""
    t0 = time.perf_counter()
    size = input_size(name)
    row = CoverageRow(name, MODELS.get(name, "timm"), size, "error", "")
    try:
        model = build_model(name)
        x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
        pruned = prune_and_check(model, x, 0.0, seed, row, config=prune_config(seed, target_flops))
        if row.status == "refused" and not row.detail.startswith("TraceError"):
            # the refusal came before a graph was returned: report what blocks from the graph itself
            record_graph(row, C.build_dependency_graph(model, x, allow_renormalization=False))
        elif row.status == "pruned":
            # a batch of two: train-mode BatchNorm needs more than one value per channel
            problem = train_step_problem(pruned, torch.randn(2, *size, generator=torch.Generator().manual_seed(1)))
            if problem:
                row.status, row.detail = "train-failed", problem
    except Exception as exc:  # a sweep records failures instead of stopping at the first
        row.status, row.detail = "error", f"{type(exc).__name__}: {exc}"
    row.seconds = time.perf_counter() - t0
    return row


# ---- report -------------------------------------------------------------------------------------


def _status_cell(r: CoverageRow) -> str:
    if r.status == "pruned":
        return "pruned, parity OK, trains"
    if r.status == "refused":  # the class and the first clause: the full message is in the JSON
        return "refused: " + r.detail.split(" (")[0].split(". ")[0][:140]
    return f"{r.status}: {r.detail.splitlines()[0][:120]}" if r.detail else r.status


def markdown(rows: list[CoverageRow], target_flops: float) -> str:
    lines = [
        f"| model | family | input | status (target_flops {target_flops:g}) | FLOPs after / before | "
        "params after / before | blocked groups | top block reason (besides the output) | s |",
        "|---|---|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if r.flops_before:
            flops = f"{r.flops_after / 1e6:.1f}M / {r.flops_before / 1e6:.1f}M ({r.flops_after / r.flops_before:.3f})"
            params = f"{r.params_after / 1e6:.2f}M / {r.params_before / 1e6:.2f}M"
        else:
            flops = params = "-"
        blocked = f"{r.blocked_groups}/{r.groups}" if r.groups else "-"
        reason = _top_reason(r) if r.groups else "-"
        side = r.input_chw[1]
        lines.append(f"| {r.model} | {r.task} | {side}x{side} | {_status_cell(r)} | {flops} | {params} | {blocked} "
                     f"| {reason} | {r.seconds:.1f} |")
    return "\n".join(lines)


def _environment() -> dict[str, Any]:
    import timm  # optional SDK: timm

    return {**environment(), "timm": timm.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", action="store_true", help="every family in MODELS, not the fast subset")
    parser.add_argument("--models", nargs="+", help=f"only these timm names (any of {', '.join(MODELS)})")
    parser.add_argument("--target-flops", type=float, default=TARGET_FLOPS, help="fraction of the FLOPs kept")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random criterion")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.models:
        unknown = sorted(set(args.models) - set(MODELS))
        if unknown:
            parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
        names = args.models
    else:
        names = list(MODELS) if args.slow else list(FAST)
    rows = []
    t0 = time.perf_counter()
    for name in names:
        row = evaluate(name, args.seed, args.target_flops)
        print(f"{name}: {row.status} {row.detail[:100]} ({row.seconds:.1f}s)", file=sys.stderr, flush=True)
        rows.append(row)
    total = time.perf_counter() - t0
    print(markdown(rows, args.target_flops))
    print(f"\n{len(rows)} models in {total:.0f} s", file=sys.stderr)
    if args.json:
        payload = {"schema_version": SCHEMA_VERSION, "target_flops": args.target_flops, "seed": args.seed,
                   "criterion": "random", "allow_renormalization": False, "num_classes": NUM_CLASSES,
                   "rtol": RTOL, "atol_rel": ATOL_REL, "total_seconds": total, "environment": _environment(),
                   "rows": [{**asdict(r), "family": r.task, "removable_pct": r.removable_pct} for r in rows]}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 0 if all(r.status in ("pruned", "refused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
