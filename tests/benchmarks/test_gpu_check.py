"""benchmarks/gpu_check.py: the no-CUDA exit, and its pure helpers on fakes (no GPU needed).

No test asserts how fast anything is: the latencies here are made up, and the CPU dry run only
checks that every part runs and what it records.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import Skip, exit_code, latency_row, render_summary, speedup_curve, sweep_batches

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _run_script(out: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT.parent, timeout=timeout, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_script_without_cuda_exits_2_and_writes_the_reason(tmp_path):
    out = tmp_path / "gpu"
    proc = _run_script(out, "--parts", "environment")
    assert proc.returncode == 2, proc.stderr
    assert "no CUDA device: " in proc.stderr
    assert str(out / "results.json") in proc.stderr  # where the figures are
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 1 and results["status"] == "no_cuda" and results["exit_code"] == 2
    assert "is_available() is False" in results["no_cuda_reason"] or "CPU-only" in results["no_cuda_reason"]
    assert list(results["parts"]) == list(gpu_check.PARTS)
    assert results["parts"]["environment"]["status"] == "ok"
    assert results["parts"]["environment"]["figures"]["cuda_available"] is False
    for name in list(gpu_check.PARTS)[1:]:
        part = results["parts"][name]
        assert part["status"] == "skipped" and part["reason"].startswith("no CUDA device: "), name
    assert "no CUDA device" in (out / "summary.md").read_text()


def test_script_resolves_a_relative_output_against_the_callers_directory(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), "rel_out", "--budget-s", "not-a-number"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=60, check=False)
    assert proc.returncode == 2 and "--budget-s" in proc.stderr  # argparse refuses; nothing is measured
    assert f"{tmp_path}/rel_out/results.json" in proc.stderr


def _fake_run(oom_at: int, calls: list[int]):
    def run(bs: int) -> dict:
        calls.append(bs)
        if bs >= oom_at:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {bs} GiB")
        return {"models": {}, "speedup": None}
    return run


def test_sweep_stops_at_the_first_out_of_memory_and_frees_once():
    calls, freed = [], []
    sweep = sweep_batches(_fake_run(64, calls), BATCHES, after_oom=lambda: freed.append(True))
    assert calls == [1, 2, 4, 8, 16, 32, 64]  # nothing after the OOM is tried
    assert [r["batch_size"] for r in sweep["rows"]] == [1, 2, 4, 8, 16, 32, 64]
    assert [r["status"] for r in sweep["rows"]] == ["ok"] * 6 + ["out_of_memory"]
    assert "OutOfMemoryError" in sweep["rows"][-1]["error"]
    assert sweep["stopped"] == {"batch_size": 64, "why": "out of memory"}
    assert freed == [True]
    assert exit_code({"torch_latency": {"status": "ok", "figures": {"fp32": sweep}}}) == 0  # OOM is a result


def test_sweep_records_an_error_and_stops():
    def run(bs: int) -> dict:
        if bs == 4:
            raise ValueError("shape mismatch")
        return {}

    sweep = sweep_batches(run, BATCHES)
    assert [r["status"] for r in sweep["rows"]] == ["ok", "ok", "failed"]
    assert sweep["rows"][-1]["error"] == "ValueError: shape mismatch" and "traceback" in sweep["rows"][-1]
    assert sweep["stopped"] == {"batch_size": 4, "why": "error"}


def test_sweep_skips_the_batches_the_time_budget_no_longer_covers():
    left = iter([100.0, 100.0, 0.0])  # the third batch finds the budget spent
    sweep = sweep_batches(lambda bs: {}, (1, 2, 4, 8), time_left=lambda: next(left))
    assert [(r["batch_size"], r["status"]) for r in sweep["rows"]] == [(1, "ok"), (2, "ok"), (4, "skipped"),
                                                                       (8, "skipped")]
    assert sweep["rows"][2]["reason"] == "time budget"
    assert sweep["stopped"] == {"batch_size": 4, "why": "time budget"}
    assert exit_code({"torch_latency": {"status": "ok", "figures": {"fp32": sweep}}}) == gpu_check.EXIT_INCOMPLETE


def test_out_of_memory_is_recognised_by_type_or_message():
    assert gpu_check.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert gpu_check.is_out_of_memory(RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for buffer"))
    assert gpu_check.is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not gpu_check.is_out_of_memory(RuntimeError("illegal memory access was encountered"))


def test_latency_row_pairs_the_rounds_and_compares_with_the_theoretical_speedup():
    base = [10.0, 10.4, 9.8, 10.1, 10.2]
    pruned = [6.0, 5.2, 4.9, 5.05, 5.1]  # per-round ratios 1.67, 2.0, 2.0, 2.0, 2.0
    row = latency_row({"unpruned": base, "pruned": pruned}, 8, theoretical=2.5)
    assert row["models"]["unpruned"]["latency_ms_median"] == pytest.approx(10.1)
    assert row["models"]["pruned"]["throughput_sps"] == pytest.approx(8 / 5.1e-3)
    assert row["models"]["unpruned"]["samples_ms"] == base  # raw samples kept
    speedup = row["speedup"]
    assert speedup["practical"] == pytest.approx(2.0) and speedup["rounds"] == 5
    assert speedup["practical_ci"][0] <= speedup["practical"] <= speedup["practical_ci"][1]
    assert speedup["theoretical"] == 2.5 and speedup["efficiency"] == pytest.approx(0.8)
    assert latency_row({"unpruned": base}, 8, theoretical=None)["speedup"] is None  # no pruned model


def test_speedup_curve_takes_the_measured_batches_only():
    rows = [{"batch_size": 1, "status": "ok", **latency_row({"unpruned": [4.0, 4.0], "pruned": [2.0, 2.0]}, 1, 2.0)},
            {"batch_size": 2, "status": "ok", **latency_row({"unpruned": [4.0]}, 2, None)},
            {"batch_size": 4, "status": "out_of_memory", "error": "OutOfMemoryError: ..."}]
    curve = speedup_curve(rows)
    assert [(c["batch_size"], c["practical"], c["theoretical"], c["efficiency"]) for c in curve] == [(1, 2.0, 2.0, 1.0)]
    summary = render_summary({"status": "ok", "exit_code": 0, "started_utc": "t", "wall_s": 1.0, "parts": {
        "torch_latency": {"status": "ok", "reason": None, "error": None, "wall_s": 1.0,
                          "figures": {"timer": "CUDA events", "fp16": {"rows": rows, "stopped": None}}}}})
    assert "## torch, fp16" in summary
    assert "| 1 | ok | 4.000 | 250 | 2.000 | 500 | 2.00x [2.00, 2.00] | 2.00x | 1.00 |" in summary
    assert "| 4 | out_of_memory |" in summary


def test_exit_code_tells_failures_budget_and_missing_dependencies_apart():
    ok = {"status": "ok", "figures": {}}
    missing = {"status": "skipped", "skip_kind": "dependency", "figures": {}}
    assert exit_code({"a": ok, "b": missing}) == gpu_check.EXIT_OK
    assert exit_code({"a": ok, "b": {"status": "skipped", "skip_kind": "budget"}}) == gpu_check.EXIT_INCOMPLETE
    assert exit_code({"a": ok, "b": {"status": "ok", "figures": {"truncated": "time budget"}}}) == 3
    assert exit_code({"a": {"status": "failed"}, "b": {"status": "skipped", "skip_kind": "budget"}}) == 1


def test_import_or_skip_skips_a_missing_package_but_not_a_broken_project_module():
    with pytest.raises(Skip, match="not_a_real_package_xyz") as info:
        gpu_check.import_or_skip("not_a_real_package_xyz")
    assert info.value.kind == "dependency"
    with pytest.raises(ModuleNotFoundError):
        gpu_check.import_or_skip("compressor._no_such_module")


@pytest.mark.slow
def test_cpu_dry_run_runs_every_part_it_can(tmp_path):
    out = tmp_path / "dry"
    proc = _run_script(out, "--device", "cpu", "--model", "resnet20", "--input-size", "3,32,32", "--batch-sizes",
                       "1,2", "--session-batch-sizes", "1,2", "--precisions", "fp32", "--seconds-per-batch",
                       "0.01", "--min-rounds", "3", "--threads", "2", "--no-bench-memory")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    parts = results["parts"]
    assert {n: p["status"] for n, p in parts.items()} == {
        "environment": "ok", "model": "ok", "prune": "ok", "torch_latency": "ok", "torch_memory": "skipped",
        "onnxruntime_cuda": "ok", "tensorrt": "skipped" if parts["tensorrt"]["status"] == "skipped" else "ok",
        "bench_harness": "ok"}
    assert parts["prune"]["figures"]["round_to"] == 8 and parts["prune"]["figures"]["theoretical_speedup"] > 1.5
    rows = parts["torch_latency"]["figures"]["fp32"]["rows"]
    assert [r["batch_size"] for r in rows] == [1, 2] and all(r["speedup"]["practical"] > 0 for r in rows)
    assert parts["bench_harness"]["figures"]["speedup"]
    assert (out / "summary.md").read_text().count("| 2 | ok |") >= 2
