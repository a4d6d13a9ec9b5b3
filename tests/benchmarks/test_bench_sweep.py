"""benchmarks._sweep and ``compressor bench``: bundles x runtimes x batch sizes -> the report directory.

Timings are only compared with each other (a 16x cheaper model against its baseline, interleaved),
never with an absolute time.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from matplotlib.image import imread

import benchmarks._memory as _memory
import benchmarks._sweep as _sweep
from benchmarks._report import PLOT_FILES, REPORT_FILES, validate_results, write_report
from benchmarks._sweep import BenchConfig, load_bench_bundles, run_benchmark
from benchmarks._timing import TimingConfig
from compressor.app.cli import main as cli
from runtimes import BundleError, get_runtime

pytestmark = pytest.mark.skipif(get_runtime("openvino").is_available() is not None,
                                reason=f"openvino unavailable: {get_runtime('openvino').is_available()}")
QUICK = TimingConfig(warmup=1, min_runs=4, max_runs=12, min_seconds=0.0, max_seconds=0.6)
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """resnet20 unpruned and pruned to 25% of its channels (about 1/16 of the FLOPs), and a
    lenet5 bundle, which takes a different input (1x32x32)."""
    root = tmp_path_factory.mktemp("bench")
    # --round-to 1: at the default alignment (16 on AVX-512) resnet20's 16-channel groups are kept whole
    assert cli(["prune", "--model", "resnet20", "--ratio", "0.75", "--round-to", "1", "--no-speed-check",
                "--output", str(root / "pruned_model"), "--quiet"]) == 0
    for name, source, extra in (("base", "resnet20", []), ("pruned", str(root / "pruned_model"), []),
                                ("lenet", "lenet5", ["--to", "onnx"])):
        assert cli(["export", source, "--output", str(root / name), "--batch-sizes", "2", *extra]) == 0
    return {"base": root / "base", "pruned": root / "pruned", "lenet": root / "lenet"}


@pytest.fixture(scope="module")
def sweep(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A tiny sweep, onnxruntime and openvino at batches 1 and 8, memory included; and its report."""
    config = BenchConfig(runtimes=("onnxruntime", "openvino"), batch_sizes=(1, 8), threads=2, timing=QUICK,
                         memory_runs=1)
    results = run_benchmark([bundles["pruned"]], bundles["base"], config, progress=False)
    out = write_report(results, tmp_path_factory.mktemp("report") / "report")
    return results, out


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_tiny_sweep_writes_every_file(sweep):
    results, out = sweep
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    for name in PLOT_FILES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(PLOT_FILES)


