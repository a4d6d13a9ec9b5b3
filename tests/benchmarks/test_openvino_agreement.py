"""benchmarks.openvino_agreement: parsers on real benchmark_app output, error paths, one short real run.

The report and console samples below were captured from benchmark_app 2026.4.1 (the one shipped
in the openvino wheel) on resnet20 and ResNet-50 IRs, trimmed to the parts the parsers read.
"""
from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from benchmarks.openvino_agreement import (
    AgreementConfig,
    AgreementError,
    benchmark_app_command,
    find_benchmark_app,
    main,
    parse_benchmark_app_report,
    parse_benchmark_app_stdout,
    resolve_model,
    run_benchmark_app,
)

# -report_type no_counters -report_folder F -json_stats  ->  F/benchmark_report.json (one line)
REPORT_JSON = (
    '{"cmd_options": {"-m": "r20/model.xml", "-d": "CPU", "-hint": "latency", "-load_config": "cfg.json", "-b": "1", '
    '"-t": "2", "-data_shape": "[1,3,32,32]", "-inference_only": "true", "-ip": "f32", "-infer_precision": "f32", '
    '"-report_type": "no_counters", "-report_folder": "rep_json", "-json_stats": ""}, "configuration_setup": '
    '{"topology": "Model1", "target device": "CPU", "API": "sync", "inference_only": true, "precision": "UNSPECIFIED", '
    '"batch size": "1", "number of iterations": "None", "number of parallel infer requests": "1", '
    '"duration (ms)": "2000"}, "execution_results": {"read model time (ms)": "12.82", "compile model time (ms)": '
    '"30.90", "first inference time (ms)": "5.98", "total execution time (ms)": "2000.24", '
    '"total number of iterations": "4320", "latency (ms)": "0.43", "avg latency": "0.45", "min latency": "0.42", '
    '"max latency": "4.47", "throughput": "2159.74"}}'
)

# the same without -json_stats  ->  F/benchmark_report.csv
REPORT_CSV = """\
Command line parameters
-m;r20/model.xml
-d;CPU
-hint;latency
-load_config;cfg.json
-b;1
-t;2
-data_shape;[1,3,32,32]
-inference_only;true
-ip;f32
-infer_precision;f32
-report_type;no_counters
-report_folder;rep_csv

Configuration setup
topology;Model1
target device;CPU
API;sync
inference_only;True
precision;UNSPECIFIED
batch size;1
number of iterations;None
number of parallel infer requests;1
duration (ms);2000

Execution results
read model time (ms);9.35
compile model time (ms);28.05
first inference time (ms);5.62
total execution time (ms);2000.27
total number of iterations;4371
latency (ms);0.43
avg latency;0.45
min latency;0.42
max latency;5.38
throughput;2185.20

"""

# console, resnet20: the average is below 1 ms, so latencies are printed in microseconds
STDOUT_US = """\
[Step 1/11] Parsing and validating input arguments
[ INFO ] Parsing input parameters
[Step 2/11] Loading OpenVINO Runtime
[ INFO ] OpenVINO:
[ INFO ] Build ................................. 2026.4.1-22982-e213a147257-releases/2026/4
[Step 7/11] Loading the model to the device
[ INFO ] Compile model took 31.49 ms
[Step 8/11] Querying optimal runtime parameters
[ INFO ] Model:
[ INFO ]   NETWORK_NAME: onnx_Frontend_IR
[ INFO ]   OPTIMAL_NUMBER_OF_INFER_REQUESTS: 1
[ INFO ]   NUM_STREAMS: 1
[ INFO ]   INFERENCE_NUM_THREADS: 2
[ INFO ]   PERF_COUNT: NO
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'float32'>
[ INFO ]   PERFORMANCE_HINT: LATENCY
[ INFO ]   EXECUTION_MODE_HINT: ExecutionMode.PERFORMANCE
[ INFO ]   ENABLE_CPU_PINNING: True
[ INFO ]   ENABLE_HYPER_THREADING: False
[ INFO ]   EXECUTION_DEVICES: ['CPU']
[ INFO ]   CPU_DENORMALS_OPTIMIZATION: False
[ INFO ]   RUNTIME_REQUIREMENTS: meta=1.0;ov=2026.4.1;isa=Intel AVX-512 with Intel DL Boost and bfloat16 support
[Step 9/11] Creating infer requests and preparing input tensors
[ WARNING ] No input files were given for input 'input'!. This input will be filled with random values!
[ INFO ] Fill input 'input' with random values 
[Step 10/11] Measuring performance (Start inference synchronously, limits: 2000 ms duration)
[ INFO ] Benchmarking in inference only mode (inputs filling are not included in measurement loop).
[ INFO ] First inference took 5.62 ms
[Step 11/11] Dumping statistics report
[ INFO ] Statistics report is stored to rep_csv/benchmark_report.csv
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            4371 iterations
[ INFO ] Duration:         2000.27 ms
[ INFO ] Latency:
[ INFO ]    Median:        432.76 us
[ INFO ]    Average:       446.55 us
[ INFO ]    Min:           423.88 us
[ INFO ]    Max:           5377.90 us
[ INFO ] Throughput:   2185.20 FPS
"""

