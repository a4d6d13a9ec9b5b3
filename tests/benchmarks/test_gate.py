"""The release gate on constructed reports: budgets files, confidence bounds, exit codes, JUnit XML."""
from __future__ import annotations

import json
import math
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks._budgets import BudgetError, Budgets, Rule, load_budgets, parse_budgets
from benchmarks._gate import (
    EXIT_PASS,
    EXIT_UNMEASURED,
    EXIT_VIOLATED,
    GateReport,
    evaluate_gate,
    failing_rules,
    format_table,
    merge_results,
    write_junit,
)
from benchmarks._stats import paired_speedup, summarize
from runtimes import list_runtimes

MIB = 2 ** 20
RUNTIME = "onnxruntime"
REAL_REPORT = Path(__file__).parents[2] / "benchmarks" / "results" / "resnet50_cpu_2core" / "results.json"


def _bundle(name: str, role: str) -> dict:
    return {"name": name, "role": role, "path": f"/tmp/{name}", "input_shape": [3, 32, 32], "flops": 1000,
            "params": 10, "mps_bytes": 40, "fm_elements": 100, "weights_trained": True, "source": None,
            "artifacts": {"onnx": "model.onnx"}}


def _latency(bundle: str, bs: int, samples: np.ndarray | None, status: str = "ok") -> dict:
    stats = summarize(samples, bs, resamples=500).to_dict() if status == "ok" else None
    return {"runtime": RUNTIME, "device": "cpu", "batch_size": bs, "bundle": bundle, "status": status,
            "error": None if status == "ok" else f"{status}: synthetic", "stats": stats, "settings": None}


def _memory(bundle: str, bs: int, measured_bytes: int | None, status: str = "ok") -> dict:
    return {"runtime": RUNTIME, "device": "cpu", "batch_size": bs, "bundle": bundle, "status": status,
            "error": None if status == "ok" else "killed", "measured_bytes": measured_bytes,
            "peak_bytes": measured_bytes, "theoretical_bytes": None, "detail": None}


def make_results(*, names: tuple[str, str] = ("base", "pruned"), batch_sizes: tuple[int, ...] = (1,),
                 scale: float = 1.0, oom_batch: int | None = None) -> dict:
    """A schema-valid report: baseline ``names[0]`` (~10 ms per batch, sd 1 ms) and candidate
    ``names[1]`` 1.5x faster (times ``scale``), 200 interleaved rounds per batch size; memory
    100 MiB for the candidate. ``oom_batch`` marks the candidate out of memory at that batch."""
    base, cand = names
    rng = np.random.default_rng(1)
    latency, speedup, memory = [], [], []
    for bs in batch_sizes:
        base_ms = 10.0 * bs + rng.normal(0.0, 1.0, 200)
        cand_ms = (base_ms / 1.5 + rng.normal(0.0, 0.3, 200)) * scale
        oom = bs == oom_batch
        latency += [_latency(base, bs, base_ms), _latency(cand, bs, cand_ms, "oom" if oom else "ok")]
        memory += [_memory(base, bs, 150 * MIB), _memory(cand, bs, None if oom else 100 * MIB, "oom" if oom else "ok")]
        practical = None if oom else paired_speedup(base_ms, cand_ms, resamples=500).to_dict()
        speedup.append({"runtime": RUNTIME, "device": "cpu", "batch_size": bs, "bundle": cand, "baseline": base,
                        "practical": practical, "theoretical": 2.0,
                        "efficiency": practical and practical["speedup_median"] / 2.0})
    return {"schema_version": 1, "kind": "cnn-compressor-benchmark", "created_utc": "2026-11-21T10:00:00Z",
            "complete": True, "interrupted": False,
            "environment": {"cpu_model": None, "cpu_cores_logical": 2, "cpu_cores_available": 2, "os": "Linux",
                            "python": "3.11", "hostname": "h", "gpu": None, "versions": {}, "git_sha": None,
                            "git_dirty": None},
            "config": {"runtimes": [RUNTIME], "batch_sizes": list(batch_sizes), "devices": ["cpu"], "threads": 2},
            "bundles": [_bundle(base, "baseline"), _bundle(cand, "candidate")],
            "latency": latency, "speedup": speedup, "memory": memory,
            "skipped": [{"runtime": "tensorrt", "device": "cpu", "reason": "tensorrt is not installed"}],
            "warnings": []}


