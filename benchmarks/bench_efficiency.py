"""Is the default pruned model faster where it ships? Practical against theoretical speedup.

    python benchmarks/bench_efficiency.py --threads 2 --output benchmarks/results/efficiency

For every model it runs the **default** prune command with only ``--runtime`` given
(``compressor prune --model M --criterion l2 --target-flops F --runtime R``: channel alignment
``auto`` for that runtime), and the same with ``--round-to 1`` (no alignment, the old default).
Then, per runtime and batch size, it times the unpruned model, the default pruned model and the
``--round-to 1`` one in interleaved rounds in one run (the harness's own ``interleaved`` loop
and paired-ratio statistics: median of per-round ratios with a bootstrap CI), and reports the
theoretical (FLOPs) speedup, the practical speedup [CI], the efficiency and the alignment chosen.

Models: torchvision ResNet-50, MobileNetV2, MobileNetV3-Large and EfficientNet-B0 at 50% of
their FLOPs (224x224), and the zoo's VGG-16-BN (CIFAR, 32x32) at 1/6 of its FLOPs (the 6.03x of
"FALF ConvNets: Fatuous auxiliary loss based filter-pruning for efficient deep CNNs"). Random
weights (only speed matters); denormals are flushed by both runtimes; onnxruntime's spinning is
off (three sessions take turns); threads are set explicitly.

Where a cell's efficiency is under 0.95, ``--profile`` (default on) also records where the time
goes: onnxruntime's per-node profile and OpenVINO's per-node performance counters, summed by op
type, for the unpruned and the default pruned model at that batch size.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from compressor.app.cli import main as compressor_main
from compressor.deploy import export_onnx, ExportConfig, load_model
from benchmarks._stats import bootstrap_median_ci, paired_speedup
from benchmarks._timing import flush_denormals, interleaved, TimingConfig
from runtimes import get_runtime, package_versions, SessionConfig
from models import create_model
from benchmarks._env import collect_environment
from compressor.common.files import atomic_write_bytes

MODELS = {
    "resnet50": ("torchvision:resnet50", 0.5, (3, 224, 224)),
    "mobilenet_v2": ("torchvision:mobilenet_v2", 0.5, (3, 224, 224)),
    "mobilenet_v3_large": ("torchvision:mobilenet_v3_large", 0.5, (3, 224, 224)),
    "efficientnet_b0": ("torchvision:efficientnet_b0", 0.5, (3, 224, 224)),
    "vgg16_bn_cifar": ("vgg16_bn_cifar", 1 / 6, (3, 32, 32)),
}
SCHEMA_VERSION = 1
GOAL = 0.95


def prune_cli(spec: str, target: float, out: Path, threads: int, *, runtime: str | None = None,
              round_to: str | None = None) -> dict[str, Any]:
    """Run ``compressor prune`` as a user would; returns its summary.json."""
    argv = ["prune", "--model", spec, "--criterion", "l2", "--target-flops", f"{target:.6f}", "--output", str(out),
            "--threads", str(threads), "--quiet", "--no-speed-check"]
    if runtime:
        argv += ["--runtime", runtime]
    if round_to:
        argv += ["--round-to", round_to]
    code = compressor_main(argv)
    if code != 0:
        raise RuntimeError(f"compressor {' '.join(argv)} exited {code}")
    return json.loads((out / "summary.json").read_text())


def export(model: Any, size: tuple[int, ...], path: Path) -> Path:
    import torch  # optional SDK: torch


    example = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    return export_onnx(model.eval(), example, path, ExportConfig(exporter="torchscript")).path


def time_cell(runtime: str, paths: dict[str, Path], size: tuple[int, ...], batch: int, threads: int,
              timing: Any) -> dict[str, Any]:
    """Interleaved timing of every model on one runtime at one batch size; speedups against 'unpruned'."""

    rt = get_runtime(runtime, allow_spinning=False) if runtime == "onnxruntime" else get_runtime(runtime)
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    with contextlib.ExitStack() as stack:
        sessions = {name: stack.enter_context(rt.load(p, SessionConfig(threads=threads))) for name, p in paths.items()}
        samples = interleaved({name: (lambda s=s: s.run(x)) for name, s in sessions.items()}, timing)
    out: dict[str, Any] = {"rounds": len(samples["unpruned"])}
    for name, ms in samples.items():
        out[name] = {"median_ms": float(np.median(ms)), "median_ci_ms": list(bootstrap_median_ci(ms))}
        if name != "unpruned":
            stats = paired_speedup(samples["unpruned"], ms)
            out[name].update(speedup=stats.speedup_median, speedup_ci=list(stats.speedup_ci))
    return out


def profile(runtime: str, path: Path, size: tuple[int, ...], batch: int, threads: int, runs: int = 20) -> dict[str, float]:
    """Milliseconds per call by op type, from the runtime's own profiler."""
    x = np.random.default_rng(0).standard_normal((batch, *size)).astype(np.float32)
    by_type: dict[str, float] = defaultdict(float)
    if runtime == "onnxruntime":
        import onnxruntime as ort  # optional SDK: onnxruntime

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        options.enable_profiling = True
        with tempfile.TemporaryDirectory() as tmp:
            options.profile_file_prefix = str(Path(tmp) / "prof")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            for _ in range(3):
                session.run(None, {name: x})
            trace = json.loads(Path(session.end_profiling()).read_text())
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for _ in range(runs):
                session.run(None, {name: x})
            trace = json.loads(Path(session.end_profiling()).read_text())
        for event in trace:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                by_type[event["args"].get("op_name", "?")] += event["dur"] / 1000.0 / runs
    else:
        import openvino as ov  # optional SDK: openvino

        core = ov.Core()
        compiled = core.compile_model(str(path), "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads,
                                                          "CPU_DENORMALS_OPTIMIZATION": True,
                                                          "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        for _ in range(3):
            request.infer({0: x})
        totals: dict[str, float] = defaultdict(float)
        for _ in range(runs):
            request.infer({0: x})
            for info in request.profiling_info:
                totals[info.node_type] += info.real_time.total_seconds() * 1000.0
        by_type = {k: v / runs for k, v in totals.items()}
    return dict(sorted(by_type.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=4.0)
    parser.add_argument("--max-seconds", type=float, default=25.0)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/efficiency"))
    args = parser.parse_args(argv)

    import torch  # optional SDK: torch


    torch.set_num_threads(args.threads)
    timing = TimingConfig(warmup=3, min_runs=15, min_seconds=args.min_seconds, max_seconds=args.max_seconds)
    runtimes = args.runtimes.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, flush_denormals():
        work = Path(tmp)
        for key in args.models.split(","):
            spec, target, size = MODELS[key]
            print(f"== {key}: target FLOPs {target:.3f}", flush=True)
            base = create_model(spec).eval()
            paths = {"unpruned": export(base, size, work / f"{key}_base.onnx")}
            plain = prune_cli(spec, target, work / f"{key}_rt1", args.threads, round_to="1")
            paths["round_to_1"] = export(load_model(work / f"{key}_rt1"), size, work / f"{key}_rt1.onnx")
            for runtime in runtimes:
                summary = prune_cli(spec, target, work / f"{key}_{runtime}", args.threads, runtime=runtime)
                cell_paths = {**paths, "default": export(load_model(work / f"{key}_{runtime}"), size,
                                                         work / f"{key}_{runtime}.onnx")}
                alignment = summary["config"]["alignment"]["kinds"]
                for batch in batches:
                    print(f"   {runtime} batch {batch} (alignment {alignment}) ...", flush=True)
                    cell = time_cell(runtime, cell_paths, size, batch, args.threads, timing)
                    row = {"model": key, "runtime": runtime, "batch_size": batch, "alignment": alignment,
                           "flops_ratio_default": summary["flops_ratio"], "flops_ratio_round_to_1": plain["flops_ratio"],
                           "theoretical_default": 1 / summary["flops_ratio"],
                           "theoretical_round_to_1": 1 / plain["flops_ratio"], **cell}
                    row["efficiency_default"] = cell["default"]["speedup"] / row["theoretical_default"]
                    row["efficiency_round_to_1"] = cell["round_to_1"]["speedup"] / row["theoretical_round_to_1"]
                    if row["efficiency_default"] < GOAL and not args.no_profile:
                        row["profile_ms_by_op"] = {
                            "unpruned": profile(runtime, cell_paths["unpruned"], size, batch, args.threads),
                            "default": profile(runtime, cell_paths["default"], size, batch, args.threads)}
                    print(f"     default {cell['default']['speedup']:.2f}x (eff {row['efficiency_default']:.2f}), "
                          f"round_to 1 {cell['round_to_1']['speedup']:.2f}x (eff {row['efficiency_round_to_1']:.2f}),"
                          f" theoretical {row['theoretical_default']:.2f}x", flush=True)
                    rows.append(row)

    result = {"schema_version": SCHEMA_VERSION, "command": " ".join(["python", "benchmarks/bench_efficiency.py",
                                                                     *(argv if argv is not None else sys.argv[1:])]),
              "threads": args.threads, "goal_efficiency": GOAL, "seconds": time.perf_counter() - started,
              "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
              "versions": package_versions(), "environment": collect_environment(["cpu"]), "rows": rows}
    args.output.mkdir(parents=True, exist_ok=True)

    atomic_write_bytes(args.output / "results.json", json.dumps(result, indent=1).encode())
    atomic_write_bytes(args.output / "summary.md", render(result).encode())
    print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [f"# Practical against theoretical speedup, default prune vs --round-to 1 ({result['date']})", "",
             f"`{result['command']}`; {result['threads']} threads; {result['seconds']:.0f} s.", "",
             "| model | runtime | batch | alignment (conv/dw/linear) | theoretical | default: practical [95% CI] "
             "| efficiency | --round-to 1: practical [95% CI] | efficiency |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        d, p, a = r["default"], r["round_to_1"], r["alignment"]
        lines.append(f"| {r['model']} | {r['runtime']} | {r['batch_size']} | {a['conv']}/{a['depthwise']}/{a['linear']} | "
                     f"{r['theoretical_default']:.2f}x | {d['speedup']:.2f}x [{d['speedup_ci'][0]:.2f}, "
                     f"{d['speedup_ci'][1]:.2f}] | {r['efficiency_default']:.2f} | {p['speedup']:.2f}x "
                     f"[{p['speedup_ci'][0]:.2f}, {p['speedup_ci'][1]:.2f}] (theor. {r['theoretical_round_to_1']:.2f}x) "
                     f"| {r['efficiency_round_to_1']:.2f} |")
    short = [r for r in result["rows"] if "profile_ms_by_op" in r]
    if short:
        lines += ["", f"## Where the time goes in cells under {result['goal_efficiency']} efficiency", "",
                  "Per op type, ms per call from the runtime's profiler (unpruned -> default pruned, top 6 by "
                  "unpruned time); the ratio column is the op type's own speedup.", ""]
        for r in short:
            base, pruned = r["profile_ms_by_op"]["unpruned"], r["profile_ms_by_op"]["default"]
            total_b, total_p = sum(base.values()), sum(pruned.values())
            parts = [f"{op} {ms:.2f}->{pruned.get(op, 0.0):.2f} ({ms / pruned[op]:.2f}x)" if pruned.get(op) else
                     f"{op} {ms:.2f}->0" for op, ms in list(base.items())[:6]]
            lines.append(f"- **{r['model']} / {r['runtime']} / batch {r['batch_size']}** "
                         f"(profiled total {total_b:.2f} -> {total_p:.2f} ms): " + "; ".join(parts))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
