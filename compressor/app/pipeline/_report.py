"""The run's own summary: ``summary.json`` (machine-readable) and ``summary.md`` (human-readable)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from compressor.common.files import atomic_write_bytes

SUMMARY_SCHEMA_VERSION = 1


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value:.2%}"


def deployed_accuracy(state: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """The last evaluate step's ``{bundle: {runtime: top1}}`` of a run's state (None without one)."""
    evaluated = [r["top1"] for name, r in state.get("results", {}).items() if name.endswith("_evaluate")]
    return evaluated[-1] if evaluated else None


def summary_rows(state: dict[str, Any]) -> dict[str, list[list[str]]]:
    """The tables of the summary (accuracy per runtime, pruning, baselines, speedups) as text rows."""
    results = state.get("results", {})
    tables: dict[str, list[list[str]]] = {}
    for name, r in results.items():
        kind = name.split("_", 1)[1]
        if kind == "prune":
            tables.setdefault("pruning", []).append(
                [name, r["criterion"], r["strategy"], f"{r['flops_ratio']:.1%}", f"{r['params_ratio']:.1%}",
                 _pct(r.get("top1"))])
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
                    [row["runtime"], str(row["batch_size"]),
                     "—" if row["practical"] is None else f"{row['practical']:.2f}x",
                     "—" if row["theoretical"] is None else f"{row['theoretical']:.2f}x",
                     "—" if row["efficiency"] is None else f"{row['efficiency']:.2f}"])
    return tables


HEADERS = {
    "pruning": ["step", "criterion", "strategy", "FLOPs", "params", "top-1 (torch)"],
    "deployed accuracy": ["bundle", "runtime", "top-1"],
    "baselines at the pruned FLOPs": ["model", "FLOPs vs unpruned", "params", "top-1", "training epochs"],
    "practical vs theoretical speedup": ["runtime", "batch", "practical", "theoretical", "efficiency"],
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
        lines += [f"## {title.capitalize()}", "", "| " + " | ".join(HEADERS[title]) + " |",
                  "|" + "---|" * len(HEADERS[title])]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    if result.state.get("report"):
        lines += [f"Benchmark report: `{result.state['report']}/report.html` (plots, latency percentiles, memory "
                  f"against TRM) and `{result.state['report']}/summary.md`.", ""]

    atomic_write_bytes(run_dir / "summary.json", json.dumps(data, indent=1, default=str).encode())
    atomic_write_bytes(run_dir / "summary.md", "\n".join(lines).encode())
    return run_dir / "summary.md"