@pytest.fixture(scope="module")
def results() -> dict:
    return make_results(batch_sizes=(1, 4), oom_batch=4)


def _stats(results: dict, bundle: str = "pruned", bs: int = 1) -> dict:
    return next(r["stats"] for r in results["latency"] if (r["bundle"], r["batch_size"]) == (bundle, bs))


def _practical(results: dict, bs: int = 1) -> dict:
    return next(r["practical"] for r in results["speedup"] if r["batch_size"] == bs)


def gate(results: dict, accuracy: dict | None = None, confidence: float = 0.95, bundle: str = "pruned",
         bs: int = 1, decision: str | None = None, **budgets: float) -> GateReport:
    rule = Rule(bundle=bundle, runtime=RUNTIME, batch_size=bs, **budgets)
    return evaluate_gate(Budgets((rule,), confidence), results, accuracy, decision=decision)


def only(report: GateReport):
    (check,) = report.checks
    return check


# ----------------------------------------------------------------------------- confidence bounds


@pytest.mark.parametrize("metric, field", [("max_p50_ms", "latency_ms_median"), ("max_p90_ms", "latency_ms_p90"),
                                           ("max_p99_ms", "latency_ms_p99")])
def test_latency_pass_fail_and_within_noise(results, metric, field):
    point = _stats(results)[field]
    ok = only(gate(results, **{metric: point * 1.5}))
    assert (ok.status, ok.marginal, ok.measured, ok.decision) == ("pass", False, point, "point")
    assert ok.margin == pytest.approx(point * 0.5)
    low = ok.low
    assert low < point < ok.high

    noisy = only(gate(results, **{metric: (low + point) / 2}))  # estimate over, lower bound not
    assert (noisy.status, noisy.marginal) == ("fail", True)  # the point rule: no pass "within noise"
    assert noisy.margin < 0 and "the budget lies inside the 95% CI" in noisy.detail
    assert only(gate(results, decision="lenient", **{metric: (low + point) / 2})).status == "pass"

    clear = only(gate(results, **{metric: low * 0.99}))  # even the lower bound is over
    assert (clear.status, clear.marginal) == ("fail", False)
    assert clear.low == low  # the bootstrap is seeded: the same bound every time
    assert gate(results, decision="lenient", **{metric: low * 0.99}).exit_code == EXIT_VIOLATED


def test_p50_bound_is_the_reports_median_ci_and_rebootstraps_at_another_level(results):
    stats = _stats(results)
    assert only(gate(results, max_p50_ms=100.0)).low == stats["median_ci_ms"][0]
    narrow = only(gate(results, confidence=0.6, max_p50_ms=100.0)).low
    assert stats["median_ci_ms"][0] < narrow <= stats["latency_ms_median"]


def test_throughput_min_budget_uses_the_upper_bound(results):
    stats = _stats(results)
    point, upper = stats["throughput_sps"], 1000.0 / stats["median_ci_ms"][0]
    assert only(gate(results, min_throughput_sps=point * 0.9)).status == "pass"
    noisy = only(gate(results, min_throughput_sps=(point + upper) / 2))
    assert (noisy.status, noisy.marginal) == ("fail", True)
    assert noisy.high == pytest.approx(upper)
    lenient = only(gate(results, decision="lenient", min_throughput_sps=(point + upper) / 2))
    assert (lenient.status, lenient.compared) == ("pass", "upper bound")
    failed = only(gate(results, decision="lenient", min_throughput_sps=upper * 1.01))
    # the margin is that of the value the rule compared: lenient compares the upper bound
    assert failed.status == "fail" and failed.margin == pytest.approx(upper - upper * 1.01)


