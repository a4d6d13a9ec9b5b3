"""The release gate: check a benchmark report (and accuracies) against the rules of a budgets file.

One :class:`Check` per (rule, metric). Latency, throughput and speedup are noisy: each comes with
a two-sided ``confidence`` interval, and the *decision rule* (:mod:`benchmarks._decision`, the
same function latency-budget pruning uses) says what must be within the budget:

* ``point`` (default): the point estimate. A p99 of 11.97 ms against a 10 ms budget fails.
* ``strict``: the conservative end of the interval (upper for ``max_*``, lower for ``min_*``).
* ``lenient``: fails only when the whole interval is beyond the budget.

Every check records the estimate, both ends of the interval and the margin of the value the rule
compared; ``marginal`` flags a budget inside the interval (where the rules can disagree).
Intervals: p50 -> the report's ``median_ci_ms`` (re-bootstrapped when its level differs);
p90/p99 -> a seeded percentile bootstrap over ``samples_ms``; throughput -> ``batch_size * 1000 /
latency`` at the median and at the ends of its interval; speedup -> ``practical.speedup_ci``.
Memory (``measured_bytes``) and accuracy are single values, compared as they are.

Precision: every check records the precision its target was measured at (the row's; for accuracy,
the precision of the artifact the bundle ships on that runtime). A rule that names a
``precision`` fails, whatever its numbers, when that differs: an INT8 bundle whose INT8 artifact
was refused on a runtime ships FP32 there, and an INT8 budget must not pass on FP32 timings.

Accuracy comes from the accuracy given (an ``--accuracy`` file or a pipeline summary) and, for a
bundle it does not cover, from the bundle's manifest as the report recorded it (``accuracy.shipped``:
the top-1 of the shipped artifact on that runtime). ``max_accuracy_drop`` is measured from the
baseline's top-1 (given, or its manifest's), or, without one, from the bundle's own FP32 top-1
(``accuracy.fp32``: the drop its precision costs). Each check says where its numbers came from.

Exit codes (:attr:`GateReport.exit_code`): any failed check -> :data:`EXIT_VIOLATED` (a definite
violation is the actionable verdict, and an unmeasured rule must not hide it); otherwise any
unmeasured check (missing row, an ``oom``/``error`` row, no accuracy given) or an incomplete
report (``"complete": false``: an interrupted sweep; the absent rows are named) ->
:data:`EXIT_UNMEASURED`; otherwise :data:`EXIT_PASS`. Exit code 2 is left to the CLI for bad input.
"""
from __future__ import annotations

import copy
import datetime
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._budgets import METRICS, Budgets, Rule
from compressor.common.errors import EXIT_NOT_MEASURED, EXIT_OK, EXIT_VIOLATED
from benchmarks._completeness import absent_rows, describe_rows
from benchmarks._decision import check_decision, decide
from benchmarks._precision import bundle_artifact_precision, row_precision
from benchmarks._report import _num, validate_results
from benchmarks._stats import DEFAULT_RESAMPLES, bootstrap_median_ci
from compressor.common.files import atomic_write_bytes

__all__ = ["EXIT_PASS", "EXIT_UNMEASURED", "EXIT_VIOLATED", "GATE_SCHEMA_VERSION", "TABLE_HEADERS", "Check", "GateReport",
           "evaluate_gate", "failing_rules", "format_table", "merge_results", "table_rows", "write_junit"]

EXIT_PASS, EXIT_UNMEASURED = EXIT_OK, EXIT_NOT_MEASURED  # the table is compressor.common.errors
GATE_SCHEMA_VERSION = 2  # 2: decision rule, ci_low/ci_high and compared replace bound; report completeness
PASS, FAIL, UNMEASURED = "pass", "fail", "unmeasured"
TABLE_HEADERS = ("rule", "metric", "precision", "estimate", "CI low", "CI high", "budget", "margin", "status")
_MB = 2 ** 20
_PERCENTILE = {"max_p50_ms": ("latency_ms_median", 50.0), "max_p90_ms": ("latency_ms_p90", 90.0),
               "max_p99_ms": ("latency_ms_p99", 99.0)}
