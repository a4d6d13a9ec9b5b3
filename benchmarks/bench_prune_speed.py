"""How long ``compressor.prune`` takes: its phases, its first call, and Torch-Pruning at equal work.

    python benchmarks/bench_prune_speed.py --threads 2 --repeats 7 [--json out.json]

Phases of one ``prune_model`` call with the default verification (graph, select, surgery,
verify, cost, total), median (min/max) over the repeats after one warm-up call, and the first
call of a fresh process (imports, then the first call) measured in a subprocess.

    python benchmarks/bench_prune_speed.py --sweep [--models resnet50,mobilenet_v2] [--sizes 64,224]
        [--repeats 5] [--out benchmarks/results/prune_speed] [--resume]

``compressor.prune(model, x, "l2", ratio=0.3, round_to=1)`` against Torch-Pruning's
``BasePruner`` (L2 ``GroupMagnitudeImportance``, ``pruning_ratio=0.3``, the final classifier
in ``ignored_layers``, then ``step()``) on every torchvision classification model at each input
size: 30% of every layer's channels, classifier outputs kept (compressor always keeps the
model's outputs; ``exclude=(classifier,)`` would also keep its input features, which
Torch-Pruning prunes). Random weights, batch 1. Each round runs both, in alternating order,
after one warm-up call each; the medians and their ratio are reported. Torch-Pruning prunes in
place, so it gets a fresh ``deepcopy`` of the model before each call, outside its timing
(compressor's time includes its copy and its verification); the copy's time is recorded apart.
Each model and size runs in its own process (a crash or the out-of-memory killer costs one row;
``--resume`` keeps the rows already written). Torch-Pruning is a benchmark-only dependency (``pip install torch-pruning``); without it the
sweep prints ``skipped: torch-pruning not installed``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
import compressor
from benchmarks._env import collect_environment
from models import create_model, default_input_size
from importlib.metadata import PackageNotFoundError, version

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCHEMA_VERSION = 1
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "prune_speed"

_FIRST_CALL = """
import json, sys, time
t0 = time.perf_counter()
import torch, compressor
from models import create_model, default_input_size
t1 = time.perf_counter()
torch.set_num_threads({threads})
model = create_model({model!r}).eval()
x = torch.randn(1, *default_input_size({model!r}))
config = compressor.PruneConfig(**{config!r})
t2 = time.perf_counter()
first = compressor.pruning.prune_model(model, x, config)
t3 = time.perf_counter()
second = compressor.pruning.prune_model(model, x, config)
t4 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_call_s": t3 - t2, "second_call_s": t4 - t3,
                   "first_phases": first.report.seconds, "second_phases": second.report.seconds}}))
"""


def _summary(values: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)}


def phases(args: argparse.Namespace) -> None:

    torch.set_num_threads(args.threads)
    target = {"target_flops": args.target_flops} if args.target_flops is not None else {"ratio": args.ratio}
    config_kw = {"criterion": args.criterion, "round_to": 1, **target}
    model = create_model(args.model).eval()
    x = torch.randn(1, *default_input_size(args.model))
    config = compressor.PruneConfig(**config_kw)
    compressor.pruning.prune_model(model, x, config)  # warm-up: lazy imports, allocator
    runs = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = compressor.pruning.prune_model(model, x, config)
        wall = time.perf_counter() - t0
        runs.append({**result.report.seconds, "wall": wall})
    summary = {k: _summary([r[k] for r in runs]) for k in runs[0]}
    code = _FIRST_CALL.format(threads=args.threads, model=args.model, config=config_kw)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    first = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-2000:]}
    out = {
        "schema_version": SCHEMA_VERSION, "kind": "prune_phases", "model": args.model, "config": config_kw,
        "threads": args.threads, "repeats": args.repeats, "environment": collect_environment(),
        "flops_ratio": result.report.flops_ratio, "params_ratio": result.report.params_ratio,
        "phases": summary, "raw": runs, "first_call": first,
    }
    for phase, s in summary.items():
        print(f"{phase:8s} median {s['median_s'] * 1000:7.1f} ms  "
              f"(min {s['min_s'] * 1000:.1f}, max {s['max_s'] * 1000:.1f})")
    print(f"FLOPs kept: {result.report.flops_ratio:.3f}, params kept: {result.report.params_ratio:.3f}")
    if "error" in first:
        print(f"first call: failed: {first['error']}")
    else:
        print(f"fresh process: import {first['import_s']:.2f} s, first call {first['first_call_s'] * 1000:.0f} ms, "
              f"second call {first['second_call_s'] * 1000:.0f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


# ---- sweep against Torch-Pruning ------------------------------------------------------------------


def classifier_name(model: nn.Module) -> str:
    """The final classifier: the last Linear in module order, else the last conv (SqueezeNet)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)][-1]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ours(model: nn.Module, x: torch.Tensor) -> Callable[[], tuple[float, dict[str, Any]]]:

    config = compressor.PruneConfig(criterion="l2", ratio=0.3, round_to=1)

    def call() -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        result = compressor.pruning.prune_model(model, x, config)  # what compressor.prune(model, x, "l2", ratio=0.3) runs
        seconds = time.perf_counter() - t0
        return seconds, {"params_after": _params(result.model), "phases": result.report.seconds}

    return call


