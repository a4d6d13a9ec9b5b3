"""Turn a ``compressor bench`` results dict into a report directory.

The results dict follows ``benchmarks/results.schema.json`` (schema_version 2; a version 1 report
still reads, every artifact at its ``config.precision``). A report is a directory holding
:data:`REPORT_FILES`:

* ``results.json``: the results, unrounded (indent 1);
* ``results.csv``: one row per latency row, joined with its speedup and memory rows;
* ``summary.md``: speed warnings (when a candidate is slower than its baseline, or under 80% of
  its FLOPs speedup: :mod:`benchmarks._speed_verdict`), environment, latency/speedup table,
  memory table, failures, skips, warnings;
* four PNG plots (:data:`PLOT_FILES`), drawn with matplotlib's object API (``Figure``, Agg
  canvas), so no display and no global backend switch is needed;
* ``report.html``: one self-contained page with the summary tables and the plots inlined; the
  speed warnings stand highlighted at its top.

The directory is written with :func:`compressor.deploy._serialize.atomic_directory`: a failure leaves
an older report in place, never a half-written one, and Ctrl-C waits until the report is written.
Numbers are rounded only when printed.

Precision is a column of every table: the precision each artifact was opened at
(:func:`benchmarks._precision.row_precision`). Theoretical speedup stays FLOPs-based, the FLOPs
ratio baseline / candidate. When a candidate's precision differs from its baseline's at the same
runtime and batch size, the speedup it should show is not the FLOPs ratio alone: an INT8
candidate over an FP32 baseline also gains what quantisation gains. That gain, the *INT8 factor*,
is the INT8-over-FP32 speedup the candidate's export measured on that runtime (its manifest's
``int8.targets[target].speed.speedup``, recorded per runtime in its bundle entry as
``int8_factor``). It is reported in its own column (``int8_factor`` in the CSV), and where it is
known efficiency = practical / (theoretical x int8_factor). Where the precisions differ and no
factor is known (no guard figures, or a baseline in INT8 and a candidate not), efficiency stays
practical / theoretical and is marked "precision differs": it then mixes pruning and precision.
"""
from __future__ import annotations

import base64
import csv
import functools
import html
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from compressor.common.outputs import atomic_directory, deferred_sigint

from benchmarks._precision import bundle_artifact_precision, row_precision, RowPrecision, speedup_precision
from benchmarks._speed_verdict import EFFICIENCY_FLOOR, speed_warnings
from jsonschema import Draft202012Validator

__all__ = ["PLOT_FILES", "REPORT_FILES", "SCHEMA_VERSION", "render_markdown", "validate_results", "write_report"]

SCHEMA_VERSION = 2  # the version written; results.schema.json reads 1 as well
SCHEMA_FILE = "results.schema.json"
PLOT_FILES = ("latency_vs_batch.png", "throughput_vs_batch.png", "speedup_vs_batch.png", "memory_vs_batch.png")
REPORT_FILES = ("results.json", "results.csv", "summary.md", *PLOT_FILES, "report.html")
CSV_COLUMNS = (
    "runtime", "device", "batch_size", "bundle", "role", "status", "precision",
    "latency_ms_median", "latency_ms_ci_low", "latency_ms_ci_high", "latency_ms_p90", "latency_ms_p95",
    "latency_ms_p99", "latency_ms_mean", "latency_ms_std", "latency_ms_min", "latency_ms_max", "n",
    "per_sample_ms_median", "throughput_sps",
    "speedup_practical", "speedup_ci_low", "speedup_ci_high", "speedup_theoretical", "efficiency",
    "baseline_precision", "int8_factor",
    "memory_measured_bytes", "memory_peak_bytes", "memory_theoretical_bytes", "error",
)
_STATS_COLUMNS = ("latency_ms_median", "latency_ms_p90", "latency_ms_p95", "latency_ms_p99", "latency_ms_mean",
                  "latency_ms_std", "latency_ms_min", "latency_ms_max", "n", "per_sample_ms_median", "throughput_sps")