_TABLES = ("latency", "speedup", "memory")
_ACCURACY = ("min_accuracy", "max_accuracy_drop")
_TABLE_OF = {"min_speedup": "speedup", "max_memory_mb": "memory"}  # the other timed metrics read "latency"
_CHUNK_ELEMENTS = 2_000_000  # bootstrap resamples are drawn in blocks of at most this many values
# characters XML 1.0 cannot hold even escaped (an ANSI colour code in a runtime's error, ...)
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Check:
    """The verdict of one budget of one rule.

    Attributes:
        rule: the rule the budget belongs to.
        metric: the budget key (:data:`benchmarks._budgets.METRICS`).
        status: ``"pass"``, ``"fail"`` or ``"unmeasured"``.
        budget: the budget, in the metric's unit.
        measured: the point estimate (median, percentile, MB, top-1 ...), None when unmeasured.
        low, high: the ends of the two-sided confidence interval; None when the metric has no
            interval (memory, accuracy) or was not measured.
        margin: headroom of the value the decision rule compared (``compared``), in the metric's
            unit; >= 0 exactly when the check passed: ``budget - value`` for max-budgets,
            ``value - budget`` for min-budgets. None when unmeasured or failed on precision.
        marginal: the budget lies inside the interval: another decision rule could decide otherwise.
        detail: why, in words (the reason for an unmeasured check).
        decision: the decision rule applied (:data:`benchmarks._decision.DECISIONS`).
        compared: ``"estimate"``, ``"upper bound"`` or ``"lower bound"``.
        precision: the precision the target was measured at (None when nothing says); when the
            rule names another, the check failed on it.
    """

    rule: Rule
    metric: str
    status: str
    budget: float
    measured: float | None = None
    low: float | None = None
    high: float | None = None
    margin: float | None = None
    marginal: bool = False
    detail: str = ""
    decision: str = "point"
    compared: str = "estimate"
    precision: str | None = None

    def show(self, value: float | None) -> str:
        """``value`` rounded for printing, with the metric's unit; a dash for None."""
        unit = METRICS[self.metric].unit
        return "—" if value is None else f"{_num(value)} {unit}".rstrip()

    def summary(self) -> str:
        """One line: the estimate, both bounds, budget and margin with units, the rule, then the detail."""
        if self.measured is None:
            return f"{self.status} (budget {self.show(self.budget)}): {self.detail}"
        interval = (f"CI [{self.show(self.low)}, {self.show(self.high)}]" if self.low is not None
                    else "no CI (exact value)")
        return (f"estimate {self.show(self.measured)}, {interval}, budget {self.show(self.budget)}, "
                f"margin {self.show(self.margin)} ({self.compared}, decision {self.decision}): {self.detail}")

    def to_dict(self) -> dict[str, Any]:
        metric = METRICS[self.metric]
        rule = self.rule
        return {"rule": rule.name, "bundle": rule.bundle, "runtime": rule.runtime, "device": rule.device,
                "batch_size": rule.batch_size, "metric": self.metric, "direction": metric.direction,
                "unit": metric.unit, "status": self.status, "measured": self.measured, "ci_low": self.low,
                "ci_high": self.high, "budget": self.budget, "margin": self.margin, "compared": self.compared,
                "decision": self.decision, "marginal": self.marginal, "detail": self.detail,
                "precision": self.precision, "required_precision": rule.precision}