def test_speedup_min_budget_both_ways(results):
    practical = _practical(results)
    point, (low, high) = practical["speedup_median"], practical["speedup_ci"]
    assert 1.3 < point < 1.7 and low < point < high
    assert only(gate(results, min_speedup=1.2)).status == "pass"
    noisy = only(gate(results, min_speedup=(point + high) / 2))
    assert (noisy.status, noisy.marginal, noisy.high) == ("fail", True, high)
    assert only(gate(results, decision="lenient", min_speedup=(point + high) / 2)).status == "pass"
    failed = only(gate(results, min_speedup=2.0))
    assert failed.status == "fail" and failed.margin == pytest.approx(point - 2.0)


def test_memory_compared_directly_in_mib(results):
    ok = only(gate(results, max_memory_mb=120))
    assert (ok.status, ok.measured, ok.margin, ok.low, ok.high) == ("pass", 100.0, 20.0, None, None)
    assert only(gate(results, decision="strict", max_memory_mb=120)).status == "pass"  # no CI: the value decides
    failed = only(gate(results, max_memory_mb=99.9))
    assert failed.status == "fail" and failed.margin == pytest.approx(-0.1)


def test_accuracy_min_and_drop(results):
    accuracy = {"pruned": {RUNTIME: 0.90}, "base": {RUNTIME: 0.905}}
    assert only(gate(results, accuracy, min_accuracy=0.9)).status == "pass"  # equal to the budget passes
    assert only(gate(results, accuracy, min_accuracy=0.91)).status == "fail"
    drop = only(gate(results, accuracy, max_accuracy_drop=0.01))  # baseline: the report's baseline bundle
    assert drop.status == "pass" and drop.measured == pytest.approx(0.005)
    assert only(gate(results, accuracy, max_accuracy_drop=0.001)).status == "fail"
    explicit = {"pruned": {RUNTIME: 0.90}, "baseline": {RUNTIME: 0.95}}
    assert only(gate(results, explicit, max_accuracy_drop=0.01)).measured == pytest.approx(0.05)


def test_accuracy_in_the_pipeline_form():
    results = make_results(names=("baseline_bundle", "bundle"))
    accuracy = {"top1": {"bundle": {RUNTIME: 0.80}, "baseline_bundle": {RUNTIME: 0.83}}}  # evaluate step results
    check = only(gate(results, accuracy, bundle="bundle", max_accuracy_drop=0.02))
    assert check.status == "fail" and check.measured == pytest.approx(0.03)


def test_bad_accuracy_and_bad_results_are_value_errors(results):
    with pytest.raises(ValueError, match=r"accuracy\['pruned'\]\['onnxruntime'\] must be a top-1 fraction"):
        gate(results, {"pruned": {RUNTIME: 95.0}}, min_accuracy=0.9)
    with pytest.raises(TypeError, match="accuracy must be a mapping"):
        gate(results, [0.9], min_accuracy=0.9)
    broken = {**results, "latency": [{"runtime": RUNTIME}]}
    with pytest.raises(ValueError, match="results.schema.json"):
        gate(broken, max_p50_ms=10)


# ----------------------------------------------------------------------------- unmeasured and exit codes


@pytest.mark.parametrize("bs, bundle, budget, reason", [
    (8, "pruned", {"max_p50_ms": 10}, "no latency row for pruned on onnxruntime/cpu at batch 8"),
    (4, "pruned", {"max_p90_ms": 100}, "ended with oom"),
    (4, "pruned", {"max_memory_mb": 100}, "ended with oom"),
    (4, "pruned", {"min_speedup": 1.1}, "no practical speedup"),
    (1, "base", {"min_speedup": 1.1}, "is the report's baseline"),
    (1, "other", {"max_p50_ms": 10}, "bundle 'other' is not in the report"),
    (1, "pruned", {"min_accuracy": 0.5}, "no top-1 accuracy for pruned on onnxruntime"),
])
def test_unmeasured_rules_exit_4(results, bs, bundle, budget, reason):
    report = gate(results, bundle=bundle, bs=bs, **budget)
    check = only(report)
    assert check.status == "unmeasured" and reason in check.detail
    assert check.measured is None and report.exit_code == EXIT_UNMEASURED