def _torch_pruning(model: nn.Module, x: torch.Tensor, classifier: str) -> Callable[[], tuple[float, dict[str, Any]]]:
    import torch_pruning as tp  # optional SDK: torch_pruning

    def call() -> tuple[float, dict[str, Any]]:
        c0 = time.perf_counter()
        target = copy.deepcopy(model)
        c1 = time.perf_counter()
        t0 = time.perf_counter()
        pruner = tp.pruner.BasePruner(target, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=0.3, ignored_layers=[target.get_submodule(classifier)])
        pruner.step()
        seconds = time.perf_counter() - t0
        return seconds, {"params_after": _params(target), "copy_s": c1 - c0}

    return call


def _measure(name: str, size: int, repeats: int) -> dict[str, Any]:
    import torchvision  # optional SDK: torchvision

    row: dict[str, Any] = {"model": name, "size": size, "load_avg_1m": os.getloadavg()[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, size, size)
    row["classifier"] = classifier = classifier_name(model)
    row["params_before"] = _params(model)
    tools = {"ours": _ours(model, x), "tp": _torch_pruning(model, x, classifier)}
    samples: dict[str, list[float]] = {k: [] for k in tools}
    extra: dict[str, list[dict[str, Any]]] = {k: [] for k in tools}
    for key, call in list(tools.items()):  # warm-up, and errors
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call()
        except Exception as exc:  # noqa: BLE001  (a model one tool cannot prune is a result)
            row[f"{key}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            del tools[key]
    for r in range(repeats):
        order = list(tools) if r % 2 == 0 else list(reversed(tools))
        for key in order:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seconds, info = tools[key]()
            samples[key].append(seconds)
            extra[key].append(info)
    for key in tools:
        row[f"{key}_s"] = samples[key]
        row[f"{key}_median_s"] = statistics.median(samples[key])
        row[f"{key}_params_after"] = extra[key][-1]["params_after"]
    if "ours" in tools:
        phases_ = extra["ours"][0]["phases"]
        row["ours_phases_median_s"] = {k: statistics.median(e["phases"][k] for e in extra["ours"]) for k in phases_}
    if "tp" in tools:
        row["tp_copy_median_s"] = statistics.median(e["copy_s"] for e in extra["tp"])
    if "ours" in tools and "tp" in tools:
        row["ratio"] = row["ours_median_s"] / row["tp_median_s"]
    return row


def _write(out: Path, payload: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out / "results.json")
    (out / "summary.md").write_text(summary_markdown(payload))


def summary_markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    env = payload["environment"]
    loads = [r["load_avg_1m"] for r in rows if r.get("load_avg_1m") is not None] or [float("nan")]
    lines = [
        "# compressor.prune against Torch-Pruning",
        "",
        f"Equal work: 30% of each layer's channels (L2), classifier outputs kept, random weights, batch 1, "
        f"{payload['threads']} threads, median of {payload['repeats']} interleaved rounds after a warm-up. "
        f"compressor: `prune_model(model, x, PruneConfig('l2', ratio=0.3, round_to=1))` (copy + verification "
        f"included). Torch-Pruning {payload['torch_pruning']}: `BasePruner(...).step()` on a fresh deepcopy "
        "(the copy not timed).",
        "",
        f"Machine: {env.get('cpu_model')}, {env.get('cpu_cores_available')} cores; torch "
        f"{env.get('versions', {}).get('torch')}; git {str(env.get('git_sha'))[:10]}"
        f"{' (dirty)' if env.get('git_dirty') else ''}; 1-minute load average before each model "
        f"{min(loads):.1f}-{max(loads):.1f} "
        "(other processes share the machine: read the ratios, which interleaving protects, more than the ms).",
        "",
    ]
    import torchvision  # optional SDK: torchvision

    every = torchvision.models.list_models(module=torchvision.models)
    lines.append(f"Models: {len({r['model'] for r in rows})} of the {len(every)} torchvision classification "
                 f"models, at {', '.join(str(s) for s in payload['sizes'])} px.")
    lines.append("")
    compared = [r for r in rows if "ratio" in r]
    for size in sorted({r["size"] for r in rows}):
        at = [r for r in compared if r["size"] == size]
        if at:
            slower = [r["model"] for r in at if r["ratio"] > 1.0]
            ratios = sorted(r["ratio"] for r in at)
            lines.append(f"- {size}x{size}: {len(at)} models compared; compressor slower on {len(slower)}"
                         f"{' (' + ', '.join(slower) + ')' if slower else ''}; median ratio "
                         f"{statistics.median(ratios):.2f} (max {ratios[-1]:.2f}).")
    lines += ["", "| model | size | compressor ms | Torch-Pruning ms | ratio | params after (ours / TP) | "
              "graph | select | surgery | verify |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "ratio" not in r:
            errors = "; ".join(f"{k[:-6] or 'both'}: {v}" for k, v in r.items() if k.endswith("error"))
            lines.append(f"| {r['model']} | {r['size']} | | | | | | | | {errors[:120]} |")
            continue
        ph = r["ours_phases_median_s"]
        lines.append(
            f"| {r['model']} | {r['size']} | {r['ours_median_s'] * 1000:.0f} | {r['tp_median_s'] * 1000:.0f} | "
            f"{r['ratio']:.2f} | {r['ours_params_after'] / 1e6:.2f}M / {r['tp_params_after'] / 1e6:.2f}M | "
            f"{ph['graph'] * 1000:.0f} | {ph['select'] * 1000:.0f} | {ph['surgery'] * 1000:.0f} | "
            f"{ph['verify'] * 1000:.0f} |")
    return "\n".join(lines) + "\n"


def _torch_pruning_version(module: Any) -> str:
    try:
        installed = version("torch-pruning")
    except PackageNotFoundError:
        installed = "?"
    declared = getattr(module, "__version__", "?")
    return installed if declared == installed else f"{installed} (module __version__ {declared})"


def _measure_apart(name: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    """One model at one size in its own process: a crash, a leak or the OOM killer costs one row."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-one", name, "--sizes", str(size),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout_per_model)
    except subprocess.TimeoutExpired:
        return {"model": name, "size": size, "load_avg_1m": load, "error": f"more than {args.timeout_per_model} s"}
    if proc.returncode != 0:
        killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        return {"model": name, "size": size, "load_avg_1m": load,
                "error": f"exit code {proc.returncode}{killed}: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_one(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    print(json.dumps(_measure(args.measure_one, int(args.sizes), args.repeats)))


def sweep(args: argparse.Namespace) -> None:
    try:
        import torch_pruning  # optional SDK: torch_pruning
    except ImportError:
        print("skipped: torch-pruning not installed")
        return
    import torchvision  # optional SDK: torchvision


    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    payload: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "prune_speed_sweep", "threads": args.threads,
        "repeats": args.repeats, "sizes": sizes, "models": names,
        "torch_pruning": _torch_pruning_version(torch_pruning), "environment": collect_environment(),
        "rows": [],
    }
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if args.resume and (out / "results.json").exists():
        done = {(r["model"], r["size"]): r for r in json.loads((out / "results.json").read_text())["rows"]}
    for name in names:
        for size in sizes:
            row = done.get((name, size)) or _measure_apart(name, size, args)
            payload["rows"].append(row)
            _write(out, payload)
            if "ratio" in row:
                print(f"{name:24s} {size:4d}  ours {row['ours_median_s'] * 1000:7.1f} ms  "
                      f"tp {row['tp_median_s'] * 1000:7.1f} ms  ratio {row['ratio']:.2f}", flush=True)
            else:
                errors = "; ".join(f"{k}: {v}" for k, v in row.items() if k.endswith("error"))
                print(f"{name:24s} {size:4d}  {errors}", flush=True)
    print(f"wrote {out / 'results.json'} and {out / 'summary.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="torchvision:resnet50", help="phases: the zoo model")
    parser.add_argument("--ratio", type=float, default=0.3, help="phases: share of each layer's channels removed")
    parser.add_argument("--target-flops", type=float, default=None, help="phases: a FLOPs target instead of --ratio")
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="phases: write the results here")
    parser.add_argument("--sweep", action="store_true", help="compare with Torch-Pruning on torchvision models")
    parser.add_argument("--models", help="sweep: comma-separated torchvision names (default: all classification)")
    parser.add_argument("--sizes", default="64,224", help="sweep: input sizes")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="sweep: results directory")
    parser.add_argument("--resume", action="store_true", help="sweep: keep the rows already in --out")
    parser.add_argument("--timeout-per-model", type=float, default=1800, help="sweep: seconds per model and size")
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)  # the sweep's child process
    args = parser.parse_args()
    if args.measure_one:
        measure_one(args)
    elif args.sweep:
        sweep(args)
    else:
        phases(args)


if __name__ == "__main__":
    main()
