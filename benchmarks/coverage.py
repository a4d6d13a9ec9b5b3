"""Which torchvision models the pruning engine handles: prune each at ratio 0.3, check parity.

    python benchmarks/coverage.py                  # representative subset (about a minute)
    python benchmarks/coverage.py --slow --json coverage.json   # every torchvision model

Every model is built with random weights (nothing is downloaded), its BatchNorm statistics and
constant initialisations are randomised so that every channel matters, and it is pruned with
the ``random`` criterion at ``ratio`` (``allow_renormalization=False``). The pruned model must
pass ``compressor.testing.compare_with_oracle`` on a random input, the check the tests use: equal
the masked oracle (the same channels zeroed), with channels removed, the same output shapes,
fewer parameters and FLOPs, and consistent layers; a model that fails any of these is reported as
``parity-failed`` with the problems in ``detail``. The pruned model must then run one train-mode
forward and backward pass on a batch of two (auxiliary heads that only run in training, such as
GoogLeNet's and Inception-v3's, must fit the pruned trunk), else it is ``train-failed``. Detection
models cannot be traced as a whole; their ``backbone`` is pruned on the image tensor (and trained
one step), then the full detector is run with the pruned backbone and must give outputs of the
same structure.

Prints a Markdown table (model, outcome, removable channels, parameters after/before, blocked
channel groups and the top reason) and optionally writes the rows as JSON (schema_version 1).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import compressor as C
from compressor.testing import (
    ATOL_REL, RTOL, compare_with_oracle, prune_with_oracle, randomize_, run_eval, structure_problems, tensors_of,
)
from models import create_model

SCHEMA_VERSION = 1
WEIGHT_SEED = 1  # randomize_'s seed, as in tests/compressor/test_prune_torchvision.py
PROTECTED = "model output (protected)"

# Representative subset: one or two of every family (the default test run covers these too).
FAST_CLASSIFICATION = (
    "resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121",
    "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "resnext50_32x4d", "googlenet", "mnasnet0_5",
    "convnext_tiny", "alexnet", "vgg11_bn", "swin_t", "vit_b_32", "maxvit_t", "efficientnet_v2_s", "inception_v3",
)
FAST_SEGMENTATION = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
FAST_DETECTION = ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")

# Detectors resize their images to min_size..max_size; 320 keeps the full-model run cheap.
SMALL_DETECTOR_KWARGS = {"min_size": 320, "max_size": 320}
DETECTION_SIZE = (3, 320, 320)
SEGMENTATION_SIZE = (3, 224, 224)


def input_size(name: str) -> tuple[int, int, int]:
    return (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


@dataclass
class CoverageRow:
    model: str
    task: str  # classification | segmentation | detection (backbone)
    input_chw: tuple[int, int, int]
    status: str  # "pruned" | "refused" | "parity-failed" | "train-failed" | "error"
    detail: str  # refusal / failure message, or "" when pruned
    removable_channels: int = 0
    producer_channels: int = 0
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    parity_max_abs_err: float = math.nan
    oracle_max_abs: float = math.nan
    blocked_groups: int = 0
    groups: int = 0
    blocked_channels_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def removable_pct(self) -> float:
        return 100.0 * self.removable_channels / self.producer_channels if self.producer_channels else 0.0


# ---- one model ----------------------------------------------------------------------------------


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """torchvision model ``name`` in eval mode, random weights under which every channel matters."""
    torch.manual_seed(0)
    return randomize_(create_model(f"torchvision:{name}", **kwargs).eval(), seed=WEIGHT_SEED)


def _short(reason: str) -> str:
    """A reason without node/layer names, so that equal causes count together."""
    reason = re.sub(r" at (node|layer) '.*$", "", reason)
    return re.sub(r"^(unsupported op): node '[^']*' \((.*)\)$", r"\1: \2", reason)


def record_graph(row: CoverageRow, graph: C.DependencyGraph) -> None:
    """Fill ``row``'s channel counts, channel groups and block reasons from ``graph``."""
    row.removable_channels = int(graph.removable.size)
    row.producer_channels = int(graph.producer.sum())
    row.groups = len(graph.groups)
    row.blocked_groups = sum(1 for g in graph.groups if g.blocked_reasons and g.removable.size == 0)
    counts: dict[str, int] = {}
    for reason, n in graph.unsupported.items():
        counts[_short(reason)] = counts.get(_short(reason), 0) + n
    row.blocked_channels_by_reason = dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def prune_and_check(model: nn.Module, x: torch.Tensor, ratio: float, seed: int, row: CoverageRow,
                    config: C.PruneConfig | None = None) -> nn.Module:
    """Prune ``model`` (eval), check it against the masked oracle and fill ``row``; returns the
    pruned model (``model`` itself when the engine refuses it).

    ``config`` replaces the default one (the ``random`` criterion at ``ratio`` with ``seed``, no
    renormalisation); a refusal (``TraceError``, ``UnprunableModelError``,
    ``UnreachableTargetError``) is recorded as ``refused`` with the error's class and message.
    """

    config = config or C.PruneConfig(criterion="random", ratio=ratio, allow_renormalization=False, seed=seed)
    try:
        pruned = prune_with_oracle(model, x, config)
    except (C.TraceError, C.UnprunableModelError, C.UnreachableTargetError) as exc:
        row.status, row.detail = "refused", f"{type(exc).__name__}: {exc}"
        return model
    check = compare_with_oracle(pruned, x)
    row.status = "pruned" if check.ok else "parity-failed"
    row.detail = "; ".join(check.problems)
    row.parity_max_abs_err, row.oracle_max_abs = check.parity.max_abs_err, check.parity.expected_max_abs
    row.params_before, row.params_after = check.params_before, check.params_after
    row.flops_before, row.flops_after = check.flops_before, check.flops_after
    record_graph(row, pruned.graph)
    return pruned.pruned