def test_skipped_runtime_is_unmeasured_with_the_skip_reason(results):
    rule = Rule(bundle="pruned", runtime="tensorrt", batch_size=1, max_p50_ms=5)
    check = only(evaluate_gate(Budgets((rule,)), results))
    assert check.status == "unmeasured" and "tensorrt is not installed" in check.detail


def test_exit_codes_violated_wins_over_unmeasured(results):
    rules = (Rule("pruned", RUNTIME, 1, max_p50_ms=100, min_speedup=1.2),  # pass
             Rule("pruned", RUNTIME, 4, max_p50_ms=100),  # oom: unmeasured
             Rule("pruned", RUNTIME, 1, name="tight", max_memory_mb=50))  # fail
    assert evaluate_gate(Budgets(rules[:1]), results).exit_code == EXIT_PASS
    assert evaluate_gate(Budgets(rules[:2]), results).exit_code == EXIT_UNMEASURED
    report = evaluate_gate(Budgets(rules), results)
    assert report.exit_code == EXIT_VIOLATED and report.verdict == "violated"
    assert (EXIT_PASS, EXIT_VIOLATED, EXIT_UNMEASURED) == (0, 1, 4)
    assert [r.name for r in failing_rules(report)] == ["tight"]


def test_remeasure_merge_replaces_rows_and_reverses_the_verdict(results):
    report = gate(results, max_p50_ms=5.0)  # the candidate's median is ~6.7 ms
    assert report.exit_code == EXIT_VIOLATED
    (rule,) = failing_rules(report)
    faster = make_results(scale=0.6)  # the re-measurement: ~4 ms
    merged = merge_results(results, faster)
    assert len(merged["latency"]) == len(results["latency"]) and len(merged["speedup"]) == len(results["speedup"])
    assert _stats(results)["latency_ms_median"] > 6  # the old report is unchanged
    assert evaluate_gate(Budgets((rule,)), merged).exit_code == EXIT_PASS


def test_report_dict_and_table(results):
    rules = (Rule("pruned", RUNTIME, 1, max_p50_ms=100, max_memory_mb=50), Rule("pruned", RUNTIME, 4, max_p90_ms=1))
    report = evaluate_gate(Budgets(rules, source="b.yaml"), results)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["schema_version"] == 2 and data["exit_code"] == 1 and data["budgets"] == "b.yaml"
    assert data["counts"] == {"pass": 1, "fail": 1, "unmeasured": 1, "marginal": 0}
    assert data["checks"][0]["rule"] == "pruned/onnxruntime/cpu/bs1" and data["checks"][0]["direction"] == "max"
    table = format_table(report)
    assert data["decision"] == "point" and data["report_complete"] is True
    for text in ("rule", "estimate", "CI low", "CI high", "budget", "margin", "PASS", "FAIL", "UNMEASURED", "100.0 MB",
                 "gate violated (exit 1)", "decision rule point"):
        assert text in table


# ----------------------------------------------------------------------------- JUnit XML


