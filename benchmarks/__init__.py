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
from benchmarks._alignment import ProbeError, probe_alignment
from benchmarks._cli_types import fraction, fraction_below_one, non_negative_float, non_negative_int, open_fraction, parse_assignments, positive_float, positive_int, positive_int_list, seed
from benchmarks._command import BENCH_DESCRIPTION, add_bench_arguments, run_bench, run_command, runtime_options
from benchmarks._completeness import EXIT_MEASUREMENT_FAILED, describe_failure, failed_measurements
from benchmarks._decision import DECISIONS, decide
from benchmarks._env import collect_environment
from benchmarks._speed_verdict import speed_verdict

__all__ += [
    "EXIT_PASS", "EXIT_UNMEASURED", "EXIT_VIOLATED", "TABLE_HEADERS", "BudgetError", "Budgets", "Check", "GateReport", "Rule",
    "evaluate_gate", "failing_rules", "format_table", "load_budgets", "merge_results", "parse_budgets",
    "table_rows", "write_junit",
]

__all__ += ["BENCH_DESCRIPTION", "DECISIONS", "EXIT_MEASUREMENT_FAILED", "ProbeError", "add_bench_arguments", "collect_environment", "decide", "describe_failure", "failed_measurements", "fraction", "fraction_below_one", "non_negative_float", "non_negative_int", "open_fraction", "parse_assignments", "positive_float", "positive_int", "positive_int_list", "probe_alignment", "run_bench", "run_command", "runtime_options", "seed", "speed_verdict"]