SPEED_WARNINGS = "Speed warnings"
_MAX_ERRORS_SHOWN = 5
_MIB = 2 ** 20
_DASH = "—"

# ----------------------------------------------------------------------------- validation

@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    schema = json.loads(resources.files("benchmarks").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _shorten(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else f"{message[:limit // 2]} ... {message[-limit // 2:]}"


def _plain(results: dict[str, Any]) -> dict[str, Any]:
    """Validate ``results`` and return a plain-JSON copy (tuples become lists)."""
    try:
        plain = json.loads(json.dumps(results))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"results are not JSON-serialisable: {exc}") from exc
    errors = sorted(_validator().iter_errors(plain), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        shown = "\n".join(f"  at {e.json_path}: {_shorten(e.message)}" for e in errors[:_MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(errors) - _MAX_ERRORS_SHOWN} more" if len(errors) > _MAX_ERRORS_SHOWN else ""
        raise ValueError(f"results do not match {SCHEMA_FILE} (schema_version {SCHEMA_VERSION}), "
                         f"{len(errors)} error(s):\n{shown}{more}")
    _check_references(plain)
    return plain


def _check_references(results: dict[str, Any]) -> None:
    """What the schema cannot say: bundle names are unique and every row names a known bundle."""
    roles: dict[str, str] = {}
    for i, bundle in enumerate(results["bundles"]):
        if bundle["name"] in roles:
            raise ValueError(f"at $.bundles[{i}].name: bundle name {bundle['name']!r} is used twice")
        roles[bundle["name"]] = bundle["role"]
    known = ", ".join(roles) or "none"
    for table in ("latency", "speedup", "memory"):
        for i, row in enumerate(results[table]):
            expected = ("candidate", "baseline") if table == "speedup" else (None, None)
            for field, role in zip(("bundle", "baseline"), expected):
                if field not in row:
                    continue
                name = row[field]
                if name not in roles:
                    raise ValueError(f"at $.{table}[{i}].{field}: {name!r} is not a bundle (known: {known})")
                if role and roles[name] != role:
                    raise ValueError(f"at $.{table}[{i}].{field}: bundle {name!r} is a {roles[name]}, not a {role}")


def validate_results(results: dict[str, Any]) -> None:
    """Check ``results`` against ``results.schema.json`` and the bundle references.

    Raises:
        ValueError: the results are not JSON-serialisable, break the schema (the message gives
            the JSON path, e.g. ``$.latency[0].status``, and the problem of the first errors),
            or a row names an unknown bundle.
    """
    _plain(results)


# ----------------------------------------------------------------------------- joining rows

def _key(row: dict[str, Any]) -> tuple[str, str, int, str]:
    return row["runtime"], row["device"], row["batch_size"], row["bundle"]


@dataclass(frozen=True)
class _Row:
    """One latency row joined with its speedup and memory rows (either may be absent)."""

    latency: dict[str, Any]
    role: str
    speedup: dict[str, Any] | None
    memory: dict[str, Any] | None
    stats: dict[str, Any] | None  # latency["stats"]
    practical: dict[str, Any] | None  # speedup["practical"]
    precision: RowPrecision


def _sort_key(results: dict[str, Any]) -> Callable[[dict[str, Any]], tuple]:
    """Runtimes in order of first appearance, then device, batch size, and bundle order."""
    runtimes = list(dict.fromkeys(r["runtime"] for t in ("latency", "memory", "speedup") for r in results[t]))
    bundles = [b["name"] for b in results["bundles"]]
    return lambda r: (runtimes.index(r["runtime"]), r["device"], r["batch_size"], bundles.index(r["bundle"]))


def _joined(results: dict[str, Any]) -> list[_Row]:
    roles = {b["name"]: b["role"] for b in results["bundles"]}
    speedup = {_key(r): r for r in results["speedup"]}
    memory = {_key(r): r for r in results["memory"]}
    rows = sorted(results["latency"], key=_sort_key(results))
    out = []
    for r in rows:
        sp = speedup.get(_key(r))
        precision = speedup_precision(results, sp) if sp else RowPrecision(row_precision(results, r))
        out.append(_Row(r, roles[r["bundle"]], sp, memory.get(_key(r)), r["stats"], sp and sp["practical"], precision))
    return out


# ----------------------------------------------------------------------------- formatting

def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return _DASH
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:#.{digits}g}".rstrip(".")  # "#" keeps trailing zeros: 1.090, not 1.09


def _fmt(template: str, value: float | None) -> str:
    """``template.format(value)``, or a dash for a missing value: ``_fmt("{:.2f}x", 1.8) == "1.80x"``."""
    return _DASH if value is None else template.format(value)


def _mib(n_bytes: int | None) -> str:
    return _fmt("{:.2f}", None if n_bytes is None else n_bytes / _MIB)


def _level(levels: set[float]) -> str:
    return f"{next(iter(levels)):.0%} CI" if len(levels) == 1 else "CI"


@dataclass(frozen=True)
class _Table:
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]


def _main_table(rows: list[_Row]) -> _Table:
    level = _level({r.stats["ci_level"] for r in rows if r.stats})
    speedup_level = _level({r.practical["ci_level"] for r in rows if r.practical})
    out = []
    for r in rows:
        s, p, lat = r.stats, r.practical, r.latency
        median = f"{_num(s['latency_ms_median'])} [{', '.join(map(_num, s['median_ci_ms']))}]" if s else _DASH
        speedup = "{:.2f}x [{:.2f}, {:.2f}]".format(p["speedup_median"], *p["speedup_ci"]) if p else _DASH
        theoretical = efficiency = factor = _DASH
        if r.speedup:
            theoretical = _fmt("{:.2f}x", r.speedup["theoretical"])
            efficiency, factor = _efficiency_cells(r.precision)
        out.append((lat["runtime"], lat["device"], str(lat["batch_size"]), lat["bundle"], r.role, lat["status"],
                    r.precision.precision, median, _num(s and s["latency_ms_p90"]), _num(s and s["latency_ms_p99"]),
                    _num(s and s["throughput_sps"]), speedup, theoretical, efficiency, factor))
    return _Table(("runtime", "device", "batch", "bundle", "role", "status", "precision", f"median ms [{level}]",
                   "p90 ms", "p99 ms", "throughput sps", f"speedup [{speedup_level}]", "theoretical", "efficiency",
                   "INT8 factor"), out)


def _efficiency_cells(p: RowPrecision) -> tuple[str, str]:
    """The efficiency and INT8-factor cells of a candidate row; a mixed-precision efficiency without
    a factor is marked, since it then credits pruning with what the precision did."""
    efficiency = _fmt("{:.0%}", p.efficiency)
    if p.differs and p.int8_factor is None and p.efficiency is not None:
        efficiency += f" (precision differs: {p.precision} vs {p.baseline})"
    return efficiency, _fmt("{:.2f}x", p.int8_factor)


def _memory_table(results: dict[str, Any]) -> _Table:
    out = []
    for m in sorted(results["memory"], key=_sort_key(results)):
        measured, theoretical = m["measured_bytes"], m["theoretical_bytes"]
        ratio = measured / theoretical if measured is not None and theoretical else None
        out.append((m["runtime"], m["device"], str(m["batch_size"]), m["bundle"], m["status"],
                    row_precision(results, m), _mib(measured), _mib(theoretical), _fmt("{:.2f}", ratio),
                    _mib(m["peak_bytes"])))
    return _Table(("runtime", "device", "batch", "bundle", "status", "precision", "measured TRM MiB",
                   "theoretical TRM MiB", "measured / theoretical", "peak RSS MiB"), out)


def _bundle_table(results: dict[str, Any]) -> _Table:
    trained = {True: "yes", False: "no", None: "unknown"}
    out = [(b["name"], b["role"], b["source"] or _DASH, _num(b["flops"] and b["flops"] / 1e6), _fmt("{:,}", b["params"]),
            _mib(b["mps_bytes"]), trained[b["weights_trained"]], _artifact_precisions(b), b["path"])
           for b in results["bundles"]]
    return _Table(("bundle", "role", "source", "MFLOPs / sample", "params", "MPS MiB", "weights trained",
                   "artifact precision", "path"), out)


def _artifact_precisions(bundle: dict[str, Any]) -> str:
    """``onnx int8, openvino fp32``; a dash for a report written before bundles recorded it."""
    return ", ".join(f"{t} {p}" for t, p in (bundle.get("artifact_precision") or {}).items()) or _DASH


def _int8_lines(results: dict[str, Any]) -> list[str]:
    """Per bundle and runtime, what its export decided: the precision shipped (and why INT8 was
    refused), the INT8 factor its guard measured, and the accuracy it recorded."""
    out = []
    for b in results["bundles"]:
        decisions, accuracy = b.get("int8_decision") or {}, b.get("accuracy") or {}
        for runtime in dict.fromkeys([*decisions, *accuracy.get("shipped", {})]):
            out.append("; ".join([_shipped(b, runtime, decisions.get(runtime) or {}),
                                  *_accuracy_parts(accuracy, runtime)]))
    return out


def _shipped(bundle: dict[str, Any], runtime: str, decision: dict[str, Any]) -> str:
    """``pruned/openvino: ships fp32 (INT8 refused: ...); INT8 factor 1.10x at batch 8``."""
    refused = "INT8 refused: " if decision.get("decision") == "fp32" else ""
    text = f"{bundle['name']}/{runtime}: ships {bundle_artifact_precision(bundle, runtime)}"
    text += f" ({refused}{decision['reason']})" if decision.get("reason") else ""
    speed = decision.get("speed") or {}
    if speed.get("speedup"):
        text += f"; INT8 factor {speed['speedup']:.2f}x at batch {speed.get('batch_size', '?')}"
    return text


def _accuracy_parts(accuracy: dict[str, Any], runtime: str) -> list[str]:
    shipped, fp32 = accuracy.get("shipped", {}).get(runtime), accuracy.get("fp32", {}).get(runtime)
    if shipped is None:
        return []
    where = f" ({accuracy['split']}, {accuracy['samples']} samples)" if accuracy.get("split") else ""
    return [f"top-1 {shipped:.4f} shipped" + (f", {fp32:.4f} fp32" if fp32 is not None else "") + where]


def _environment(results: dict[str, Any]) -> list[tuple[str, str]]:
    env, config = results["environment"], results["config"]
    if results["complete"]:
        run = "complete"
    else:
        run = "interrupted, partial results" if results["interrupted"] else "incomplete (a step failed), partial results"
    versions = ", ".join(f"{k} {v if v is not None else 'n/a'}" for k, v in env["versions"].items())
    dirty = {True: " (dirty)", False: " (clean)", None: ""}[env["git_dirty"]]
    trained = ", ".join(f"{b['name']}: {({True: 'yes', False: 'no'}).get(b['weights_trained'], 'unknown')}"
                        for b in results["bundles"]) or _DASH
    cores = f"{env['cpu_cores_available']} of {env['cpu_cores_logical']}"
    threads = config["threads"] if config["threads"] is not None else "default"
    batch_sizes = ", ".join(str(b) for b in config["batch_sizes"])
    return [
        ("Run", f"{run}; created {results['created_utc']}"),
        ("CPU", f"{env['cpu_model'] or 'unknown'} ({cores} logical cores available)"),
        ("GPU", env["gpu"] or "none"),
        ("Devices, threads", f"{', '.join(config['devices'])}, {threads} threads"),
        ("Runtimes, batch sizes", f"{', '.join(config['runtimes']) or _DASH}; {batch_sizes}"),
        ("Weights trained", trained),
        ("Host", f"{env['hostname']}, {env['os']}, Python {env['python']}"),
        ("Versions", versions or _DASH),
        ("Git", f"{env['git_sha'] or 'unknown'}{dirty}"),
    ]


def _failures(results: dict[str, Any]) -> list[str]:
    out = []
    for table in ("latency", "memory"):
        for r in sorted(results[table], key=_sort_key(results)):
            if r["status"] != "ok":
                out.append(f"{table}: {r['runtime']}/{r['device']} batch {r['batch_size']} {r['bundle']}: "
                           f"{r['status']}: {r['error']}")
    return out


_NOTES = ("Latency is per batch; its CI is a bootstrap interval of the median. The practical speedup is the "
          "median of the per-round baseline/candidate latency ratios of interleaved rounds; theoretical is the "
          "FLOPs ratio; efficiency = practical / theoretical, or practical / (theoretical x INT8 factor) for an "
          "INT8 candidate over a baseline that is not, where its export measured the INT8 factor (its INT8-over-"
          "FP32 speedup on that runtime). Precision is the precision each artifact was opened at.")


def _speed_warning_table(results: dict[str, Any]) -> _Table:
    out, order = [], _sort_key(results)
    for row, verdict in sorted(speed_warnings(results), key=lambda rv: order(rv[0])):
        p = row["practical"]
        out.append((row["bundle"], row["runtime"], row["device"], str(row["batch_size"]), verdict.level,
                    "{:.2f}x [{:.2f}, {:.2f}]".format(verdict.practical, *p["speedup_ci"]),
                    f"{verdict.theoretical:.2f}x", f"{verdict.efficiency:.0%}", verdict.message))
    return _Table(("candidate", "runtime", "device", "batch", "verdict", "practical [CI]", "theoretical",
                   "efficiency", "message"), out)


_SPEED_NOTE = (f"A candidate is 'slower' when its median speedup over the baseline is below 1.0, and "
               f"'inefficient' when it is faster but its efficiency (practical / theoretical) is below "
               f"{EFFICIENCY_FLOOR:.0%}. The benchmark's exit code does not change.")


def _sections(results: dict[str, Any]) -> list[tuple[str, _Table | list[str] | str, str]]:
    """The summary as (heading, table | bullet list | sentence, note), rendered to Markdown and HTML alike.

    The speed warnings come first, and only when there are some."""
    rows = _joined(results)
    warned = _speed_warning_table(results)
    int8 = _int8_lines(results)
    return [
        *([(SPEED_WARNINGS, warned, _SPEED_NOTE)] if warned.rows else []),
        ("Environment", [f"{k}: {v}" for k, v in _environment(results)], ""),
        ("Bundles", _bundle_table(results) if results["bundles"] else "No bundles.", ""),
        ("Latency and speedup", _main_table(rows) if rows else "No latency rows.", _NOTES if rows else ""),
        *([("INT8 decisions and accuracy (from the manifests)", int8, "")] if int8 else []),
        ("Memory (TRM)", _memory_table(results) if results["memory"] else
         "No memory rows (memory measurement was off or did not run).", ""),
        ("Failed runs", _failures(results) or "None.", ""),
        ("Skipped runtimes", [f"{s['runtime']}/{s['device']}: {s['reason']}" for s in results["skipped"]]
         or "None.", ""),
        ("Warnings", list(results["warnings"]) or "None.", ""),
    ]


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Benchmark report", ""]
    for heading, body, note in _sections(results):
        lines += [f"## {heading}", ""]
        if isinstance(body, _Table):
            lines.append("| " + " | ".join(body.headers) + " |")
            lines.append("|" + "|".join("---" for _ in body.headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in body.rows]
        elif isinstance(body, list):
            lines += [f"- {_md_cell(item)}" for item in body]
        else:
            lines.append(body)
        lines += ["", note, ""] if note else [""]
    return "\n".join(lines).rstrip() + "\n"


def render_markdown(results: dict[str, Any]) -> str:
    """The ``summary.md`` text of ``results`` (validated first).

    Raises:
        ValueError: as :func:`validate_results`.
    """
    return _markdown(_plain(results))


# ----------------------------------------------------------------------------- CSV

def _csv_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in _joined(results):
        s, p, m, lat = r.stats or {}, r.practical or {}, r.memory or {}, r.latency
        errors = [lat["error"]] if lat["error"] else []
        if m.get("error"):
            errors.append(f"memory: {m['error']}")
        ci, speedup_ci = s.get("median_ci_ms", (None, None)), p.get("speedup_ci", (None, None))
        out.append({
            "runtime": lat["runtime"], "device": lat["device"], "batch_size": lat["batch_size"],
            "bundle": lat["bundle"], "role": r.role, "status": lat["status"], "precision": r.precision.precision,
            **{c: s.get(c) for c in _STATS_COLUMNS}, "latency_ms_ci_low": ci[0], "latency_ms_ci_high": ci[1],
            "speedup_practical": p.get("speedup_median"), "speedup_ci_low": speedup_ci[0],
            "speedup_ci_high": speedup_ci[1],
            "speedup_theoretical": r.speedup["theoretical"] if r.speedup else None,
            "efficiency": r.precision.efficiency if r.speedup else None,
            "baseline_precision": r.precision.baseline, "int8_factor": r.precision.int8_factor,
            "memory_measured_bytes": m.get("measured_bytes"), "memory_peak_bytes": m.get("peak_bytes"),
            "memory_theoretical_bytes": m.get("theoretical_bytes"), "error": "; ".join(errors),
        })
    return out


# ----------------------------------------------------------------------------- plots

Rows = list[dict[str, Any]]


def _figure(ncols: int = 1) -> tuple[Any, list[Any]]:
    # the object API: savefig draws on an Agg canvas, no pyplot state and no global backend switch
    from matplotlib.figure import Figure  # optional SDK: matplotlib

    fig = Figure(figsize=(max(7.0, 4.5 * ncols), 4.5), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _placeholder(text: str) -> Any:
    fig, (ax,) = _figure()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=14, transform=ax.transAxes)
    return fig


def _finish(ax: Any, rows: Rows, ylabel: str, title: str, top: float) -> None:
    """Log2 batch-size axis with one tick per measured size, y from 0, grid and legend."""
    from matplotlib.ticker import NullFormatter  # optional SDK: matplotlib

    sizes = sorted({r["batch_size"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(sizes) == 1:  # a log axis around a single point needs explicit room
        ax.set_xlim(sizes[0] / 2, sizes[0] * 2)
    if math.isfinite(top) and top > 0:
        ax.set_ylim(0, 1.1 * top)
    ax.set(xlabel="batch size", ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _errorbar(ax: Any, rows: Rows, median: Callable[[dict], float], interval: Callable[[dict], list[float]],
              **style: Any) -> float:
    """Medians with asymmetric CI error bars; returns the highest point drawn."""
    y = [median(r) for r in rows]
    low = [max(0.0, m - interval(r)[0]) for m, r in zip(y, rows)]  # matplotlib refuses negative error bars
    high = [max(0.0, interval(r)[1] - m) for m, r in zip(y, rows)]
    ax.errorbar([r["batch_size"] for r in rows], y, yerr=[low, high], marker="o", capsize=3, **style)
    return max(interval(r)[1] for r in rows)


def _series(rows: Rows, label: Callable[[dict], str]) -> dict[str, Rows]:
    """Rows grouped by ``label``, in order of first appearance, each group by batch size."""
    out: dict[str, Rows] = {}
    for row in rows:
        out.setdefault(label(row), []).append(row)
    return {k: sorted(v, key=lambda r: r["batch_size"]) for k, v in out.items()}


def _plot_latency(results: dict[str, Any], throughput: bool) -> Any:
    rows = [r for r in sorted(results["latency"], key=_sort_key(results)) if r["stats"]]
    if not rows:
        return _placeholder("no latency measured")
    several_devices = len({r["device"] for r in rows}) > 1

    def label(r: dict[str, Any]) -> str:
        return "/".join([r["runtime"], r["device"], r["bundle"]] if several_devices else [r["runtime"], r["bundle"]])

    fig, (ax,) = _figure()
    top = 0.0
    for name, series in _series(rows, label).items():
        if throughput:
            y = [r["stats"]["throughput_sps"] for r in series]
            ax.plot([r["batch_size"] for r in series], y, marker="o", label=name)
            top = max([top, *(v for v in y if math.isfinite(v))])  # inf when the median is 0 ms
        else:
            top = max(top, _errorbar(ax, series, lambda r: r["stats"]["latency_ms_median"],
                                     lambda r: r["stats"]["median_ci_ms"], label=name))
    if throughput:
        _finish(ax, rows, "throughput at the median (samples/s)", "Throughput vs batch size", top)
    else:
        level = _level({r["stats"]["ci_level"] for r in rows})
        _finish(ax, rows, "median latency per batch (ms)", f"Latency vs batch size ({level} error bars)", top)
    return fig


def _per_runtime(rows: Rows) -> tuple[Any, list[tuple[Any, str, Rows]]]:
    """One subplot per (runtime, device): the figure and ``(axes, title, rows)`` for each."""
    groups = _series(rows, lambda r: f"{r['runtime']} ({r['device']})")
    fig, axes = _figure(len(groups))
    return fig, [(ax, title, group) for ax, (title, group) in zip(axes, groups.items())]


def _plot_speedup(results: dict[str, Any]) -> Any:
    # Fig. 6 of "FALF ConvNets: Fatuous auxiliary loss based filter-pruning for efficient deep CNNs":
    # measured speedup (with its CI) against the theoretical FLOPs ratio
    if not results["speedup"]:
        return _placeholder("no baseline given: no speedup measured")
    fig, panels = _per_runtime(sorted(results["speedup"], key=_sort_key(results)))
    for ax, title, group in panels:
        top = 1.0
        for i, (bundle, series) in enumerate(_series(group, lambda r: r["bundle"]).items()):
            measured = [r for r in series if r["practical"]]
            if measured:
                top = max(top, _errorbar(ax, measured, lambda r: r["practical"]["speedup_median"],
                                         lambda r: r["practical"]["speedup_ci"], color=f"C{i}",
                                         label=f"{bundle} practical"))
            theory = [r for r in series if r["theoretical"] is not None]
            if theory:
                ax.plot([r["batch_size"] for r in theory], [r["theoretical"] for r in theory], linestyle="--",
                        color=f"C{i}", label=f"{bundle} theoretical")
                top = max(top, *(r["theoretical"] for r in theory))
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        _finish(ax, group, f"speedup over {group[0]['baseline']}", title, top)
    return fig


def _plot_memory(results: dict[str, Any]) -> Any:
    # FALF ConvNets Fig. 5: measured TRM against the theoretical MPS + FM * 4 * BS (eq. 10)
    rows = [r for r in sorted(results["memory"], key=_sort_key(results))
            if r["measured_bytes"] is not None or r["theoretical_bytes"] is not None]
    if not rows:
        return _placeholder("no memory measured")
    fig, panels = _per_runtime(rows)
    for ax, title, group in panels:
        top = 0.0
        for i, (bundle, series) in enumerate(_series(group, lambda r: r["bundle"]).items()):
            for field, style, marker in (("measured_bytes", "-", "o"), ("theoretical_bytes", "--", None)):
                points = [r for r in series if r[field] is not None]
                if points:
                    y = [r[field] / _MIB for r in points]
                    ax.plot([r["batch_size"] for r in points], y, linestyle=style, marker=marker, color=f"C{i}",
                            label=f"{bundle} {field.removesuffix('_bytes')}")
                    top = max(top, *y)
        _finish(ax, group, "TRM (MiB)", title, top)
    return fig


def _plots(results: dict[str, Any]) -> dict[str, bytes]:
    """The PNG bytes of each of :data:`PLOT_FILES`."""
    figures = dict(zip(PLOT_FILES, (lambda: _plot_latency(results, throughput=False),
                                    lambda: _plot_latency(results, throughput=True),
                                    lambda: _plot_speedup(results), lambda: _plot_memory(results))))
    out = {}
    for name, draw in figures.items():
        buf = io.BytesIO()
        draw().savefig(buf, format="png", dpi=100)
        out[name] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------- HTML

_CSS = """body{font-family:sans-serif;margin:2em;max-width:110em}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#eee}
td:nth-child(-n+7){text-align:left}img{max-width:100%;margin:.5em 0}
.speed-warnings{border:3px solid #c00;background:#fee;padding:0 1em;margin:1em 0}
.speed-warnings h2{color:#c00}.speed-warnings td:last-child{text-align:left}"""


def _html(results: dict[str, Any], plots: dict[str, bytes]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Benchmark report</title>", f"<style>{_CSS}</style></head><body>", "<h1>Benchmark report</h1>"]
    for heading, body, note in _sections(results):
        if heading == SPEED_WARNINGS:
            parts.append('<div class="speed-warnings" role="alert">')
        parts.append(f"<h2>{esc(heading)}</h2>")
        if isinstance(body, _Table):
            parts.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in body.headers) + "</tr></thead>")
            parts.append("<tbody>" + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                                             for row in body.rows) + "</tbody></table>")
        elif isinstance(body, list):
            parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in body) + "</ul>")
        else:
            parts.append(f"<p>{esc(body)}</p>")
        if note:
            parts.append(f"<p>{esc(note)}</p>")
        if heading == SPEED_WARNINGS:
            parts.append("</div>")
    parts.append("<h2>Plots</h2>")
    for name, png in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(name)}">'
                     f"<figcaption>{esc(name)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- the report

def write_report(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Validate ``results`` and write the report directory ``out_dir`` atomically.

    Writes :data:`REPORT_FILES` (see the module docstring). An existing ``out_dir`` is replaced
    only once the new report is complete; on any failure it is left as it was. Ctrl-C during the
    write is held back until the report is complete, then raised (``KeyboardInterrupt``).

    Args:
        results: the benchmark results (``benchmarks/results.schema.json``).
        out_dir: the report directory to create or replace.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        ValueError: ``results`` are invalid (see :func:`validate_results`); nothing is written.
        FileExistsError: ``out_dir`` exists and is not a directory.
    """
    with deferred_sigint():  # Ctrl-C waits for the report: its measurements took minutes
        plain = _plain(results)
        return atomic_directory(out_dir, functools.partial(_write_report_files, plain))


def _write_report_files(plain: dict[str, Any], tmp: Path) -> None:
    (tmp / "results.json").write_text(json.dumps(plain, indent=1) + "\n", encoding="utf-8")
    with open(tmp / "results.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)  # None is written as an empty field
        writer.writeheader()
        writer.writerows(_csv_rows(plain))
    (tmp / "summary.md").write_text(_markdown(plain), encoding="utf-8")
    plots = _plots(plain)
    for name, png in plots.items():
        (tmp / name).write_bytes(png)
    (tmp / "report.html").write_text(_html(plain, plots), encoding="utf-8")
