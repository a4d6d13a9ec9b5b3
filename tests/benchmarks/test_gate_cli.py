"""`compressor gate` on the committed ResNet-50 report: exit codes, table, JUnit, JSON, bad input."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from compressor.app.cli import main

REPORT = Path(__file__).parents[2] / "benchmarks" / "results" / "resnet50_cpu_2core"


def _budgets(tmp_path, rules, name="budgets.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps({"confidence": 0.95, "rules": rules}))
    return str(path)


PASSING = [
    {"bundle": "b_half_rt16", "runtime": "openvino", "batch_size": 1, "max_p50_ms": 30, "min_speedup": 1.5},
    {"bundle": "b_half_rt16", "runtime": "onnxruntime", "batch_size": 8, "min_throughput_sps": 10},
]


def test_gate_passes_and_writes_junit_and_json(tmp_path, capsys):
    junit, out = tmp_path / "gate.xml", tmp_path / "gate.json"
    code = main(["gate", _budgets(tmp_path, PASSING), "--report", str(REPORT), "--junit", str(junit),
                 "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pass" in printed and "exit 0" in printed
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("tests")) == 3 and int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    assert json.loads(out.read_text())["exit_code"] == 0


def test_gate_violation_exits_1(tmp_path, capsys):
    rules = [*PASSING, {"bundle": "b_half", "runtime": "onnxruntime", "batch_size": 1, "max_p50_ms": 20}]
    junit = tmp_path / "gate.xml"
    assert main(["gate", _budgets(tmp_path, rules), "--report", str(REPORT), "--junit", str(junit)]) == 1
    failures = ET.parse(junit).getroot().iter("failure")
    assert len(list(failures)) == 1
    assert "violated" in capsys.readouterr().out


def test_gate_unmeasured_exits_4(tmp_path, capsys):
    rules = [*PASSING, {"bundle": "b_half", "runtime": "openvino", "batch_size": 1, "min_accuracy": 0.9},
             {"bundle": "b_half", "runtime": "onnxruntime", "batch_size": 3, "max_p50_ms": 100}]
    assert main(["gate", _budgets(tmp_path, rules), "--report", str(REPORT)]) == 4
    accuracy = tmp_path / "acc.json"
    accuracy.write_text(json.dumps({"b_half": {"openvino": 0.95}}))
    rules = rules[:-1]
    assert main(["gate", _budgets(tmp_path, rules), "--report", str(REPORT), "--accuracy", str(accuracy)]) == 0


@pytest.mark.parametrize("rules,message", [
    ([{"bundle": "b_half", "runtime": "openvino", "batch_size": 1, "max_p50": 30}], "max_p50"),
    ([{"bundle": "b_half", "runtime": "openvino", "batch_size": 1, "max_p50_ms": -1}], "max_p50_ms"),
    ([{"bundle": "b_half", "runtime": "tflite", "batch_size": 1, "max_p50_ms": 3}], "tflite"),
])
def test_bad_budgets_exit_2_naming_the_key(tmp_path, capsys, rules, message):
    assert main(["gate", _budgets(tmp_path, rules), "--report", str(REPORT)]) == 2
    err = capsys.readouterr().err
    assert message in err and "budgets.yaml" in err


def test_gate_needs_a_report_or_bundles(tmp_path, capsys):
    assert main(["gate", _budgets(tmp_path, PASSING)]) == 2
    assert "--report" in capsys.readouterr().err
    assert main(["gate", _budgets(tmp_path, PASSING), "--report", str(tmp_path / "nope")]) == 2