# console tail, ResNet-50: milliseconds
STDOUT_MS_TAIL = """\
[Step 11/11] Dumping statistics report
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            201 iterations
[ INFO ] Duration:         8024.30 ms
[ INFO ] Latency:
[ INFO ]    Median:        38.22 ms
[ INFO ]    Average:       39.77 ms
[ INFO ]    Min:           37.70 ms
[ INFO ]    Max:           70.86 ms
[ INFO ] Throughput:   25.05 FPS
"""

EXPECTED_REPORT = {"latency_ms_median": 0.43, "latency_ms_mean": 0.45, "latency_ms_min": 0.42,
                   "throughput_fps": 2159.74, "iterations": 4320, "duration_ms": 2000.24}


# --- parsers -----------------------------------------------------------------------------------

def test_json_report(tmp_path):
    (tmp_path / "benchmark_report.json").write_text(REPORT_JSON)
    got = parse_benchmark_app_report(tmp_path)
    assert {k: got[k] for k in EXPECTED_REPORT} == pytest.approx(EXPECTED_REPORT)
    assert got["latency_ms_max"] == pytest.approx(4.47)
    assert isinstance(got["iterations"], int)


def test_csv_report(tmp_path):
    (tmp_path / "benchmark_report.csv").write_text(REPORT_CSV)
    got = parse_benchmark_app_report(tmp_path)
    assert got["latency_ms_median"] == pytest.approx(0.43)
    assert got["latency_ms_max"] == pytest.approx(5.38)
    assert got["iterations"] == 4371
    assert got["throughput_fps"] == pytest.approx(2185.20)


def test_json_report_is_preferred_to_csv(tmp_path):
    (tmp_path / "benchmark_report.json").write_text(REPORT_JSON)
    (tmp_path / "benchmark_report.csv").write_text(REPORT_CSV)
    assert parse_benchmark_app_report(tmp_path)["iterations"] == 4320


def test_report_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        parse_benchmark_app_report(tmp_path)
    (tmp_path / "benchmark_report.json").write_text("{not json")
    with pytest.raises(AgreementError, match="benchmark_report.json"):
        parse_benchmark_app_report(tmp_path)
    # a failed run dumps its exception into the execution results
    (tmp_path / "benchmark_report.json").write_text(json.dumps({"execution_results": {"error": "boom"}}))
    with pytest.raises(AgreementError, match="boom"):
        parse_benchmark_app_report(tmp_path)
    (tmp_path / "benchmark_report.json").write_text(json.dumps({"execution_results": {"avg latency": "1.0"}}))
    with pytest.raises(AgreementError, match="median"):
        parse_benchmark_app_report(tmp_path)