def test_junit_xml(results, tmp_path):
    rules = (Rule("pruned", RUNTIME, 1, max_p50_ms=100, max_memory_mb=50, min_speedup=1.2),
             Rule("pruned", RUNTIME, 4, name="oom <batch> & co", max_p90_ms=1))
    report = evaluate_gate(Budgets(rules), results)
    path = write_junit(report, tmp_path / "gate.xml")
    assert [p.name for p in tmp_path.iterdir()] == ["gate.xml"]  # no temporary file left behind
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    root = ET.parse(path).getroot()  # well-formed, or this raises
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "compressor gate"
    for element in (root, suite):  # the counts are integers and agree with the test cases
        assert {k: int(element.get(k)) for k in ("tests", "failures", "errors", "skipped")} == \
            {"tests": 4, "failures": 1, "errors": 1, "skipped": 0}
        assert float(element.get("time")) >= 0
    cases = suite.findall("testcase")
    assert len(cases) == 4 and all(c.get("classname") and c.get("name") for c in cases)
    assert {child.tag for child in suite} <= {"properties", "testcase", "system-out", "system-err"}
    assert {child.tag for c in cases for child in c} <= {"failure", "error", "skipped", "system-out", "system-err"}
    assert {c.get("classname") for c in cases} == {"gate.pruned.onnxruntime"}
    assert cases[0].get("name") == "pruned/onnxruntime/cpu/bs1: max_p50_ms"
    (failure,) = suite.iter("failure")
    assert failure.get("type") == "BudgetViolated" and "budget 50" in failure.get("message")
    (error,) = suite.iter("error")
    assert error.get("type") == "Unmeasured" and "oom" in error.get("message")
    assert cases[3].get("name") == "oom <batch> & co: max_p90_ms"  # escaped and read back intact
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["verdict"] == "violated" and props["confidence"] == "0.95"


def test_junit_xml_survives_control_characters_in_errors(results, tmp_path):
    broken = json.loads(json.dumps(results))
    row = next(r for r in broken["latency"] if r["status"] == "oom")
    row["error"] = "\x1b[31mCUDA out of memory\x1b[0m\x00"
    report = evaluate_gate(Budgets((Rule("pruned", RUNTIME, 4, max_p50_ms=1),)), broken)
    (error,) = ET.parse(write_junit(report, tmp_path / "gate.xml")).getroot().iter("error")
    assert "\ufffd[31mCUDA out of memory" in error.get("message")


# ----------------------------------------------------------------------------- budgets files

GOOD = """\
confidence: 0.9
rules:
  - name: edge
    bundle: pruned
    runtime: onnxruntime
    batch_size: 1
    max_p90_ms: 12.5
    min_speedup: 1.3
  - bundle: pruned
    runtime: openvino
    device: cpu
    batch_size: 8
    max_memory_mb: 300
    max_accuracy_drop: 0.005
"""


def test_load_budgets_and_round_trip(tmp_path):
    path = tmp_path / "budgets.yaml"
    path.write_text(GOOD)
    budgets = load_budgets(path)
    assert budgets.confidence == 0.9 and budgets.source == str(path)
    edge, second = budgets.rules
    assert edge.budgets == {"max_p90_ms": 12.5, "min_speedup": 1.3}
    assert second.name == "pruned/openvino/cpu/bs8" and second.target == ("pruned", "openvino", "cpu", 8)
    again = parse_budgets(yaml.safe_dump(budgets.to_dict()), str(path))
    assert again == budgets


def _error(text: str) -> str:
    with pytest.raises(BudgetError) as info:
        parse_budgets(textwrap.dedent(text), "budgets.yaml")
    return str(info.value)


RULE = "rules:\n  - bundle: pruned\n    runtime: onnxruntime\n    batch_size: 1\n"


def test_wrong_key_names_key_line_and_allowed_keys():
    message = _error(RULE + "    max_p90ms: 5\n")
    assert message.startswith("budgets.yaml:5: rules[0]: unknown key 'max_p90ms' (did you mean 'max_p90_ms'?); "
                              "allowed keys: name, bundle, runtime, device, batch_size, max_p50_ms")
    assert "max_p90_ms" in message and "min_throughput_sps" in message and "batch_size" in message
    assert _error("rules: []\nconfidense: 0.9\n") == ("budgets.yaml:2: the top level: unknown key 'confidense' "
                                                      "(did you mean 'confidence'?); allowed keys: confidence, decision, rules")


def test_negative_budget_names_the_line_and_key():
    text = RULE + "    max_p90_ms: 5\n  - bundle: pruned\n    runtime: onnxruntime\n    batch_size: 8\n" \
                  "    max_p90_ms: -3\n"
    assert _error(text) == "budgets.yaml:9: rules[1].max_p90_ms must be a number > 0, got -3"
    assert "rules[0].min_accuracy must be a fraction in [0, 1]" in _error(RULE + "    min_accuracy: 1.5\n")
    assert "rules[0].max_accuracy_drop must be a fraction" in _error(RULE + "    max_accuracy_drop: -0.01\n")
    assert "rules[0].max_memory_mb must be a number > 0, got None" in _error(RULE + "    max_memory_mb:\n")
    assert "rules[0].min_speedup must be a number > 0, got True" in _error(RULE + "    min_speedup: yes\n")