@dataclass(frozen=True)
class GateReport:
    """All checks of one gate run, in rule order then :data:`METRICS` order.

    Attributes:
        checks: the checks.
        confidence: the level of the intervals used.
        source: the budgets file, for the reports.
        decision: the decision rule of every check (:data:`benchmarks._decision.DECISIONS`).
        incomplete: empty for a complete report; else why it is not, and the rows it lacks (one
            line each). An incomplete report cannot pass: it exits :data:`EXIT_UNMEASURED`.
    """

    checks: tuple[Check, ...]
    confidence: float
    source: str = "<budgets>"
    decision: str = "point"
    incomplete: tuple[str, ...] = ()

    def _with(self, status: str) -> list[Check]:
        return [c for c in self.checks if c.status == status]

    @property
    def failed(self) -> list[Check]:
        return self._with(FAIL)

    @property
    def unmeasured(self) -> list[Check]:
        return self._with(UNMEASURED)

    @property
    def passed(self) -> list[Check]:
        return self._with(PASS)

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_VIOLATED` if any check failed, else :data:`EXIT_UNMEASURED` if any is
        unmeasured or the report is incomplete, else :data:`EXIT_PASS`."""
        if self.failed:
            return EXIT_VIOLATED
        return EXIT_UNMEASURED if self.unmeasured or self.incomplete else EXIT_PASS

    @property
    def verdict(self) -> str:
        return {EXIT_PASS: "pass", EXIT_VIOLATED: "violated", EXIT_UNMEASURED: "unmeasured"}[self.exit_code]

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable verdict (``schema_version`` 2), JSON-serialisable."""
        counts = {s: len(self._with(s)) for s in (PASS, FAIL, UNMEASURED)}
        counts["marginal"] = sum(c.marginal for c in self.checks)
        return {"schema_version": GATE_SCHEMA_VERSION, "kind": "cnn-compressor-gate", "budgets": self.source,
                "confidence": self.confidence, "decision": self.decision, "verdict": self.verdict,
                "exit_code": self.exit_code, "counts": counts, "report_complete": not self.incomplete,
                "incomplete": list(self.incomplete), "checks": [c.to_dict() for c in self.checks]}


# ----------------------------------------------------------------------------- measurements


class _NotMeasured(Exception):
    """The measurement a check needs is missing; the message says why."""


@dataclass(frozen=True)
class _Measurement:
    value: float
    interval: tuple[float, float] | None  # two-sided, at the gate's confidence; None: exact value
    note: str = ""


def _bootstrap_percentile_ci(samples: list[float], q: float, level: float, *, seed: int = 0,
                            resamples: int = DEFAULT_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap interval of the ``q``-th percentile (numpy's linear method) of ``samples``."""
    arr = np.asarray(samples, dtype=np.float64)
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples, dtype=np.float64)
    rows = max(1, _CHUNK_ELEMENTS // arr.size)
    for start in range(0, resamples, rows):
        stop = min(start + rows, resamples)
        stats[start:stop] = np.percentile(arr[rng.integers(0, arr.size, size=(stop - start, arr.size))], q, axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return float(low), float(high)


def _row_key(row: dict[str, Any]) -> tuple[str, str, str, int]:
    """A report row's (bundle, runtime, device, batch size), the order of :attr:`Rule.target`."""
    return row["bundle"], row["runtime"], row["device"], row["batch_size"]


class _Lookup:
    """Finds a rule's rows in a results dict and its accuracies, or says why it cannot."""

    def __init__(self, results: dict[str, Any], accuracy: dict[str, Any] | None, confidence: float):
        self.results = results
        self.confidence = confidence
        self.rows = {t: {_row_key(r): r for r in results[t]} for t in _TABLES}
        self.bundles = [b["name"] for b in results["bundles"]]
        self.entries = {b["name"]: b for b in results["bundles"]}
        self.report_baseline = next((b["name"] for b in results["bundles"] if b["role"] == "baseline"), None)
        self.accuracy = _accuracy_table(accuracy)

    def row(self, table: str, rule: Rule) -> dict[str, Any]:
        row = self.rows[table].get(rule.target)
        if row is not None:
            return row
        skipped = [s["reason"] for s in self.results["skipped"]
                   if (s["runtime"], s["device"]) == (rule.runtime, rule.device)]
        if skipped:
            raise _NotMeasured(f"{rule.runtime}/{rule.device} was skipped: {skipped[0]}")
        if rule.bundle not in self.bundles:
            raise _NotMeasured(f"bundle {rule.bundle!r} is not in the report (bundles: {', '.join(self.bundles)})")
        if table == "speedup" and rule.bundle == self.report_baseline:
            raise _NotMeasured(f"{rule.bundle!r} is the report's baseline; it has no speedup over itself")
        cut = "" if self.results["complete"] else " (the report is incomplete: the sweep did not finish)"
        raise _NotMeasured(f"the report has no {table} row for {rule.bundle} on {rule.runtime}/{rule.device} at "
                           f"batch {rule.batch_size}{cut}")

    def ok_row(self, table: str, rule: Rule) -> dict[str, Any]:
        row = self.row(table, rule)
        if row["status"] != "ok":
            raise _NotMeasured(f"the {table} measurement ended with {row['status']}: {row['error']}")
        return row

    # --- precision ---------------------------------------------------------------------------
    def shipped_precision(self, bundle: str, runtime: str) -> str | None:
        """The precision of the artifact ``bundle`` ships for ``runtime``; None for an unknown bundle."""
        entry = self.entries.get(bundle)
        if entry is None:
            return None
        if "artifact_precision" in entry:
            return bundle_artifact_precision(entry, runtime)
        return row_precision(self.results, {"bundle": bundle, "runtime": runtime})  # a version 1 report

    def precision(self, rule: Rule, metric: str) -> str | None:
        """The precision ``metric`` of ``rule`` was measured at: its row's, or for accuracy the
        shipped artifact's; None when there is no row to say."""
        if metric in _ACCURACY:
            return self.shipped_precision(rule.bundle, rule.runtime)
        row = self.rows[_TABLE_OF.get(metric, "latency")].get(rule.target)
        return row_precision(self.results, row) if row is not None else None

    def precision_mismatch(self, rule: Rule, measured: str) -> str:
        """Why the target's precision is not the rule's, e.g. ``bundle b ships fp32 on openvino (its
        INT8 artifact was refused: ...), rule asks int8``."""
        shipped = self.shipped_precision(rule.bundle, rule.runtime)
        if shipped is not None and shipped != measured:
            what = (f"bundle {rule.bundle} was measured at {measured} on {rule.runtime} (the benchmark forced "
                    f"--precision {measured}; the artifact computes in {shipped})")
        else:
            what = f"bundle {rule.bundle} ships {measured} on {rule.runtime}{self._why_not_int8(rule, measured)}"
        return f"{what}, rule asks {rule.precision}"

    def _why_not_int8(self, rule: Rule, measured: str) -> str:
        """Why a bundle ships no INT8 artifact that a rule asks for: refused at export (with the
        manifest's reason), or never asked for; empty when the rule asks for something else."""
        if measured == "int8" or rule.precision != "int8":
            return ""
        entry = self.entries.get(rule.bundle) or {}
        decision = (entry.get("int8_decision") or {}).get(rule.runtime) or {}
        if decision.get("decision") == "fp32" or entry.get("precision") == "int8":
            reason = decision.get("reason")
            return f" (its INT8 artifact was refused: {reason})" if reason else " (its INT8 artifact was refused)"
        return f" (the bundle was exported in {entry.get('precision') or measured})"

    # --- accuracy ----------------------------------------------------------------------------
    def _manifest_top1(self, bundle: str | None, kind: str, runtime: str) -> tuple[float, str] | None:
        """``accuracy[kind][runtime]`` of a bundle entry (its manifest's), and where it came from."""
        accuracy = (self.entries.get(bundle) or {}).get("accuracy") or {}
        value = (accuracy.get(kind) or {}).get(runtime)
        if value is None:
            return None
        split = f", {accuracy['split']} split" if accuracy.get("split") else ""
        samples = f", {accuracy['samples']} samples" if accuracy.get("samples") else ""
        return value, f"{bundle} {kind} top-1 {value:.4f} from its manifest{split}{samples}"

    def _given(self, bundle: str | None, runtime: str) -> tuple[float, str] | None:
        value = self.accuracy.get(bundle, {}).get(runtime) if bundle else None
        return None if value is None else (value, f"{bundle} top-1 {value:.4f} as given")

    def top1(self, bundle: str, runtime: str) -> tuple[float, str]:
        """A bundle's top-1 on ``runtime`` and where it came from: the accuracy given, else the
        shipped artifact's that its manifest records."""
        found = self._given(bundle, runtime) or self._manifest_top1(bundle, "shipped", runtime)
        if found is None:
            given = ", ".join(f"{b}/{r}" for b, by in self.accuracy.items() for r in by) or "none"
            raise _NotMeasured(f"no top-1 accuracy for {bundle} on {runtime} (given: {given}; its manifest records "
                               "none)")
        return found

    def baseline_top1(self, bundle: str, runtime: str) -> tuple[float, str]:
        """The top-1 ``bundle``'s drop is measured from, and where it came from: the baseline's given
        (``"baseline"``, else the report's baseline bundle), else the report baseline's manifest
        figure, else ``bundle``'s own FP32 top-1 from its manifest (the drop its precision costs)."""
        found = (self._given("baseline", runtime) or self._given(self.report_baseline, runtime)
                 or self._manifest_top1(self.report_baseline, "shipped", runtime)
                 or self._manifest_top1(bundle, "fp32", runtime))
        if found is None:
            raise _NotMeasured(f"no baseline accuracy on {runtime}: give accuracy['baseline'], or a report whose "
                               f"baseline bundle has one, or a bundle whose manifest records its fp32 accuracy")
        return found


def _accuracy_table(accuracy: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """``{bundle: {runtime: top1}}`` from either accepted form, values checked to be fractions.

    Accepts ``{bundle: {runtime: top1}, "baseline": {runtime: top1}}`` and a pipeline evaluate
    step's results (``{"top1": {"bundle": {...}, "baseline_bundle": {...}}}`` or the inner dict;
    a pipeline names its bundle directories ``bundle`` and ``baseline_bundle``).
    """
    if accuracy is None:
        return {}
    if not isinstance(accuracy, dict):
        raise TypeError(f"accuracy must be a mapping {{bundle: {{runtime: top1}}}}, got {type(accuracy).__name__}")
    if set(accuracy) == {"top1"} and isinstance(accuracy["top1"], dict):
        accuracy = accuracy["top1"]
    out: dict[str, dict[str, float]] = {}
    for bundle, by_runtime in accuracy.items():
        if not isinstance(by_runtime, dict):
            raise TypeError(f"accuracy[{bundle!r}] must map runtime names to top-1 fractions, got {by_runtime!r}")
        for runtime, top1 in by_runtime.items():
            if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 1:
                raise ValueError(f"accuracy[{bundle!r}][{runtime!r}] must be a top-1 fraction in [0, 1], got {top1!r}")
        out[bundle] = {r: float(v) for r, v in by_runtime.items()}
    return out


def _throughput_sps(batch_size: int, latency_ms: float) -> float:
    return batch_size * 1000.0 / latency_ms if latency_ms > 0 else float("inf")


def _median_ci(stored: list[float], stored_level: float, raw: list[float], level: float) -> tuple[float, float]:
    """The stored interval when its level is the gate's, else a fresh bootstrap of the raw values."""
    if abs(stored_level - level) < 1e-9:
        return stored[0], stored[1]
    return bootstrap_median_ci(raw, level=level)


def _measure(lookup: _Lookup, rule: Rule, metric: str) -> _Measurement:
    """The point estimate and interval of ``metric`` for ``rule``; raises _NotMeasured."""
    level = lookup.confidence
    if metric in _PERCENTILE or metric == "min_throughput_sps":
        stats = lookup.ok_row("latency", rule)["stats"]
        median_ci = _median_ci(stats["median_ci_ms"], stats["ci_level"], stats["samples_ms"], level)
        if metric == "min_throughput_sps":
            low, high = (_throughput_sps(rule.batch_size, ms) for ms in reversed(median_ci))
            return _Measurement(stats["throughput_sps"], (low, high), f"{stats['n']} samples")
        field, q = _PERCENTILE[metric]
        interval = median_ci if q == 50.0 else _bootstrap_percentile_ci(stats["samples_ms"], q, level)
        return _Measurement(stats[field], interval, f"{stats['n']} samples")
    if metric == "min_speedup":
        row = lookup.row("speedup", rule)
        practical = row["practical"]
        if practical is None:
            raise _NotMeasured(f"no practical speedup over {row['baseline']} (one of them did not run)")
        ci = _median_ci(practical["speedup_ci"], practical["ci_level"], practical["ratios"], level)
        return _Measurement(practical["speedup_median"], ci, f"over {row['baseline']}, {practical['rounds']} rounds")
    if metric == "max_memory_mb":
        row = lookup.ok_row("memory", rule)
        if row["measured_bytes"] is None:
            raise _NotMeasured("the memory row has no measured TRM")
        return _Measurement(row["measured_bytes"] / _MB, None, "measured TRM, no interval")
    top1, source = lookup.top1(rule.bundle, rule.runtime)
    if metric == "min_accuracy":
        return _Measurement(top1, None, source)
    base, base_source = lookup.baseline_top1(rule.bundle, rule.runtime)
    return _Measurement(base - top1, None, f"{base_source} - {source}")


def _check(lookup: _Lookup, rule: Rule, metric: str, confidence: float, decision: str) -> Check:
    """One budget of one rule: fail on the wrong precision, unmeasured without a measurement, else decided."""
    budget, precision = rule.budgets[metric], lookup.precision(rule, metric)
    try:
        m: _Measurement | None = _measure(lookup, rule, metric)
        why = ""
    except _NotMeasured as exc:
        m, why = None, str(exc)
    if rule.precision is not None and precision is not None and precision != rule.precision:
        low, high = m.interval if m is not None and m.interval is not None else (None, None)
        return Check(rule, metric, FAIL, budget, m.value if m else None, low, high,
                     detail=lookup.precision_mismatch(rule, precision), decision=decision, precision=precision)
    if m is None:
        return Check(rule, metric, UNMEASURED, budget, detail=why, decision=decision, precision=precision)
    return _decide(rule, metric, m, confidence, decision, precision)


def _decide(rule: Rule, metric: str, m: _Measurement, confidence: float, decision: str,
            precision: str | None = None) -> Check:
    """Apply ``decision`` (:func:`benchmarks._decision.decide`) to one measurement."""
    budget = rule.budgets[metric]
    direction = METRICS[metric].direction
    verdict = decide(m.value, m.interval, budget, direction=direction, rule=decision)
    relation = ("within" if verdict.within else "over") if direction == "max" else \
        ("within" if verdict.within else "under")
    detail = f"the {verdict.compared} is {relation} budget"
    if verdict.budget_in_interval:
        detail += f"; the budget lies inside the {confidence:.0%} CI"
    detail = f"{detail} ({m.note})" if m.note else detail
    low, high = m.interval if m.interval is not None else (None, None)
    return Check(rule, metric, PASS if verdict.within else FAIL, budget, m.value, low, high, verdict.margin,
                 verdict.budget_in_interval, detail, decision, verdict.compared, precision)


def _incomplete(results: dict[str, Any]) -> tuple[str, ...]:
    """Why a report marked ``"complete": false`` is not, and the rows its config asked for but it lacks."""
    if results["complete"]:
        return ()
    why = "interrupted" if results["interrupted"] else "not finished"
    absent = absent_rows(results)
    if not absent:
        return (f"the report is incomplete ({why}, \"complete\": false); no absent row can be named from its "
                "config, but rows may be missing",)
    return (f"the report is incomplete ({why}, \"complete\": false): {len(absent)} row(s) absent",
            *describe_rows(absent))


def evaluate_gate(budgets: Budgets, results: dict[str, Any], accuracy: dict[str, Any] | None = None, *,
                  decision: str | None = None) -> GateReport:
    """Check every budget of every rule against a benchmark report.

    Args:
        budgets: the rules (:func:`benchmarks._budgets.load_budgets`).
        results: a ``results.json`` dict (``benchmarks/results.schema.json``).
        accuracy: top-1 fractions ``{bundle: {runtime: top1}}``, optionally with ``"baseline":
            {runtime: top1}`` for ``max_accuracy_drop`` (without it the report's baseline bundle's
            entry is used); a pipeline evaluate step's ``{"top1": {...}}`` is accepted as well. A
            bundle it does not cover is judged on the accuracy its manifest recorded (see the
            module docstring).
        decision: ``"point"``, ``"strict"`` or ``"lenient"`` (:mod:`benchmarks._decision`);
            None takes the budgets file's (``point`` unless it says otherwise).

    Returns:
        The checks; :attr:`GateReport.exit_code` is the verdict.

    Raises:
        ValueError: ``results`` break the schema, an accuracy is not a fraction in [0, 1], or an
            unknown decision rule.
        TypeError: ``accuracy`` is not a mapping of mappings.
    """
    decision = check_decision(budgets.decision if decision is None else decision)
    validate_results(results)
    lookup = _Lookup(results, accuracy, budgets.confidence)
    checks = [_check(lookup, rule, metric, budgets.confidence, decision)
              for rule in budgets.rules for metric in rule.budgets]
    return GateReport(tuple(checks), budgets.confidence, budgets.source, decision, _incomplete(results))


# ----------------------------------------------------------------------------- re-measuring


def failing_rules(report: GateReport) -> list[Rule]:
    """The rules with at least one failed check, once each, in rule order (to re-measure them)."""
    return list({id(c.rule): c.rule for c in report.failed}.values())


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` with the latency/speedup/memory rows of a re-measurement ``new`` put in.

    A row of ``new`` replaces the ``old`` row of the same (runtime, device, batch size, bundle)
    or is appended. Bundles, skips and warnings of ``new`` that ``old`` lacks are added; the
    environment and config stay ``old``'s. Neither input is changed.
    """
    merged, new = copy.deepcopy(old), copy.deepcopy(new)
    for table in _TABLES:
        rows = {_row_key(r): r for r in merged[table]}
        rows.update((_row_key(r), r) for r in new[table])  # a replaced row keeps its place
        merged[table] = list(rows.values())
    names = {b["name"] for b in merged["bundles"]}
    merged["bundles"] += [b for b in new["bundles"] if b["name"] not in names]
    merged["skipped"] += [s for s in new["skipped"] if s not in merged["skipped"]]
    merged["warnings"] += [w for w in new["warnings"] if w not in merged["warnings"]]
    merged["complete"] = old["complete"] and new["complete"]
    merged["interrupted"] = old["interrupted"] or new["interrupted"]
    return merged


# ----------------------------------------------------------------------------- output


def table_rows(report: GateReport) -> list[tuple[str, ...]]:
    """One row of strings per check, for :data:`TABLE_HEADERS` (plain text or a rich table)."""
    return [(c.rule.name, c.metric, _precision_cell(c), c.show(c.measured), c.show(c.low), c.show(c.high),
             c.show(c.budget), c.show(c.margin), c.status.upper() + (" (budget inside CI)" if c.marginal else ""))
            for c in report.checks]


def _precision_cell(check: Check) -> str:
    """``int8``; ``fp32 (rule: int8)`` when the rule asks for another one."""
    shown = check.precision or "—"
    asked = check.rule.precision
    return shown if asked is None or asked == check.precision else f"{shown} (rule: {asked})"


def format_table(report: GateReport) -> str:
    """The pass/fail table, the details of non-clean checks, and the verdict line, as plain text."""
    rows = [TABLE_HEADERS, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADERS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {c.rule.name}: {c.metric}: {c.detail}" for c in report.checks if c.status != PASS or c.marginal]
    if notes:
        lines += ["", *notes]
    if report.incomplete:
        lines += ["", *(f"  {line}" for line in report.incomplete)]
    marginal = sum(c.marginal for c in report.checks)
    verdict = (f"gate {report.verdict} (exit {report.exit_code}): {len(report.passed)} passed, "
               f"{len(report.failed)} failed, {len(report.unmeasured)} unmeasured ({marginal} with the budget inside "
               f"the CI); decision rule {report.decision}, {report.confidence:.0%} confidence intervals"
               + ("; the report is incomplete" if report.incomplete else ""))
    lines += ["", verdict]
    return "\n".join(lines) + "\n"


def _xml(text: str) -> str:
    """``text`` with the characters XML cannot hold replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", text)