def test_stdout_in_microseconds():
    got = parse_benchmark_app_stdout(STDOUT_US)
    assert got["latency_ms_median"] == pytest.approx(0.43276)
    assert got["latency_ms_mean"] == pytest.approx(0.44655)
    assert got["latency_ms_min"] == pytest.approx(0.42388)
    assert got["latency_ms_max"] == pytest.approx(5.3779)
    assert got["throughput_fps"] == pytest.approx(2185.20)
    assert got["iterations"] == 4371
    assert got["duration_ms"] == pytest.approx(2000.27)


def test_stdout_in_milliseconds():
    got = parse_benchmark_app_stdout(STDOUT_MS_TAIL)
    assert got["latency_ms_median"] == pytest.approx(38.22)
    assert got["latency_ms_max"] == pytest.approx(70.86)
    assert got["properties"] == {}


def test_stdout_compiled_model_properties():
    props = parse_benchmark_app_stdout(STDOUT_US)["properties"]
    assert props["INFERENCE_NUM_THREADS"] == "2"
    assert props["PERFORMANCE_HINT"] == "LATENCY"
    assert props["NUM_STREAMS"] == "1"
    assert props["INFERENCE_PRECISION_HINT"] == "<Type: 'float32'>"
    assert props["RUNTIME_REQUIREMENTS"].startswith("meta=1.0;")
    assert "Compile model took 31.49 ms" not in props.values()  # only step 8 is read


def test_stdout_without_median_shows_the_tail():
    with pytest.raises(AgreementError, match=r"Median(.|\n)*No such file: model.xml"):
        parse_benchmark_app_stdout("[Step 1/11] Parsing\n[ ERROR ] No such file: model.xml\n")


# --- command line and configuration ------------------------------------------------------------

def test_command_line():
    cmd = benchmark_app_command("/bin/benchmark_app", "m.xml", (1, 3, 32, 32), 15, "cfg.json", "rep")
    text = " ".join(cmd)
    for part in ("-m m.xml", "-d CPU", "-hint latency", "-api sync", "-b 1", "-data_shape [1,3,32,32]",
                 "-inference_only true", "-ip f32", "-infer_precision f32", "-t 15", "-load_config cfg.json",
                 "-report_folder rep", "-json_stats"):
        assert part in text, part
    # benchmark_app refuses -nthreads next to -hint: the threads travel in the -load_config file
    assert "-nthreads" not in cmd and "-shape" not in cmd


