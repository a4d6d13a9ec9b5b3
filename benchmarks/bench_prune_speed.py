"""How long pruning takes: graph + selection + surgery for torchvision ResNet-50 to 50% FLOPs (L2).

    python benchmarks/bench_prune_speed.py --threads 2 --repeats 7 [--json out.json]

Prints the median (and min/max) of each phase over the repeats, after one warm-up run, with
torch's intra-op threads set explicitly. Goal (issue 2): under 0.5 s on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet50")
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import compressor
    from models import create_model, default_input_size

    torch.set_num_threads(args.threads)
    model = create_model(args.model).eval()
    x = torch.randn(1, *default_input_size(args.model))
    config = compressor.PruneConfig(criterion=args.criterion, target_flops=args.target_flops)
    compressor.prune_model(model, x, config, verify=False)  # warm-up: imports, allocator, fx caches
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = compressor.prune_model(model, x, config, verify=False)
        total = time.perf_counter() - t0
        runs.append({**result.report.seconds, "total": total})
    summary = {k: {"median_s": statistics.median(r[k] for r in runs), "min_s": min(r[k] for r in runs),
                   "max_s": max(r[k] for r in runs)} for k in runs[0]}
    out = {
        "schema_version": 1, "model": args.model, "criterion": args.criterion, "target_flops": args.target_flops,
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__, "cpu": platform.processor()
        or platform.machine(), "flops_ratio": result.report.flops_ratio, "phases": summary, "raw": runs,
    }
    for phase, s in summary.items():
        print(f"{phase:8s} median {s['median_s'] * 1000:7.1f} ms  (min {s['min_s'] * 1000:.1f}, max {s['max_s'] * 1000:.1f})")
    print(f"FLOPs kept: {result.report.flops_ratio:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