def test_results_json_validates_against_the_schema(sweep):
    _, out = sweep
    data = json.loads((out / "results.json").read_text())
    validate_results(data)
    schema = json.loads((PROJECT / "benchmarks" / "results.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(data)
    assert data["schema_version"] == 2 and data["complete"] is True and data["interrupted"] is False
    env = data["environment"]
    assert env["cpu_cores_available"] >= 1 and env["versions"]["onnxruntime"] and env["versions"]["openvino"]
    assert data["config"]["threads"] == 2
    assert [b["role"] for b in data["bundles"]] == ["baseline", "candidate"]
    assert all(b["weights_trained"] is False for b in data["bundles"])  # random init, recorded by export


def test_every_combination_is_measured_with_raw_samples(sweep):
    results, _ = sweep
    rows = {(r["runtime"], r["batch_size"], r["bundle"]): r for r in results["latency"]}
    assert set(rows) == {(rt, bs, b) for rt in ("onnxruntime", "openvino") for bs in (1, 8) for b in ("base", "pruned")}
    for (runtime, bs, _), row in rows.items():
        assert row["status"] == "ok" and row["error"] is None
        stats = row["stats"]
        assert stats["batch_size"] == bs and stats["n"] == len(stats["samples_ms"]) >= QUICK.min_runs
        assert stats["latency_ms_median"] == pytest.approx(float(np.median(stats["samples_ms"])))
        assert stats["throughput_sps"] == pytest.approx(bs / stats["latency_ms_median"] * 1000)
        assert row["settings"]["runtime"] == runtime and row["settings"]["threads"] == 2
        assert row["settings"]["flush_denormal"] is True
        if runtime == "onnxruntime":  # two sessions take turns: a spinning pool would slow the other
            assert row["settings"]["allow_spinning"] is False
    assert any("spinning is off" in w for w in results["warnings"])


def test_speedup_is_paired_and_set_against_the_flops_ratio(sweep, bundles):
    results, _ = sweep
    flops_ratio = _manifest(bundles["base"])["cost"]["flops"] / _manifest(bundles["pruned"])["cost"]["flops"]
    assert flops_ratio > 8  # 25% of the channels: about 1/16 of the FLOPs
    lat = {(r["runtime"], r["batch_size"], r["bundle"]): r["stats"]["samples_ms"] for r in results["latency"]}
    assert len(results["speedup"]) == 4
    for row in results["speedup"]:
        base, cand = lat[row["runtime"], row["batch_size"], "base"], lat[row["runtime"], row["batch_size"], "pruned"]
        ratios = np.array(base) / np.array(cand)  # the same rounds, pair by pair
        assert row["practical"]["ratios"] == pytest.approx(ratios.tolist())
        assert row["practical"]["speedup_median"] == pytest.approx(float(np.median(ratios)))
        assert row["theoretical"] == pytest.approx(flops_ratio)
        assert row["efficiency"] == pytest.approx(row["practical"]["speedup_median"] / flops_ratio)
    # relative, not absolute: a model with 1/16 of the FLOPs is faster at batch 8 than its baseline
    at_8 = [r["practical"]["speedup_median"] for r in results["speedup"] if r["batch_size"] == 8]
    assert min(at_8) > 1.0


def test_memory_rows_sit_next_to_the_theoretical_trm(sweep, bundles):
    results, _ = sweep
    assert len(results["memory"]) == 8
    for row in results["memory"]:
        cost = _manifest(bundles[row["bundle"]])["cost"]
        assert row["status"] == "ok"
        assert row["theoretical_bytes"] == cost["mps_bytes"] + cost["fm_elements"] * 4 * row["batch_size"]
        assert row["measured_bytes"] > 0 and row["peak_bytes"] > row["measured_bytes"]
        assert row["detail"]["batch_size"] == row["batch_size"] and row["detail"]["threads"] == 2


def test_csv_and_markdown_hold_the_table(sweep):
    results, out = sweep
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(results["latency"]) == 8
    medians = {(r["runtime"], r["batch_size"], r["bundle"]): r["stats"]["latency_ms_median"] for r in results["latency"]}
    for row in rows:
        assert float(row["latency_ms_median"]) == pytest.approx(medians[row["runtime"], int(row["batch_size"]), row["bundle"]])
    md = (out / "summary.md").read_text()
    assert "| runtime | device | batch | bundle |" in md
    assert sum(line.startswith("| onnxruntime | cpu |") or line.startswith("| openvino | cpu |")
               for line in md.splitlines()) >= 8
    efficiency = results["speedup"][0]["efficiency"]
    assert f"{efficiency:.0%}" in md


def test_missing_bundle_is_named(bundles, tmp_path):
    with pytest.raises(BundleError, match="nowhere"):
        run_benchmark([tmp_path / "nowhere"], bundles["base"], BenchConfig(batch_sizes=(1,)), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="empty"):
        load_bench_bundles([tmp_path / "empty"])


def test_unknown_runtime_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown runtime 'tflite'.*onnxruntime.*openvino"):
        BenchConfig(runtimes=("onnxruntime", "tflite"))


@pytest.mark.parametrize("batch_sizes", [(0,), (1, -2), (1, 1)])
def test_bad_batch_sizes(batch_sizes):
    with pytest.raises(ValueError, match="batch"):
        BenchConfig(batch_sizes=batch_sizes)


def test_baseline_with_another_input_shape(bundles):
    with pytest.raises(ValueError, match=r"\[1, 32, 32\].*\[3, 32, 32\]|\[3, 32, 32\].*\[1, 32, 32\]"):
        load_bench_bundles([bundles["lenet"]], bundles["base"])


def test_requested_runtime_without_its_artifact(bundles):
    with pytest.raises(ValueError, match=r"'openvino' artifact.*lenet"):
        run_benchmark([bundles["lenet"]], config=BenchConfig(runtimes=("openvino",), batch_sizes=(1,)),
                      progress=False)


def test_unusable_device_is_skipped_with_the_reason(bundles):
    only_cuda = BenchConfig(runtimes=("onnxruntime",), devices=("cuda",), batch_sizes=(1,), memory=False)
    cuda_reason = get_runtime("onnxruntime").is_available(device="cuda")
    if cuda_reason is None:
        pytest.skip("this machine has a CUDA onnxruntime")
    with pytest.raises(ValueError, match="none of the requested runtimes can run here"):
        run_benchmark([bundles["base"]], config=only_cuda, progress=False)
    both = BenchConfig(runtimes=("onnxruntime",), devices=("cpu", "cuda"), batch_sizes=(1,), memory=False,
                       timing=QUICK)
    with pytest.warns(RuntimeWarning, match="skipping onnxruntime on cuda"):
        results = run_benchmark([bundles["base"]], config=both, progress=False)
    assert results["skipped"] == [{"runtime": "onnxruntime", "device": "cuda", "reason": cuda_reason}]
    assert {r["device"] for r in results["latency"]} == {"cpu"}
    validate_results(results)


def test_interrupt_keeps_what_was_measured(bundles, monkeypatch, tmp_path):
    real = _sweep.interleaved
    calls = []

    def interrupted_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_sweep, "interleaved", interrupted_on_third_batch)
    config = BenchConfig(runtimes=("onnxruntime",), batch_sizes=(1, 2, 4, 8), memory=False, timing=QUICK)
    results = run_benchmark([bundles["pruned"]], bundles["base"], config, progress=False)
    assert results["interrupted"] is True and results["complete"] is False
    assert sorted({r["batch_size"] for r in results["latency"]}) == [1, 2]
    assert len(results["speedup"]) == 2
    out = write_report(results, tmp_path / "partial")
    assert json.loads((out / "results.json").read_text())["interrupted"] is True
    assert "interrupted" in (out / "summary.md").read_text()


def test_out_of_memory_is_recorded_and_larger_batches_are_not_tried(bundles, monkeypatch, patch_everywhere):
    real, calls = _sweep.interleaved, []

    def oom_from_the_third_batch(*args, **kwargs):  # batches 1 and 2 run, batch 4 runs out of memory
        calls.append(1)
        if len(calls) >= 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(_sweep, "interleaved", oom_from_the_third_batch)
    patch_everywhere(_memory, "measure_memory", _fake_memory)
    config = BenchConfig(runtimes=("onnxruntime",), batch_sizes=(1, 2, 4, 8, 16), memory=True, timing=QUICK)
    results = run_benchmark([bundles["base"]], config=config, progress=False)
    assert len(calls) == 3  # nothing larger than the first failing batch is tried
    status = {r["batch_size"]: r["status"] for r in results["latency"]}
    assert status == {1: "ok", 2: "ok", 4: "oom", 8: "oom", 16: "oom"}
    assert "out of memory" in next(r["error"] for r in results["latency"] if r["batch_size"] == 4)
    assert "already ran out of memory" in next(r["error"] for r in results["latency"] if r["batch_size"] == 8)
    memory = {r["batch_size"]: (r["status"], r["measured_bytes"]) for r in results["memory"]}
    assert memory == {1: ("ok", 101), 2: ("ok", 102), 4: ("oom", None), 8: ("oom", None), 16: ("oom", None)}
    assert results["complete"] is True
    validate_results(results)


def _fake_memory(runtime, artifact, input_shape, batch_size, **kwargs):
    from benchmarks._memory import MemoryResult

    return MemoryResult(runtime=runtime, artifact=str(artifact), device="cpu", batch_size=batch_size,
                        threads=kwargs["threads"], runs=kwargs["runs"], input_shape=tuple(input_shape),
                        baseline_rss_bytes=100, loaded_rss_bytes=150, peak_rss_bytes=200 + batch_size,
                        increase_bytes=100 + batch_size, peak_reset=True, settings={})


def test_real_samples_from_a_file(bundles, tmp_path):
    samples = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", samples)
    batches = _sweep._Inputs((3, 32, 32), str(tmp_path / "x.npy"), seed=0)
    assert np.array_equal(batches.batch(5), samples[[0, 1, 2, 0, 1]])  # cycled to fill the batch
    config = BenchConfig(runtimes=("onnxruntime",), batch_sizes=(2,), memory=False, timing=QUICK,
                         inputs=str(tmp_path / "x.npy"))
    results = run_benchmark([bundles["base"]], config=config, progress=False)
    assert results["config"]["inputs_description"] == "samples from file (3 samples)"
    np.save(tmp_path / "wrong.npy", samples[:, :1])
    with pytest.raises(ValueError, match=r"wrong\.npy holds shape \[3, 1, 32, 32\]"):
        _sweep._Inputs((3, 32, 32), str(tmp_path / "wrong.npy"), seed=0)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        _sweep._Inputs((3, 32, 32), str(tmp_path / "missing.npy"), seed=0)


def test_random_inputs_are_seeded_per_batch_size():
    inputs = _sweep._Inputs((3, 8, 8), None, seed=1)
    assert np.array_equal(inputs.batch(4), _sweep._Inputs((3, 8, 8), None, seed=1).batch(4))
    assert not np.array_equal(inputs.batch(4), _sweep._Inputs((3, 8, 8), None, seed=2).batch(4))
    assert abs(float(inputs.batch(64).std()) - 1.0) < 0.05


def test_config_round_trip_and_defaults():
    config = BenchConfig(runtimes=("openvino",), devices=("cpu", "cuda"), batch_sizes=(1, 4), threads=3, timing=QUICK)
    assert BenchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert BenchConfig().batch_sizes_for("cpu") == (1, 2, 4, 8, 16, 32, 64)
    assert BenchConfig().batch_sizes_for("cuda")[-1] == 512
    with pytest.raises(ValueError, match="unknown BenchConfig key\\(s\\)"):
        BenchConfig.from_dict({"batchsize": [1]})
    with pytest.raises(ValueError, match="devices"):
        BenchConfig(devices=("tpu",))


def test_runtime_options_reach_the_runtime(bundles):
    config = BenchConfig(runtimes=("onnxruntime",), batch_sizes=(1,), memory=False, timing=QUICK,
                         runtime_options={"onnxruntime": {"allow_spinning": True}})
    results = run_benchmark([bundles["pruned"]], bundles["base"], config, progress=False)
    assert all(r["settings"]["allow_spinning"] is True for r in results["latency"])
    assert not any("spinning" in w for w in results["warnings"])
    with pytest.raises(ValueError, match=r"runtime_options\['onnxruntime'\].*spin"):
        BenchConfig(runtime_options={"onnxruntime": {"spin": True}})


def test_cli_runtime_option_parsing():
    from benchmarks import runtime_options as _runtime_options

    assert _runtime_options(["onnxruntime.allow_spinning=true", "tensorrt.workspace_bytes=1024"]) == {
        "onnxruntime": {"allow_spinning": True}, "tensorrt": {"workspace_bytes": 1024}}
    with pytest.raises(ValueError, match="RUNTIME.OPTION=VALUE"):
        _runtime_options(["allow_spinning=true"])


def test_cli_bench_done_when_command(bundles, tmp_path, capsys):
    out = tmp_path / "report"
    code = cli(["bench", str(bundles["pruned"]), "--baseline", str(bundles["base"]), "--runtimes",
                "torch,onnxruntime,openvino", "--batch-sizes", "1,8", "--output", str(out), "--quiet",
                "--min-runs", "3", "--min-seconds", "0", "--max-seconds", "0.5", "--warmup", "1", "--no-memory"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)
    results = json.loads((out / "results.json").read_text())
    assert {r["runtime"] for r in results["speedup"]} == {"torch", "onnxruntime", "openvino"}
    assert "practical vs theoretical speedup" in printed.out and "random (untrained) weights" in printed.err


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "0"], "batch size 0"),
    (["--batch-sizes", "1,x"], "--batch-sizes must be comma-separated integers"),
    (["--runtimes", "tflite"], "unknown runtime 'tflite'"),
])
def test_cli_bench_bad_input(bundles, tmp_path, capsys, argv, message):
    assert cli(["bench", str(bundles["base"]), "--output", str(tmp_path / "r"), "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_bench_missing_bundle_and_other_shape(bundles, tmp_path, capsys):
    assert cli(["bench", str(tmp_path / "nope"), "--output", str(tmp_path / "r"), "--quiet"]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert cli(["bench", str(bundles["lenet"]), "--baseline", str(bundles["base"]), "--output", str(tmp_path / "r"),
                "--quiet"]) == 2
    assert "same input shape" in capsys.readouterr().err


def test_ctrl_c_writes_the_partial_report(bundles, tmp_path):
    """A real SIGINT to ``compressor bench``: exit 130 and a valid report marked interrupted."""
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "compressor.app.cli", "bench", str(bundles["base"]), "--runtimes", "onnxruntime",
           "--batch-sizes", "1,2,4,8,16,32,64", "--min-seconds", "2", "--max-seconds", "2", "--no-memory",
           "--quiet", "--output", str(out)]
    # a shell's background jobs (CI under nohup, say) start with SIGINT ignored, and an ignored signal
    # stays ignored across exec; a handled one is reset to the default. So handle it while starting
    # the child (a preexec_fn would run Python in a forked copy of this threaded process: unsafe)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(PROJECT)})
    finally:
        signal.signal(signal.SIGINT, previous)
    time.sleep(10)  # imports, loading, then a few batch sizes of 2 s each
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    results = json.loads((out / "results.json").read_text())
    assert results["interrupted"] is True and results["complete"] is False
    validate_results(results)
    assert "interrupted: the results measured so far are in" in err