def write_junit(report: GateReport, path: str | Path) -> Path:
    """Write the checks as JUnit XML, atomically (a temporary file, then ``os.replace``).

    One ``<testsuite name="compressor gate">``; one ``<testcase classname="gate.<bundle>.<runtime>"
    name="<rule>: <metric>">`` per check, with ``<failure type="BudgetViolated">`` when it failed
    and ``<error type="Unmeasured">`` when it could not be measured. The messages (and a passing
    case's ``<system-out>``) carry the estimate, both bounds, budget, margin and decision rule;
    the suite's ``<properties>`` the budgets file, confidence, decision rule and verdict. An
    incomplete report adds ``<testcase classname="gate.report" name="report complete">`` with an
    ``<error type="Unmeasured">`` naming the absent rows.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    extra = 1 if report.incomplete else 0
    counts = {"tests": len(report.checks) + extra, "failures": len(report.failed),
              "errors": len(report.unmeasured) + extra, "skipped": 0}
    attrs = {k: str(v) for k, v in counts.items()} | {"time": "0.000"}
    root = ET.Element("testsuites", {"name": "compressor gate", **attrs})
    suite = ET.SubElement(root, "testsuite", {"name": "compressor gate", **attrs,
                                              "timestamp": datetime.datetime.now().isoformat(timespec="seconds")})
    props = ET.SubElement(suite, "properties")
    for name, value in (("budgets", report.source), ("confidence", report.confidence), ("decision", report.decision),
                        ("verdict", report.verdict), ("exit_code", report.exit_code)):
        ET.SubElement(props, "property", {"name": name, "value": _xml(str(value))})
    for c in report.checks:
        classname = f"gate.{c.rule.bundle.replace('.', '_')}.{c.rule.runtime}"
        case = ET.SubElement(suite, "testcase", {"classname": _xml(classname), "name": _xml(f"{c.rule.name}: "
                                                 f"{c.metric}"), "time": "0.000"})
        summary = _xml(c.summary())
        if c.status == FAIL:
            ET.SubElement(case, "failure", {"message": summary, "type": "BudgetViolated"}).text = summary
        elif c.status == UNMEASURED:
            ET.SubElement(case, "error", {"message": summary, "type": "Unmeasured"}).text = _xml(c.detail)
        else:
            ET.SubElement(case, "system-out").text = summary
    if report.incomplete:
        case = ET.SubElement(suite, "testcase", {"classname": "gate.report", "name": "report complete",
                                                 "time": "0.000"})
        ET.SubElement(case, "error", {"message": _xml(report.incomplete[0]), "type": "Unmeasured"}).text = \
            _xml("\n".join(report.incomplete))
    ET.indent(root)

    atomic_write_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))
    return path