def test_config_validation_and_round_trip():
    config = AgreementConfig(threads=1, seconds=3, repeats=4, tolerance=0.05, input_shape=(3, 32, 32))
    assert AgreementConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in ({"threads": 0}, {"seconds": 1.5}, {"repeats": True}, {"tolerance": 0}, {"tolerance": 1.5},
                {"input_shape": (3, 0, 32)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AgreementConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        AgreementConfig.from_dict({"thread": 2})


# --- errors ------------------------------------------------------------------------------------

def test_missing_xml_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "model.xml"
    assert main([str(missing), "--seconds", "1"]) == 2
    assert str(missing) in capsys.readouterr().err


def test_missing_onnx_is_named(tmp_path, capsys):
    missing = tmp_path / "model.onnx"
    assert main(["--onnx", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_model_and_onnx_are_exclusive(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a.xml"), "--onnx", str(tmp_path / "b.onnx")])
    assert exc.value.code == 2


def test_missing_executable(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AgreementError, match="benchmark_app not found.*pip install openvino"):
        find_benchmark_app()
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    assert main([str(xml), "--seconds", "1"]) == 2
    assert "benchmark_app not found" in capsys.readouterr().err


def _fake_app(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_failing_benchmark_app_reports_status_and_output(tmp_path):
    app = _fake_app(tmp_path / "benchmark_app", "echo '[ ERROR ] Model file m.xml cannot be opened!'\nexit 3\n")
    with pytest.raises(AgreementError, match=r"exited with status 3(.|\n)*m.xml cannot be opened"):
        run_benchmark_app([str(app)], tmp_path / "rep")


def test_console_is_the_fallback_without_a_report(tmp_path):
    console = tmp_path / "console.txt"
    console.write_text(STDOUT_US)
    app = _fake_app(tmp_path / "benchmark_app", f"cat '{console}'\n")
    got = run_benchmark_app([str(app)], tmp_path / "rep")
    assert got["source"] == "stdout"
    assert got["latency_ms_median"] == pytest.approx(0.43276)


def test_report_is_refined_by_the_console_digits(tmp_path):
    console = tmp_path / "console.txt"
    console.write_text(STDOUT_US)
    folder = tmp_path / "rep"
    folder.mkdir()
    (folder / "benchmark_report.csv").write_text(REPORT_CSV)
    app = _fake_app(tmp_path / "benchmark_app", f"cat '{console}'\n")
    got = run_benchmark_app([str(app)], folder)
    assert got["source"] == "report+stdout"
    assert got["latency_ms_median"] == pytest.approx(0.43276)  # 0.43 in the report
    assert got["iterations"] == 4371
    assert got["properties"]["NUM_STREAMS"] == "1"


def test_bundle_directory_gives_its_ir_and_input_shape(tmp_path):
    (tmp_path / "openvino").mkdir()
    (tmp_path / "openvino" / "model.xml").write_text("<net/>")
    (tmp_path / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "parity_passed": True, "artifacts": {"openvino": "openvino/model.xml"},
        "input": {"shape": ["batch", 3, 32, 32], "dtype": "float32"}}))
    xml, shape = resolve_model(tmp_path)
    assert xml == tmp_path / "openvino" / "model.xml"
    assert shape == (3, 32, 32)
    (tmp_path / "openvino" / "model.xml").unlink()
    with pytest.raises(FileNotFoundError, match="model.xml"):
        resolve_model(tmp_path)


# --- one real run ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet20_ir(tmp_path_factory):
    from runtimes import get_runtime

    reason = get_runtime("openvino").is_available("cpu")
    if reason:
        pytest.skip(reason)
    try:
        find_benchmark_app()
    except AgreementError as err:
        pytest.skip(str(err))
    import torch

    import compressor
    from models import create_model

    root = tmp_path_factory.mktemp("agreement")
    model = create_model("resnet20").eval()
    compressor.export_onnx(model, torch.randn(1, 3, 32, 32), root / "resnet20.onnx",
                           compressor.ExportConfig(exporter="torchscript"))  # the fast exporter
    return get_runtime("openvino").build(root / "resnet20.onnx", root / "ir")


@pytest.mark.openvino
def test_end_to_end_on_resnet20(resnet20_ir, tmp_path, capsys):
    out = tmp_path / "agreement.json"
    status = main([str(resnet20_ir), "--threads", "2", "--seconds", "2", "--repeats", "2", "--warmup", "5",
                   "--json", str(out), "--work-dir", str(tmp_path / "work")])
    assert status in (0, 1)  # agreement itself is not asserted: this machine's noise decides it
    result = json.loads(out.read_text())
    assert result["schema_version"] == 1
    assert result["input_shape"] == [1, 3, 32, 32]
    assert result["ours_median_ms"] > 0 and result["benchmark_app_median_ms"] > 0
    assert result["ratio"] == pytest.approx(result["ours_median_ms"] / result["benchmark_app_median_ms"])
    assert result["min_ratio"] > 0 and isinstance(result["noisy"], bool)
    assert result["passed"] == (status == 0)
    assert len(result["ours_medians_ms"]) == len(result["benchmark_app_medians_ms"]) == 2
    assert all(run["n"] == len(run["samples_ms"]) > 0 for run in result["ours_runs"])
    command = result["benchmark_app_command_line"]
    assert "-hint latency" in command and "-infer_precision f32" in command and "-load_config" in command
    # the thread count reaches benchmark_app through its config file, and its compiled model uses it
    assert result["benchmark_app_config"]["CPU"]["INFERENCE_NUM_THREADS"] == 2
    for run in result["benchmark_app_runs"]:
        assert run["properties"]["INFERENCE_NUM_THREADS"] == "2"
        assert run["properties"]["PERFORMANCE_HINT"] == "LATENCY"
    assert result["settings_mismatch"] == {}
    assert result["environment"]["versions"]["openvino"]
    assert "ratio ours/bench" in capsys.readouterr().out
