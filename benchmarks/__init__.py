"""Benchmarks: sessions -> numbers, reports and gate verdicts (see the README for results).

Public API::

    results = run_benchmark(["bundle_pruned"], baseline="bundle_base",
                            config=BenchConfig(runtimes=("onnxruntime", "openvino"), batch_sizes=(1, 8, 32)))
    write_report(results, "report/")   # results.json/.csv, summary.md, PNG plots, report.html

The building blocks: :func:`summarize` and :func:`paired_speedup` (statistics of raw samples),
:func:`time_callable` and :func:`interleaved` (timing loops), :func:`measure_memory` (runtime
memory in a fresh subprocess). Importing this package imports neither torch nor any runtime SDK.
"""
from benchmarks._memory import MemoryOOM, MemoryResult, measure_memory
from benchmarks._report import validate_results, write_report
from benchmarks._stats import (
    LatencyStats,
    SpeedupStats,
    bootstrap_median_ci,
    efficiency,
    paired_speedup,
    summarize,
)
from benchmarks._sweep import BenchConfig, load_bench_bundles, run_benchmark
from benchmarks._timing import (
    TimingConfig,
    flush_denormals,
    has_subnormals,
    interleaved,
    time_callable,
)

__all__ = [
    "BenchConfig", "LatencyStats", "MemoryOOM", "MemoryResult", "SpeedupStats", "TimingConfig",
    "bootstrap_median_ci", "efficiency", "flush_denormals", "has_subnormals", "interleaved", "load_bench_bundles",
    "measure_memory", "paired_speedup", "run_benchmark", "summarize", "time_callable", "validate_results",
    "write_report",
]

# the release gate: budgets files and verdicts on a report
from benchmarks._budgets import BudgetError, Budgets, Rule, load_budgets, parse_budgets
from benchmarks._gate import (
    EXIT_PASS,
    EXIT_UNMEASURED,
    EXIT_VIOLATED,
    TABLE_HEADERS,
    Check,
    GateReport,
    evaluate_gate,
    failing_rules,
    format_table,
    merge_results,
    table_rows,
    write_junit,
)

__all__ += [
    "EXIT_PASS", "EXIT_UNMEASURED", "EXIT_VIOLATED", "TABLE_HEADERS", "BudgetError", "Budgets", "Check", "GateReport", "Rule",
    "evaluate_gate", "failing_rules", "format_table", "load_budgets", "merge_results", "parse_budgets",
    "table_rows", "write_junit",
]