def test_unknown_runtime_lists_the_known_ones():
    message = _error(RULE.replace("onnxruntime", "tflite") + "    max_p50_ms: 5\n")
    assert message.startswith("budgets.yaml:3: rules[0].runtime must be a known runtime (")
    assert all(name in message for name in list_runtimes()) and "'tflite'" in message


@pytest.mark.parametrize("text, expected", [
    ("rules: [\n  {bundle: a,\n", "budgets.yaml:3: not valid YAML"),
    (RULE, "budgets.yaml:2: rules[0]: no budget given; set at least one of max_p50_ms"),
    ("confidence: 0.3\n" + RULE + "    max_p50_ms: 5\n", "budgets.yaml:1: confidence must be a number in (0.5, 1)"),
    ("confidence: 1\n" + RULE + "    max_p50_ms: 5\n", "budgets.yaml:1: confidence must be a number in (0.5, 1)"),
    ("confidence: high\n" + RULE + "    max_p50_ms: 5\n", "got 'high'"),
    ("", "budgets.yaml: the file is empty"),
    ("confidence: 0.9\n", "budgets.yaml:1: missing required key 'rules'"),
    ("rules: []\n", "budgets.yaml:1: rules must be a non-empty list"),
    ("rules:\n  - bundle: a\n    batch_size: 1\n    max_p50_ms: 5\n", "rules[0]: missing required key 'runtime'"),
    (RULE + "    max_p50_ms: 5\n    max_p50_ms: 6\n", "budgets.yaml:6: rules[0]: key 'max_p50_ms' is given twice"),
    (RULE.replace("1\n", "0\n") + "    max_p50_ms: 5\n", "budgets.yaml:4: rules[0].batch_size must be an integer >= 1"),
    (RULE + "    device: tpu\n    max_p50_ms: 5\n", "rules[0].device must be one of cpu, cuda, got 'tpu'"),
    (RULE + "    max_p50_ms: 5\n" + RULE[7:] + "    max_p99_ms: 9\n",
     "budgets.yaml:6: rules[1]: name 'pruned/onnxruntime/cpu/bs1' is already used by rules[0]"),
    ("- 1\n", "budgets.yaml:1: the top level must be a mapping"),
    (RULE + "    max_p50_ms: !!python/name:os.system\n", "budgets.yaml:5: not valid YAML: could not determine"),
])
def test_invalid_budgets_files(text, expected):
    assert expected in _error(text)


def test_missing_file_and_rules_built_in_python(tmp_path):
    with pytest.raises(BudgetError, match="does not exist"):
        load_budgets(tmp_path / "nope.yaml")
    with pytest.raises(BudgetError, match="sets no budget"):
        Rule("pruned", RUNTIME, 1)
    with pytest.raises(BudgetError, match="max_p50_ms must be a number > 0, got -1"):
        Rule("pruned", RUNTIME, 1, max_p50_ms=-1)
    with pytest.raises(BudgetError, match="confidence must be"):
        Budgets((Rule("pruned", RUNTIME, 1, max_p50_ms=1),), confidence=math.nan)


# ----------------------------------------------------------------------------- a real report


def test_real_report_speedup_gate():
    results = json.loads(REAL_REPORT.read_text())
    rules = (Rule("b_half", RUNTIME, 1, min_speedup=1.3, max_p50_ms=1000),
             Rule("b_half", RUNTIME, 1, name="impossible", min_speedup=3.0))
    report = evaluate_gate(Budgets(rules), results)
    assert [c.status for c in report.checks] == ["pass", "pass", "fail"]
    assert report.exit_code == EXIT_VIOLATED
