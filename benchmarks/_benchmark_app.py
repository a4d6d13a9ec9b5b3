"""OpenVINO's ``benchmark_app``: find it, build its command line, run it, parse what it reports.

Used by :mod:`benchmarks.openvino_agreement`, which compares its median latency with ours.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compressor.common.errors import CompressorError

__all__ = ["AgreementError", "benchmark_app_command", "find_benchmark_app", "parse_benchmark_app_report",
           "parse_benchmark_app_stdout", "run_benchmark_app"]

EXECUTABLE = "benchmark_app"
INFERENCE_PRECISION = "f32"
REPORT_JSON = "benchmark_report.json"
REPORT_CSV = "benchmark_report.csv"
REPORT_ROUNDING_MS = 0.005  # the report prints latencies with two decimals in ms


class AgreementError(CompressorError):
    """The comparison could not be made: benchmark_app is missing or failed, or its output could
    not be parsed. The message names the file or command at fault."""


# --- benchmark_app's output ------------------------------------------------------------------

_REPORT_KEYS = {  # execution_results entry -> our key; latencies in ms
    "latency (ms)": "latency_ms_median",
    "avg latency": "latency_ms_mean",
    "min latency": "latency_ms_min",
    "max latency": "latency_ms_max",
    "throughput": "throughput_fps",
    "total number of iterations": "iterations",
    "total execution time (ms)": "duration_ms",
}
_CONSOLE_LATENCY = re.compile(r"^\s*(Median|Average|Min|Max):\s+([0-9.]+)\s*(us|ms)\s*$")
_CONSOLE_KEYS = {"Median": "latency_ms_median", "Average": "latency_ms_mean", "Min": "latency_ms_min",
                 "Max": "latency_ms_max"}
_LOG_PREFIX = re.compile(r"^\[ *[A-Z]+ *\] ?")
_STEP = re.compile(r"^\[Step (\d+)/\d+\]")
_PROPERTY = re.compile(r"^ {2}([A-Z][A-Z0-9_]*): (.*)$")


def _number(key: str, text: Any, where: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise AgreementError(f"{where}: {key!r} is not a number ({text!r})") from None


def _results(execution: Mapping[str, Any], where: str) -> dict[str, float]:
    if "error" in execution:
        raise AgreementError(f"{where}: benchmark_app reports an error: {execution['error']}")
    if "latency (ms)" not in execution:
        raise AgreementError(f"{where}: no median latency ('latency (ms)') in the execution results; "
                             "was -latency_percentile changed from 50?")
    out = {ours: _number(key, execution[key], where) for key, ours in _REPORT_KEYS.items() if key in execution}
    if "iterations" in out:
        out["iterations"] = int(out["iterations"])
    return out


def parse_benchmark_app_report(folder: str | os.PathLike) -> dict[str, float]:
    """Read the statistics report that ``benchmark_app -report_folder FOLDER`` wrote.

    Reads ``benchmark_report.json`` (``-json_stats``) if present, else ``benchmark_report.csv``.

    Returns:
        ``latency_ms_median``, ``latency_ms_mean``, ``latency_ms_min``, ``latency_ms_max`` (ms,
        rounded by benchmark_app to 0.01 ms), ``throughput_fps``, ``iterations`` and
        ``duration_ms``, for the entries the report has (the median always).

    Raises:
        FileNotFoundError: neither report is in ``folder``.
        AgreementError: the report is malformed, records an error or has no median.
    """
    root = Path(folder)
    json_file, csv_file = root / REPORT_JSON, root / REPORT_CSV
    if json_file.is_file():
        try:
            data = json.loads(json_file.read_text())
            execution = data["execution_results"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise AgreementError(f"{json_file}: not a benchmark_app statistics report ({type(err).__name__}: "
                                 f"{err})") from err
        return _results(execution, str(json_file))
    if csv_file.is_file():
        return _results(_csv_section(csv_file.read_text(), "Execution results"), str(csv_file))
    raise FileNotFoundError(f"{root}: no benchmark_app report ({REPORT_JSON} or {REPORT_CSV}) in this folder")


def _csv_section(text: str, title: str) -> dict[str, str]:
    """``key;value`` lines of one titled section of benchmark_app's CSV report (blank-line separated)."""
    out: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if not line.strip():
            inside = False
        elif line.strip() == title:
            inside = True
        elif inside and ";" in line:
            key, _, value = line.partition(";")
            out[key.strip()] = value.strip()
    return out