def train_step_problem(model: nn.Module, x: torch.Tensor) -> str:
    """Run one train-mode forward and backward pass (every output in the loss, auxiliary heads'
    too); '' when it runs and every gradient is finite, else what went wrong. ``x`` needs a batch
    of two or more: train-mode BatchNorm needs more than one value per channel."""
    model.train()
    try:
        loss = sum(t.float().square().mean() for t in tensors_of(model(x)) if t.is_floating_point())
        loss.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            return f"non-finite gradients in {bad[:3]}"
    except Exception as exc:  # reported, not raised: a sweep records every model
        return f"{type(exc).__name__}: {exc}"
    finally:
        model.eval()
        model.zero_grad(set_to_none=True)
    return ""


def _check_train_step(row: CoverageRow, model: nn.Module, size: tuple[int, ...]) -> None:
    """Mark a pruned ``row`` ``train-failed`` when ``model`` does not run a train step at ``size``."""
    if row.status == "pruned":
        problem = train_step_problem(model, torch.randn(2, *size, generator=torch.Generator().manual_seed(1)))
        if problem:
            row.status, row.detail = "train-failed", problem


def evaluate(name: str, task: str, ratio: float = 0.3, seed: int = 1) -> CoverageRow:
    """Build torchvision model ``name`` (random weights), prune it, check parity."""

    t0 = time.perf_counter()
    size = {"classification": input_size(name), "segmentation": SEGMENTATION_SIZE}.get(task, DETECTION_SIZE)
    row = CoverageRow(name, task, size, "error", "")
    try:
        kwargs = SMALL_DETECTOR_KWARGS if task == "detection" and not name.startswith("ssd") else {}
        model = build_model(name, **kwargs)
        x = torch.randn(1, *size)
        if task != "detection":
            _check_train_step(row, prune_and_check(model, x, ratio, seed, row), size)
        else:
            try:  # detectors take a list of images and branch on it: fx cannot trace them whole
                C.build_dependency_graph(model, ([x[0]],))
                whole = "whole model traceable"
            except C.TraceError:
                whole = "whole model: TraceError"
            pruned_backbone = prune_and_check(model.backbone, x, ratio, seed, row)
            _check_train_step(row, pruned_backbone, size)
            row.task = "detection (backbone)"
            row.detail = row.detail or whole
            if row.status == "pruned":
                detector = copy.deepcopy(model)
                detector.backbone = pruned_backbone
                images = [torch.rand(*DETECTION_SIZE), torch.rand(3, 256, 300)]
                problems = structure_problems(run_eval(detector, images), run_eval(model, images), "detections")
                if problems:
                    row.status = "parity-failed"
                    row.detail = "detector output structure changed: " + "; ".join(problems)
    except Exception as exc:  # a coverage report records failures instead of stopping at the first
        row.status, row.detail = "error", f"{type(exc).__name__}: {exc}"
    row.seconds = time.perf_counter() - t0
    return row


