"""The run's own summary: ``summary.json`` (machine-readable) and ``summary.md`` (human-readable)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from compressor.common.files import atomic_write_bytes

SUMMARY_SCHEMA_VERSION = 1


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value:.2%}"


def _ratio(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


def deployed_accuracy(state: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """The last evaluate step's ``{bundle: {runtime: top1}}`` of a run's state (None without one)."""
    evaluated = [r["top1"] for name, r in state.get("results", {}).items()
                 if name.endswith("_evaluate") and "top1" in r]
    return evaluated[-1] if evaluated else None


def summary_rows(state: dict[str, Any]) -> dict[str, list[list[str]]]:
    """The tables of the summary (accuracy per runtime, pruning, baselines, speedups) as text rows."""
    results = state.get("results", {})
    tables: dict[str, list[list[str]]] = {}
    for name, r in results.items():
        kind = name.split("_", 1)[1]
        if kind == "prune" and "parts" in r:  # a whole detector
            tables.setdefault("detector pruning", []).append(
                [name, r["criterion"], f"{r['flops_ratio']:.1%}", f"{r['params_ratio']:.1%}",
                 ", ".join(f"{p['part']} {p['flops_after'] / p['flops_before']:.0%}" for p in r["parts"]
                           if p["flops_before"]), _ratio(r.get("map50_before_finetune"))])
        elif kind == "prune":
            tables.setdefault("pruning", []).append(
                [name, r["criterion"], r["strategy"], f"{r['flops_ratio']:.1%}", f"{r['params_ratio']:.1%}",
                 _pct(r.get("top1"))])
        elif kind in ("train", "finetune") and "map50" in r:
            tables.setdefault("detector training", []).append(
                [name, str(r["epochs"]), _ratio(r["map"]), _ratio(r["map50"]), f"{r['train_seconds']:.0f}s"])
        elif kind == "evaluate" and "map" in r:
            for bundle, by_runtime in r["map"].items():
                for runtime, m in by_runtime.items():
                    tables.setdefault("deployed mAP", []).append(
                        [bundle.replace("_", " "), runtime, _ratio(m["map"]), _ratio(m["map50"])])
        elif kind == "evaluate":
            for bundle, by_runtime in r["top1"].items():
                for runtime, top1 in by_runtime.items():
                    tables.setdefault("deployed accuracy", []).append([bundle.replace("_", " "), runtime, _pct(top1)])
        elif kind == "baselines":
            for row in r["rows"]:
                tables.setdefault("baselines at the pruned FLOPs", []).append(
                    [row["model"], f"{row['flops_ratio']:.1%}", f"{row['params'] / 1e6:.3f}M", _pct(row["top1"]),
                     "—" if row.get("epochs") is None else str(row["epochs"])])
        elif kind == "bench":
            for row in r["speedup"]:
                tables.setdefault("practical vs theoretical speedup", []).append(
                    [row["runtime"], str(row["batch_size"]), _precision(row),
                     "—" if row["practical"] is None else f"{row['practical']:.2f}x",
                     "—" if row["theoretical"] is None else f"{row['theoretical']:.2f}x",
                     "—" if row.get("int8_factor") is None else f"{row['int8_factor']:.2f}x",
                     "—" if row["efficiency"] is None else f"{row['efficiency']:.2f}"])
    return tables


def _precision(row: dict[str, Any]) -> str:
    """``int8 vs fp32`` where the candidate's precision differs from the baseline's, else the one."""
    cand, base = row.get("precision") or "fp32", row.get("baseline_precision") or "fp32"
    return cand if cand == base else f"{cand} vs {base}"


HEADERS = {
    "detector training": ["step", "epochs", "mAP@[.5:.95] (torch)", "mAP@0.5 (torch)", "training time"],
    "detector pruning": ["step", "criterion", "FLOPs", "params", "FLOPs kept per part", "mAP@0.5 before fine-tuning"],
    "deployed mAP": ["bundle", "runtime", "mAP@[.5:.95]", "mAP@0.5"],
    "pruning": ["step", "criterion", "strategy", "FLOPs", "params", "top-1 (torch)"],
    "deployed accuracy": ["bundle", "runtime", "top-1"],
    "baselines at the pruned FLOPs": ["model", "FLOPs vs unpruned", "params", "top-1", "training epochs"],
    # theoretical is the FLOPs ratio; an INT8 candidate's efficiency is practical / (FLOPs ratio x INT8 factor)
    "practical vs theoretical speedup": ["runtime", "batch", "precision", "practical", "theoretical", "int8 factor",
                                         "efficiency"],
}


def write_run_summary(pipeline: Any, result: Any) -> Path:
    """Write ``summary.json`` and ``summary.md`` in the run directory (atomically); returns the .md path."""
    run_dir = Path(result.run_dir)
    tables = summary_rows(result.state)
    data = {"schema_version": SUMMARY_SCHEMA_VERSION, "pipeline": pipeline.name, "source": pipeline.source,
            "quick": pipeline.quick, "seconds": result.seconds, "executed": result.executed,
            "skipped": result.skipped, "state": result.state}
    lines = [f"# Pipeline run: {pipeline.name}", ""]
    if pipeline.description:
        lines += [pipeline.description.strip(), ""]
    lines += [f"From `{pipeline.source}`{' (quick mode)' if pipeline.quick else ''}; steps run: "
              f"{', '.join(result.executed) or 'none'}; skipped (unchanged): {', '.join(result.skipped) or 'none'}.", ""]
    for title, rows in tables.items():
        lines += [f"## {title[:1].upper()}{title[1:]}", "", "| " + " | ".join(HEADERS[title]) + " |",
                  "|" + "---|" * len(HEADERS[title])]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    if result.state.get("report"):
        lines += [f"Benchmark report: `{result.state['report']}/report.html` (plots, latency percentiles, memory "
                  f"against TRM) and `{result.state['report']}/summary.md`.", ""]

    atomic_write_bytes(run_dir / "summary.json", json.dumps(data, indent=1, default=str).encode())
    atomic_write_bytes(run_dir / "summary.md", "\n".join(lines).encode())
    return run_dir / "summary.md"