def parse_benchmark_app_stdout(text: str) -> dict[str, Any]:
    """Parse benchmark_app's console log (its stdout).

    Returns:
        The latencies in ms (``latency_ms_median``, ``_mean``, ``_min``, ``_max``; printed in us
        below 1 ms), ``throughput_fps``, ``iterations``, ``duration_ms`` where present, and
        ``properties``: the compiled model's properties it logs in step 8, as strings
        (``{"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY", ...}``).

    Raises:
        AgreementError: there is no ``Median:`` line (the run failed or used another percentile).
    """
    out: dict[str, Any] = {}
    properties: dict[str, str] = {}
    step = 0
    for raw in text.splitlines():
        marker = _STEP.match(raw)
        if marker:
            step = int(marker.group(1))
            continue
        line = _LOG_PREFIX.sub("", raw)
        if step == 8:
            prop = _PROPERTY.match(line)
            if prop:
                properties[prop.group(1)] = prop.group(2).strip()
            continue
        latency = _CONSOLE_LATENCY.match(line)
        if latency:
            value = float(latency.group(2))
            out[_CONSOLE_KEYS[latency.group(1)]] = value / 1000.0 if latency.group(3) == "us" else value
        elif m := re.match(r"^Count:\s+(\d+) iterations", line):
            out["iterations"] = int(m.group(1))
        elif m := re.match(r"^Duration:\s+([0-9.]+) ms", line):
            out["duration_ms"] = float(m.group(1))
        elif m := re.match(r"^Throughput:\s+([0-9.]+) FPS", line):
            out["throughput_fps"] = float(m.group(1))
    if "latency_ms_median" not in out:
        raise AgreementError("benchmark_app's output has no 'Median:' latency line; its last lines were:\n"
                             + _tail(text))
    out["properties"] = properties
    return out


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _merge(report: Mapping[str, float] | None, console: Mapping[str, Any]) -> dict[str, Any]:
    """The report's figures, each refined by the console's where the two agree to the report's
    rounding (the console prints microseconds below 1 ms)."""
    if report is None:
        return {**console, "source": "stdout"}
    out: dict[str, Any] = {**report, "properties": console.get("properties", {}), "source": "report"}
    for key in ("latency_ms_median", "latency_ms_mean", "latency_ms_min", "latency_ms_max"):
        if key in console and key in report and abs(console[key] - report[key]) <= REPORT_ROUNDING_MS + 1e-9:
            out[key] = console[key]
            out["source"] = "report+stdout"
    return out


# --- running benchmark_app -------------------------------------------------------------------

def find_benchmark_app() -> Path:
    """The ``benchmark_app`` executable: next to ``sys.executable`` (the venv's bin), else on PATH.

    Raises:
        AgreementError: neither has it; the message says how to get it.
    """
    beside = Path(sys.executable).parent / EXECUTABLE
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(EXECUTABLE)
    if found:
        return Path(found)
    raise AgreementError(f"{EXECUTABLE} not found next to {sys.executable} or on PATH; it ships with the "
                         "openvino package (`pip install openvino`)")


def benchmark_app_command(executable: str | os.PathLike, xml: str | os.PathLike, input_shape: Sequence[int],
                          seconds: int, config_file: str | os.PathLike,
                          report_folder: str | os.PathLike) -> list[str]:
    """The benchmark_app command line for a batch-1, LATENCY-hint, f32, synchronous CPU run.

    Args:
        executable: the benchmark_app path.
        xml: the IR.
        input_shape: the batch-1 input shape, e.g. ``(1, 3, 224, 224)``.
        seconds: run time (``-t``, whole seconds).
        config_file: a ``-load_config`` JSON file, ``{"CPU": {"INFERENCE_NUM_THREADS": 2, ...}}``
            (benchmark_app refuses ``-nthreads`` together with ``-hint``).
        report_folder: an existing folder for the JSON statistics report.
    """
    shape = "[" + ",".join(str(int(d)) for d in input_shape) + "]"
    return [str(executable), "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync", "-b", "1",
            "-data_shape", shape, "-inference_only", "true", "-ip", "f32", "-infer_precision", INFERENCE_PRECISION,
            "-t", str(int(seconds)), "-load_config", str(config_file),
            "-report_type", "no_counters", "-report_folder", str(report_folder), "-json_stats"]


def run_benchmark_app(command: Sequence[str], report_folder: str | os.PathLike,
                      timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``command`` (from :func:`benchmark_app_command`) and return its figures.

    Returns:
        :func:`parse_benchmark_app_report`'s figures (the console's where it has more digits), the
        compiled-model ``properties``, ``source`` (``"report"``, ``"report+stdout"`` or
        ``"stdout"``) and ``report_folder``.

    Raises:
        AgreementError: the executable is missing, it failed or timed out, or its output has no median.
    """
    folder = Path(report_folder)
    folder.mkdir(parents=True, exist_ok=True)  # benchmark_app does not create it
    try:
        proc = subprocess.run(list(command), check=False, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError as err:
        raise AgreementError(f"{command[0]}: cannot run it ({err})") from err
    except subprocess.TimeoutExpired as err:
        raise AgreementError(f"{command[0]} did not finish within {timeout_s:.0f} s") from err
    log = proc.stdout + ("\n" + proc.stderr if proc.stderr else "")
    if proc.returncode != 0:
        raise AgreementError(f"{command[0]} exited with status {proc.returncode}; its last lines:\n{_tail(log)}")
    console = parse_benchmark_app_stdout(log)
    try:
        report = parse_benchmark_app_report(folder)
    except FileNotFoundError:
        report = None  # fall back to the console line
    return {**_merge(report, console), "report_folder": str(folder)}
