"""The ``bench`` command: ``compressor bench`` and the torch-free ``python -m benchmarks`` are this one.

Edge devices rarely have torch (a 5 GB install) and never need it to time an exported bundle, so
the arguments, the run, the printed tables and the exit codes live here, below ``compressor``:
``compressor bench`` adds :func:`add_bench_arguments` to its subparser and calls :func:`run_bench`;
``python -m benchmarks BUNDLE...`` does the same with :func:`main`. Neither path imports torch or
``compressor`` for the CPU runtimes (onnxruntime, OpenVINO); ``--runtimes torch`` or
``--devices cuda`` need torch, as they always did.

Exit codes: 0 every requested measurement ran (speed warnings included); 2 bad input (a bad
option, a bundle refused on load, a refused ``--output``); 4 a requested measurement failed (the
gate's "not measured"); 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from compressor.common.errors import EXIT_BAD_INPUT, exit_code_for, EXIT_INTERRUPTED, EXIT_OK
from compressor.common.outputs import claim_output, FORCE_HELP

from benchmarks._cli_types import (non_negative_float, non_negative_int, parse_assignments, positive_float,
                                   positive_int, seed)
from benchmarks._completeness import describe_failure, EXIT_MEASUREMENT_FAILED, failed_measurements
from benchmarks._precision import REQUESTS, row_precision, speedup_precision
from benchmarks._sweep import BenchConfig, run_benchmark
from benchmarks._timing import TimingConfig
from benchmarks._report import write_report
from rich.console import Console
from rich.table import Table
import benchmarks._speed_verdict as _speed_verdict

__all__ = ["BENCH_DESCRIPTION", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "add_bench_arguments", "bench_config",
           "build_parser", "format_warning", "main", "report_failures", "run_bench", "run_command", "runtime_options"]

BENCH_DESCRIPTION = (
    "Benchmark exported bundles on each runtime and batch size. With --baseline, the baseline and the candidates "
    "are timed in interleaved rounds and the practical speedup is set against the theoretical (FLOPs) one. A "
    "candidate slower than its baseline, or below 80% efficiency (practical / theoretical), is a speed warning: "
    "printed in bold red, listed at the top of summary.md and report.html. It does not change the exit code (0); "
    "gate on speed with `compressor gate` and a min_speedup budget. Exit codes: 0 every requested measurement ran "
    "(speed warnings included); 4 a requested measurement failed (an error row, or out of memory at a batch size "
    "given with --batch-sizes; each cause is printed on stderr; the gate's 'not measured' code); 2 bad input (a "
    "bad option, a bundle refused on load); 130 interrupted.")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench command's arguments to ``parser`` (``compressor bench`` and ``python -m benchmarks``)."""
    b = parser
    b.add_argument("bundles", nargs="+", help="bundle directories written by `compressor export`")
    b.add_argument("--baseline", help="the bundle to compare against (e.g. the unpruned model)")
    b.add_argument("--runtimes", help="comma-separated: torch, onnxruntime, openvino, tensorrt (default: every "
                                      "runtime the bundles have an artifact for)")
    b.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda (default: cpu)")
    b.add_argument("--batch-sizes", help="comma-separated (default: 1,2,4,...,64 on CPU; up to 512 on CUDA)")
    b.add_argument("--threads", type=positive_int, help="intra-op CPU threads of every session (default: the cores "
                                               "available to this process)")
    b.add_argument("--hint", default="latency", choices=["latency", "throughput"], help="OpenVINO performance hint")
    b.add_argument("--precision", default="auto", choices=list(REQUESTS),
                   help="auto (default): open each bundle's artifact at the precision it computes in (an INT8 "
                        "bundle ships FP32 where its INT8 artifact was refused); fp32, fp16 or int8 force it on "
                        "every artifact (OpenVINO runs an FP32 IR in fp16; the other runtimes refuse a mismatch)")
    b.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls per bundle at each batch size")
    b.add_argument("--min-runs", type=positive_int, default=10, help="timed rounds per batch size, at least")
    b.add_argument("--max-runs", type=positive_int, default=500, help="timed rounds per batch size, at most")
    b.add_argument("--min-seconds", type=non_negative_float, default=2.0,
                   help="time each batch size for at least this long")
    b.add_argument("--max-seconds", type=positive_float, default=20.0, help="and at most this long")
    b.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    b.add_argument("--memory-runs", type=positive_int, default=2, help="batches run in each memory subprocess")
    b.add_argument("--inputs", help=".npy file of real samples (N,C,H,W); default: random-normal batches")
    b.add_argument("--seed", type=seed, default=0)
    b.add_argument("--runtime-option", action="append", metavar="RUNTIME.OPTION=VALUE",
                   help="a runtime constructor option, e.g. onnxruntime.allow_spinning=true (repeatable)")
    b.add_argument("--output", required=True, help="report directory (replaced atomically)")
    b.add_argument("--force", action="store_true", help=FORCE_HELP)
    b.add_argument("--quiet", action="store_true", help="no progress bar")


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, e.g. 1,8,32; got {text!r}") from None


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())