def model_list(slow: bool) -> list[tuple[str, str]]:
    import torchvision.models as tvm  # optional SDK: torchvision

    if not slow:
        return ([(n, "classification") for n in FAST_CLASSIFICATION] + [(n, "segmentation") for n in FAST_SEGMENTATION]
                + [(n, "detection") for n in FAST_DETECTION])
    return ([(n, "classification") for n in tvm.list_models(module=tvm)]
            + [(n, "segmentation") for n in tvm.list_models(module=tvm.segmentation)]
            + [(n, "detection") for n in tvm.list_models(module=tvm.detection)])


# ---- report -------------------------------------------------------------------------------------


def _top_reason(row: CoverageRow) -> str:
    other = {r: n for r, n in row.blocked_channels_by_reason.items() if r != PROTECTED}
    if not other:
        return "only the model output"
    reason, n = max(other.items(), key=lambda kv: kv[1])
    more = f" (+{len(other) - 1} other)" if len(other) > 1 else ""
    return f"{n} ch: {reason}{more}"


def markdown(rows: list[CoverageRow], ratio: float) -> str:
    lines = [
        f"| model | task | status (ratio {ratio:g}) | removable channels | params after / before | "
        "FLOPs after / before | blocked groups | top block reason (besides the output) |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r.status == "pruned":
            status = "pruned, parity OK, trains" + (f" ({r.detail})" if r.detail else "")
        else:
            status = f"{r.status}: {r.detail.splitlines()[0][:120]}" if r.detail else r.status
        if r.producer_channels:
            cells = (f"{r.removable_pct:.1f}%", f"{r.params_after / 1e6:.2f}M / {r.params_before / 1e6:.2f}M",
                     f"{r.flops_after / r.flops_before:.3f}", f"{r.blocked_groups}/{r.groups}", _top_reason(r))
        else:
            cells = ("-", "-", "-", "-", "-")
        lines.append(f"| {r.model} | {r.task} | {status} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torchvision  # optional SDK: torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", action="store_true", help="every torchvision model, not the representative subset")
    parser.add_argument("--models", nargs="+", help="only these torchvision names (any task)")
    parser.add_argument("--ratio", type=float, default=0.3, help="fraction of each channel group removed")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random criterion")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = model_list(args.slow or bool(args.models))
    if args.models:
        known = {n for n, _ in cases}
        unknown = sorted(set(args.models) - known)
        if unknown:
            parser.error(f"unknown torchvision models {unknown}")
        cases = [(n, t) for n, t in cases if n in args.models]
    rows = []
    t0 = time.perf_counter()
    for name, task in cases:
        row = evaluate(name, task, args.ratio, args.seed)
        print(f"{name}: {row.status} {row.detail[:100]} ({row.seconds:.1f}s)", file=sys.stderr, flush=True)
        rows.append(row)
    total = time.perf_counter() - t0
    print(markdown(rows, args.ratio))
    if args.json:
        payload = {"schema_version": SCHEMA_VERSION, "ratio": args.ratio, "seed": args.seed,
                   "criterion": "random", "rtol": RTOL, "atol_rel": ATOL_REL, "total_seconds": total,
                   "environment": environment(),
                   "rows": [{**asdict(r), "removable_pct": r.removable_pct} for r in rows]}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1)
    return 0 if all(r.status in ("pruned", "refused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
