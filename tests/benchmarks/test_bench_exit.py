"""`compressor bench` exit codes a release pipeline can trust: 0 when every requested measurement
ran (speed warnings included), 4 when one failed (each cause on stderr), 2 for a bundle refused on load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import benchmarks._memory as _memory
import benchmarks._speed_verdict as _speed_verdict
import benchmarks._sweep as _sweep
from benchmarks._completeness import EXIT_MEASUREMENT_FAILED, failed_measurements
from benchmarks._gate import EXIT_UNMEASURED
from compressor.app.cli import main as cli

FAST = ["--min-runs", "3", "--max-runs", "6", "--min-seconds", "0", "--max-seconds", "0.3", "--warmup", "1",
        "--quiet", "--runtimes", "onnxruntime", "--threads", "1"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_exit")
    assert cli(["export", "lenet5", "--to", "onnx", "--output", str(root / "lenet"), "--batch-sizes", "2"]) == 0
    return root / "lenet"


def test_the_code_is_the_gates_not_measured():
    assert EXIT_MEASUREMENT_FAILED == EXIT_UNMEASURED == 4


def test_all_measured_exits_0_even_with_a_speed_warning(bundle, tmp_path, capsys, monkeypatch):
    class Slower:
        level, message = "slower", "synthetic: slower than its baseline"

    monkeypatch.setattr(_speed_verdict, "speed_warnings",
                        lambda results: [({"bundle": "lenet", "baseline": "base", "device": "cpu"}, Slower())])
    code = cli(["bench", str(bundle), "--batch-sizes", "1", "--no-memory", "--output", str(tmp_path / "r"), *FAST])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "speed warning (slower)" in err and "measurement failed" not in err


def test_a_failing_runtime_exits_4_and_prints_each_cause(bundle, tmp_path, capsys, monkeypatch):
    real, calls = _sweep.interleaved, []

    def fails_at_batch_2(*args, **kwargs):  # one call per batch size: batch 1 runs, batch 2 fails
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("synthetic kernel failure\nwith a second line")
        return real(*args, **kwargs)

    monkeypatch.setattr(_sweep, "interleaved", fails_at_batch_2)
    out = tmp_path / "report"
    code = cli(["bench", str(bundle), "--batch-sizes", "1,2", "--no-memory", "--output", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == EXIT_MEASUREMENT_FAILED, err
    assert ("measurement failed: bundle lenet, onnxruntime/cpu, batch 2, latency: error: RuntimeError: synthetic "
            "kernel failure with a second line") in err
    assert "batch 1," not in err  # only the failure is listed
    assert "1 requested measurement(s) failed" in err and "-> exit 4" in err
    results = json.loads((out / "results.json").read_text())  # the report is written all the same
    assert [r["status"] for r in results["latency"]] == ["ok", "error"]


def test_a_failing_memory_measurement_exits_4(bundle, tmp_path, capsys, patch_everywhere):
    def broken(*args, **kwargs):
        raise RuntimeError("synthetic: the memory subprocess died")

    patch_everywhere(_memory, "measure_memory", broken)
    code = cli(["bench", str(bundle), "--batch-sizes", "1", "--output", str(tmp_path / "r"), *FAST])
    err = capsys.readouterr().err
    assert code == EXIT_MEASUREMENT_FAILED, err
    assert "bundle lenet, onnxruntime/cpu, batch 1, memory: error: RuntimeError: synthetic: the memory" in err


def test_out_of_memory_counts_only_at_a_requested_batch_size():
    rows = [{"runtime": "onnxruntime", "device": "cuda", "batch_size": bs, "bundle": "b", "status": status,
             "error": error} for bs, status, error in ((256, "ok", None), (512, "oom", "CUDA out of memory"))]
    memory = [{**rows[1], "error": "not measured: the latency run at this batch size failed"}]
    results = {"latency": rows, "memory": memory}
    assert [r["batch_size"] for r in failed_measurements(results)] == [512]  # the memory row is its consequence
    assert failed_measurements(results, oom_is_failure=False) == []  # the default sweep stops at the first OOM


def test_an_edited_input_shape_is_refused_on_load_with_exit_2(bundle, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["input"]["shape"] = ["batch", 1, 28, 28]
    (edited / "manifest.json").write_text(json.dumps(manifest))
    code = cli(["bench", str(edited), "--batch-sizes", "1", "--no-memory", "--output", str(tmp_path / "r"), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "declares input shape ['batch', 1, 28, 28] but model.onnx's input" in err
    assert not (tmp_path / "r").exists()