def runtime_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["onnxruntime.allow_spinning=true"]`` -> ``{"onnxruntime": {"allow_spinning": True}}``.

    Raises:
        ValueError: an item is not ``RUNTIME.OPTION=VALUE``.
    """
    form = "RUNTIME.OPTION=VALUE"
    for item in items:
        runtime, dot, option = item.partition("=")[0].partition(".")
        if not dot or not runtime.strip() or not option.strip():
            raise ValueError(f"--runtime-option must look like {form}, got {item!r}")
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_assignments(items, "--runtime-option", form).items():
        runtime, _, option = key.partition(".")
        out.setdefault(runtime.strip(), {})[option.strip()] = value
    return out


def bench_config(args: argparse.Namespace) -> Any:
    """The ``BenchConfig`` of parsed bench arguments; ValueError names a bad value."""

    return BenchConfig(
        runtimes=_names(args.runtimes), devices=_names(args.devices) or (),
        batch_sizes=_int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes is not None else None,
        threads=args.threads, hint=args.hint, precision=args.precision,
        timing=TimingConfig(warmup=args.warmup, min_runs=args.min_runs, max_runs=args.max_runs,
                            min_seconds=args.min_seconds, max_seconds=args.max_seconds),
        memory=not args.no_memory, memory_runs=args.memory_runs, inputs=args.inputs, seed=args.seed,
        runtime_options=runtime_options(args.runtime_option or []))


def run_bench(args: argparse.Namespace) -> int:
    """Measure the bundles across runtimes and batch sizes, write the report directory, return the exit code.

    Raises:
        ValueError: a bad option or a refused ``--output`` (``OutputRefused``); the caller exits 2.
        runtimes.BundleError: a bundle refused on load; the caller exits 2.
    """

    config = bench_config(args)
    claim_output(args.output, "bench", force=args.force, inputs=(*args.bundles, args.baseline, args.inputs))
    with warnings.catch_warnings():  # printed once, below, from the results
        warnings.simplefilter("ignore", RuntimeWarning)
        results = run_benchmark(args.bundles, args.baseline, config, progress=not args.quiet)
    try:
        out = write_report(results, args.output)
    except KeyboardInterrupt:  # write_report holds Ctrl-C back until the report is complete
        print(f"interrupted: the results measured so far are in {args.output}/", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_speedups(results)
    print_speed_warnings(results)  # a warning, not a failure: the exit code stays 0
    for message in results["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    if results["interrupted"]:
        print(f"interrupted: the results measured so far are in {out}/", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"report written to {out}/ (summary.md, report.html, results.json, results.csv, plots)")
    return report_failures(results, oom_is_failure=args.batch_sizes is not None, out=out)


def report_failures(results: dict[str, Any], *, oom_is_failure: bool, out: Path) -> int:
    """Each failed measurement's cause on stderr; 4 (the gate's "not measured") if any failed, else 0."""

    failed = failed_measurements(results, oom_is_failure=oom_is_failure)
    for row in failed:
        print(f"measurement failed: {describe_failure(row)}", file=sys.stderr)
    if not failed:
        return EXIT_OK
    print(f"error: {len(failed)} requested measurement(s) failed (causes above and in {out}/summary.md) "
          f"-> exit {EXIT_MEASUREMENT_FAILED}", file=sys.stderr)
    return EXIT_MEASUREMENT_FAILED


def print_speedups(results: dict[str, Any]) -> None:
    """The practical vs theoretical speedups (or, without a baseline, the median latencies)."""

    left = ("runtime", "device", "candidate", "bundle", "precision")
    if results["speedup"]:
        table = Table(title="practical vs theoretical speedup (median of interleaved per-round ratios)")
        for col in ("runtime", "device", "batch", "candidate", "precision", "practical", "theoretical", "int8 factor",
                    "efficiency"):
            table.add_column(col, justify="left" if col in left else "right")
        for r in results["speedup"]:
            practical, factor = r["practical"], r.get("int8_factor")
            table.add_row(r["runtime"], r["device"], str(r["batch_size"]), r["bundle"], _speedup_precision(results, r),
                          f"{practical['speedup_median']:.2f}x" if practical else "-",
                          f"{r['theoretical']:.2f}x" if r["theoretical"] else "-",
                          f"{factor:.2f}x" if factor else "-",
                          f"{r['efficiency']:.2f}" if r["efficiency"] is not None else "-")
    else:
        table = Table(title="median latency per batch")
        for col in ("runtime", "device", "batch", "bundle", "precision", "median ms", "samples/s"):
            table.add_column(col, justify="left" if col in left else "right")
        for r in results["latency"]:
            stats = r["stats"]
            table.add_row(r["runtime"], r["device"], str(r["batch_size"]), r["bundle"], row_precision(results, r),
                          f"{stats['latency_ms_median']:.3f}" if stats else r["status"],
                          f"{stats['throughput_sps']:.1f}" if stats else "-")
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # logs do not wrap: never truncate names


def _speedup_precision(results: dict[str, Any], row: dict[str, Any]) -> str:
    """``int8`` when candidate and baseline share it, else ``int8 vs fp32`` (candidate vs baseline)."""
    p = speedup_precision(results, row)
    return f"{p.precision} vs {p.baseline}" if p.differs else p.precision


def print_speed_warnings(results: dict[str, Any]) -> None:
    """One bold red line on stderr per candidate row slower than its baseline or under the efficiency floor."""

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    for row, verdict in _speed_verdict.speed_warnings(results):
        console.print(f"speed warning ({verdict.level}): {row['bundle']} vs {row['baseline']} on {row['device']}: "
                      f"{verdict.message}", style="bold red", markup=False)


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   line: str | None = None) -> str:
    """Warnings on the command line read as one line each, without the library's source line."""
    return f"warning: {message}\n"


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks`` (the same arguments as ``compressor bench``)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=BENCH_DESCRIPTION + " This entry point needs neither torch nor the compressor package: run it on "
                                        "the target device (see the README, 'Benchmark on the target device').")
    add_bench_arguments(parser)
    return parser


def run_command(command: Callable[[], int]) -> int:
    """Run one command-line command and map what escapes it to the project's exit codes.

    Warnings print as one ``warning:`` line each. An exception that escapes ``command`` exits with the
    code of :func:`compressor.common.errors.exit_code_for`, the one table of both command lines: Ctrl-C
    is 130 with one line (outputs are swapped in only when complete, so an interrupt leaves the old
    ones); a project error (a ``CompressorError``) or bad input (``ValueError``, a missing or existing
    file, a missing package) prints ``error:`` and the message, and exits with its class's code (2 bad
    input, 3 parity failed ...). Anything else is an internal error and keeps its traceback. Shared by
    ``compressor`` and ``python -m benchmarks``.
    """
    previous_format = warnings.formatwarning
    warnings.formatwarning = format_warning
    try:
        return command()
    except BaseException as exc:  # SystemExit (argparse) and internal errors map to None: re-raised
        code = exit_code_for(exc)
        if code is None:
            raise
        print("interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {exc}", file=sys.stderr)
        return code
    finally:
        warnings.formatwarning = previous_format


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks BUNDLE... --output DIR``: the torch-free ``compressor bench``; returns the exit code."""
    return run_command(lambda: run_bench(build_parser().parse_args(argv)))
