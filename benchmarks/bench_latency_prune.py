"""Latency-budget pruning: the latency table's model against the FLOPs target's at the same budget.

    python benchmarks/bench_latency_prune.py --model resnet50 --runtime openvino --budget-ms 25 \\
        --round-to 1,16 --threads 2 --output benchmarks/results/latency_prune_resnet50

For every ``--round-to``, :func:`compressor.app._latency_prune.prune_to_latency` runs with
``method="lut"`` and ``compare=True`` on the zoo model (random weights: latency is what is
measured, accuracy is meaningless): it builds (or reuses, ``DIR/latency_table.json``) the
per-layer latency table, finds the largest latency-table-ordered model that meets the budget,
and runs the measured search over the FLOPs target to the same budget. The three models each search
measured nearest below the budget, and above it, are then timed again **interleaved** (rotating rounds of
one call each, :func:`benchmarks._timing.interleaved`, so that every model sees the same machine
conditions; the committed results used blocks of 8 calls), and the FLOPs and
parameters each method keeps at the same latency are interpolated along its own curve (at the
budget when both curves bracket it, else in the middle of the range both span): the comparison at
the same measured latency.

Writes ``DIR/results.json`` (schema-versioned: every candidate measured, the table facts, the
interleaved re-measurement, the environment) and ``DIR/summary.md``, atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from compressor.app import open_session, prune_to_latency
from benchmarks._stats import summarize
from benchmarks._timing import interleaved, TimingConfig
import compressor as C
import models
from benchmarks._env import collect_environment
from compressor.common.files import atomic_write_bytes

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(_ROOT))

SCHEMA_VERSION = 1


def interleaved_medians(models: dict[str, Any], input_size: tuple[int, ...], runtime: str, batch_size: int,
                        threads: int | None, rounds: int = 96, seed: int = 0) -> dict[str, Any]:
    """Time ``models`` in ``rounds`` interleaved rounds (one call of each per round); ms per batch."""

    x = np.random.default_rng(seed).standard_normal((batch_size, *input_size)).astype(np.float32)
    with contextlib.ExitStack() as stack:
        sessions = {name: stack.enter_context(open_session(model, input_size, runtime, threads=threads, seed=seed))
                    for name, model in models.items()}
        samples = interleaved({name: (lambda s=s: s.run(x)) for name, s in sessions.items()},
                              TimingConfig(warmup=3), rounds=rounds)
    out = {name: summarize(s, batch_size, seed=seed).to_dict() for name, s in samples.items()}
    return {"rounds": rounds, "calls_per_round": 1, "stats": out}


def near_budget(candidates: list[Any], models: list[Any], budget_ms: float, each_side: int = 3) -> list[tuple[Any, Any]]:
    """The ``each_side`` distinct pruned models measured nearest below the budget, and above it."""
    distinct: dict[int, tuple[Any, Any]] = {}
    for c, m in zip(candidates, models):
        if c.flops_ratio < 1.0:
            distinct[id(m)] = (c, m)  # the latest measurement of a model
    ranked = sorted(distinct.values(), key=lambda cm: abs(cm[0].latency_ms_median - budget_ms))
    below = [cm for cm in ranked if cm[0].latency_ms_median <= budget_ms][:each_side]
    above = [cm for cm in ranked if cm[0].latency_ms_median > budget_ms][:each_side]
    return below + above


def at_latency(points: list[tuple[float, float, float]], latency_ms: float) -> dict[str, float] | None:
    """FLOPs and params kept at ``latency_ms``, interpolated between the two measured models that
    bracket it on the latency axis ((latency, flops, params) points); None when none bracket it."""
    below = [p for p in points if p[0] <= latency_ms]
    above = [p for p in points if p[0] > latency_ms]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    t = (latency_ms - lo[0]) / (hi[0] - lo[0])
    return {"flops_ratio": lo[1] + t * (hi[1] - lo[1]), "params_ratio": lo[2] + t * (hi[2] - lo[2])}


def common_latency(curves: list[list[tuple[float, float, float]]], budget_ms: float) -> float | None:
    """The latency to compare the curves at: the budget when every curve brackets it, otherwise the
    middle of the latency range they all span (a slower or faster machine during the re-timing
    shifts every model alike); None when they share no range."""
    if all(at_latency(c, budget_ms) is not None for c in curves):
        return budget_ms
    low = max(min(p[0] for p in c) for c in curves)
    high = min(max(p[0] for p in c) for c in curves)
    return (low + high) / 2 if low < high else None


def side_by_side(result: Any, size: tuple[int, ...], runtime: str, batch_size: int, threads: int) -> dict[str, Any]:
    """Both methods' models near the budget, re-timed interleaved in one run, and the capacity each
    keeps at the same latency (interpolated along its own measured curve)."""
    picked = {"lut": near_budget(result.candidates, result.candidate_models, result.budget_ms),
              "flops": near_budget(result.flops_candidates, result.flops_candidate_models, result.budget_ms)}
    named = {f"{method}:{i}": m for method, pairs in picked.items() for i, (_, m) in enumerate(pairs)}
    timed = interleaved_medians(named, size, runtime, batch_size, threads)
    out: dict[str, Any] = {"rounds": timed["rounds"], "calls_per_round": timed["calls_per_round"], "methods": {}}
    curves = {}
    for method, pairs in picked.items():
        rows = [{"flops_ratio": c.flops_ratio, "params_ratio": c.params_ratio,
                 "latency_ms_median": timed["stats"][f"{method}:{i}"]["latency_ms_median"]}
                for i, (c, _) in enumerate(pairs)]
        curves[method] = [(r["latency_ms_median"], r["flops_ratio"], r["params_ratio"]) for r in rows]
        out["methods"][method] = {"models": rows}
    latency = common_latency(list(curves.values()), result.budget_ms)
    out["latency_ms"] = latency
    for method, points in curves.items():
        out["methods"][method]["at_latency"] = None if latency is None else at_latency(points, latency)
    return out


def _row(label: str, c: dict[str, Any] | None, budget: float) -> str:
    if not c:
        return f"| {label} | — | — | — |"
    low, high = c["latency_ms_ci"]
    verdict = "meets" if high <= budget else f"misses by {c['latency_ms_median'] - budget:.1f} ms"
    return (f"| {label} | {c['flops_ratio']:.1%} | {c['params_ratio']:.1%} | {c['latency_ms_median']:.2f} ms "
            f"({low:.2f}–{high:.2f}): {verdict} |")


def summary_markdown(results: dict[str, Any]) -> str:
    a = results["args"]
    lines = [f"# Latency-budget pruning: {a['model']} on {a['runtime']}, batch {a['batch_size']}, "
             f"{a['threads']} threads, budget {a['budget_ms']:g} ms", "",
             f"Criterion {a['criterion']}; random weights. Environment: {results['environment'].get('cpu_model')}.", ""]
    for run in results["runs"]:
        r = run["result"]
        t = r.get("table") or {}
        lines += [f"## round_to {run['round_to']}", "",
                  f"Unpruned {r['unpruned']['latency_ms_median']:.2f} ms. Latency table: {t.get('shapes')} layer "
                  f"shapes, built in {t.get('build_seconds', 0):.0f} s, models the unpruned model at "
                  f"{t.get('predicted_unpruned_ms', float('nan')):.2f} ms; {len(r['candidates'])} + "
                  f"{len(r['flops_candidates'])} candidates measured in {run['seconds']:.0f} s.", "",
                  "| model | FLOPs kept | params kept | measured median (95% CI) |", "|---|---:|---:|---:|",
                  _row("FLOPs-proportional guess", r.get("flops_guess"), a["budget_ms"]),
                  _row("FLOPs target, measured search", r.get("flops_chosen"), a["budget_ms"]),
                  _row("latency table (lut)", r["chosen"], a["budget_ms"]), ""]
        both = run.get("side_by_side")
        if both:
            latency = both["latency_ms"]
            where = "not compared (the curves share no latency range)" if latency is None else f"{latency:.2f} ms"
            lines += [f"Side by side: the three models each search measured nearest below the budget and above it, "
                      f"re-timed interleaved ({both['rounds']} rounds x {both['calls_per_round']} calls each); the "
                      f"capacity each method keeps at the same latency, {where} (interpolated along its own curve; "
                      "the budget when both curves bracket it):", "",
                      "| method | models (FLOPs kept @ interleaved ms) | FLOPs kept | params kept |", "|---|---|---:|---:|"]
            for method, label in (("flops", "FLOPs target"), ("lut", "latency table")):
                m = both["methods"][method]
                models_text = ", ".join(f"{r['flops_ratio']:.1%} @ {r['latency_ms_median']:.2f}"
                                        for r in sorted(m["models"], key=lambda r: r["latency_ms_median"]))
                at = m["at_latency"]
                lines.append(f"| {label} | {models_text} | {at['flops_ratio']:.1%} | {at['params_ratio']:.1%} |" if at
                             else f"| {label} | {models_text} | — | — |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch  # optional SDK: torch


    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--runtime", default="openvino")
    p.add_argument("--budget-ms", type=float, required=True)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--criterion", default="l2")
    p.add_argument("--round-to", default="1", help="comma-separated values, one run each")
    p.add_argument("--max-steps", type=int, default=8)
    p.add_argument("--output", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = tuple(models.default_input_size(args.model))
    model = models.create_model(args.model).eval()
    args.output.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "args": {**vars(args), "output": str(args.output)},
                               "environment": collect_environment(["cpu"]), "runs": []}

    def save() -> None:
        atomic_write_bytes(args.output / "results.json", json.dumps(results, indent=1).encode())
        atomic_write_bytes(args.output / "summary.md", summary_markdown(results).encode())

    for round_to in [int(v) for v in args.round_to.split(",")]:
        print(f"== round_to {round_to}", flush=True)
        config = C.PruneConfig(criterion=args.criterion, target_flops=1.0, round_to=round_to)
        start = time.perf_counter()
        result = prune_to_latency(model, size, config, args.budget_ms, method="lut", compare=True,
                                  runtime=args.runtime, batch_size=args.batch_size, threads=args.threads,
                                  max_steps=args.max_steps, table_path=args.output / "latency_table.json",
                                  keep_models=True,
                                  progress=lambda m: print(f"  {m}", flush=True))
        run: dict[str, Any] = {"round_to": round_to, "seconds": time.perf_counter() - start,
                               "result": result.to_dict(samples=False)}
        results["runs"].append(run)
        save()
        if result.flops_candidates and result.chosen is not result.unpruned:
            run["side_by_side"] = side_by_side(result, size, args.runtime, args.batch_size, args.threads)
            save()
    print(summary_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
