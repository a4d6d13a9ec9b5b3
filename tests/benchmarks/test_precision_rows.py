"""Precision as a dimension of ``bench`` and ``gate`` (INT8 bundles, issue 18).

Rows say the precision their artifact was opened at; ``auto`` opens each artifact at its own
(``artifact_precision``, else the bundle's ``precision``, else fp32); a rule naming a precision
fails on a row of another; accuracy budgets fall back to the manifest's figures; the report sets
a mixed-precision speedup against FLOPs ratio x INT8 factor. The gate and report tests run on
constructed results dicts; one sweep runs a tiny real bundle on onnxruntime.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import benchmarks._sweep as _sweep
from benchmarks._budgets import BudgetError, Budgets, Rule, parse_budgets
from benchmarks._command import build_parser
from benchmarks._gate import EXIT_PASS, EXIT_UNMEASURED, EXIT_VIOLATED, evaluate_gate, format_table
from benchmarks._report import render_markdown, validate_results, write_report
from benchmarks._stats import paired_speedup, summarize
from benchmarks._sweep import BenchBundle, BenchConfig, load_bench_bundles, run_benchmark
from benchmarks._timing import TimingConfig
from runtimes import BundleConfig, get_runtime, write_bundle

RESAMPLES = 200
REASON = "int8 top-1 fell 0.031 on openvino, over the 0.01 budget"
INT8_FACTOR = 1.5  # the candidate's INT8-over-FP32 speedup on onnxruntime, as its export measured it
FLOPS = {"base": 2000, "pruned": 1000}  # theoretical speedup 2.0
QUICK = TimingConfig(warmup=1, min_runs=3, max_runs=6, min_seconds=0.0, max_seconds=0.3)
needs_onnxruntime = pytest.mark.skipif(get_runtime("onnxruntime").is_available() is not None,
                                       reason=f"onnxruntime unavailable: {get_runtime('onnxruntime').is_available()}")


# ----------------------------------------------------------------------------- constructed results


def _speed(speedup: float) -> dict:
    return {"fp32_ms_median": 3.0, "int8_ms_median": 3.0 / speedup, "speedup": speedup,
            "speedup_ci": [speedup * 0.9, speedup * 1.1], "batch_size": 8, "threads": 2, "runtime": "x"}


def _bundle(name: str, role: str, *, artifact_precision: dict, accuracy: dict | None = None,
            int8: bool = False) -> dict:
    entry = {"name": name, "role": role, "path": f"/tmp/{name}", "input_shape": [3, 32, 32], "flops": FLOPS[name],
             "params": 10, "mps_bytes": 40, "fm_elements": 100, "weights_trained": True, "source": None,
             "artifacts": {"onnx": "model.onnx", "openvino": "openvino/model.xml"},
             "precision": "int8" if int8 else "fp32", "artifact_precision": artifact_precision,
             "accuracy": accuracy, "int8_factor": None, "int8_decision": None}
    if int8:
        entry["int8_factor"] = {"onnxruntime": INT8_FACTOR, "openvino": 1.1}
        entry["int8_decision"] = {"onnxruntime": {"decision": "int8", "reason": "1.5x faster", "speed": _speed(1.5)},
                                  "openvino": {"decision": "fp32", "reason": REASON, "speed": _speed(1.1)}}
    return entry


def _accuracy(fp32: float, shipped: float, runtime: str = "onnxruntime") -> dict:
    return {"metric": "top1", "split": "val", "samples": 1000, "fp32": {runtime: fp32}, "shipped": {runtime: shipped}}


def make_results(*, accuracy: dict | None = None, base_accuracy: dict | None = None, baseline: bool = True,
                 int8_factor: float | None = INT8_FACTOR) -> dict:
    """A schema_version 2 report: candidate ``pruned`` ships int8 on onnxruntime and fp32 on openvino
    (its INT8 refused there); baseline ``base`` is fp32 everywhere; 1.8x practical speedup, batch 1."""
    rng = np.random.default_rng(3)
    cand = _bundle("pruned", "candidate", artifact_precision={"onnx": "int8", "openvino": "fp32"},
                   accuracy=accuracy, int8=True)
    base = _bundle("base", "baseline", artifact_precision={"onnx": "fp32", "openvino": "fp32"},
                   accuracy=base_accuracy)
    bundles = [base, cand] if baseline else [cand]
    latency, speedup, memory = [], [], []
    for runtime, target in (("onnxruntime", "onnx"), ("openvino", "openvino")):
        cand_ms = 5.0 + rng.random(40) * 0.1
        samples = {"base": cand_ms * 1.8, "pruned": cand_ms}
        for b in bundles:
            key = {"runtime": runtime, "device": "cpu", "batch_size": 1, "bundle": b["name"],
                   "precision": b["artifact_precision"][target]}
            latency.append({**key, "status": "ok", "error": None, "settings": None,
                            "stats": summarize(samples[b["name"]], 1, resamples=RESAMPLES).to_dict()})
            memory.append({**key, "status": "ok", "error": None, "measured_bytes": 100 * 2 ** 20,
                           "peak_bytes": 200 * 2 ** 20, "theoretical_bytes": None, "detail": None})
        if baseline:
            practical = paired_speedup(samples["base"], samples["pruned"], resamples=RESAMPLES).to_dict()
            factor = int8_factor if cand["artifact_precision"][target] == "int8" else None
            speedup.append({"runtime": runtime, "device": "cpu", "batch_size": 1, "bundle": "pruned",
                            "baseline": "base", "practical": practical, "theoretical": 2.0,
                            "efficiency": practical["speedup_median"] / (2.0 * (factor or 1.0)),
                            "precision": cand["artifact_precision"][target], "baseline_precision": "fp32",
                            "int8_factor": factor})
    return {"schema_version": 2, "kind": "cnn-compressor-benchmark", "created_utc": "2026-11-21T10:00:00Z",
            "complete": True, "interrupted": False,
            "environment": {"cpu_model": None, "cpu_cores_logical": 2, "cpu_cores_available": 2, "os": "Linux",
                            "python": "3.11", "hostname": "h", "gpu": None, "versions": {}, "git_sha": None,
                            "git_dirty": None},
            "config": {"runtimes": ["onnxruntime", "openvino"], "batch_sizes": [1], "devices": ["cpu"], "threads": 2,
                       "precision": "auto"},
            "bundles": bundles, "latency": latency, "speedup": speedup, "memory": memory, "skipped": [],
            "warnings": []}


@pytest.fixture(scope="module")
def results() -> dict:
    return make_results()


def gate(results: dict, accuracy: dict | None = None, *, runtime: str = "onnxruntime", bundle: str = "pruned",
         **fields):
    return evaluate_gate(Budgets((Rule(bundle=bundle, runtime=runtime, batch_size=1, **fields),)), results, accuracy)


def only(report):
    (check,) = report.checks
    return check


def test_constructed_results_validate(results):
    validate_results(results)
    old = copy.deepcopy(results)
    del old["latency"][0]["precision"]
    with pytest.raises(ValueError, match=r"\$\.latency\[0\]: 'precision' is a required property"):
        validate_results(old)  # version 2 rows must say it ...
    old["schema_version"] = 1
    validate_results(old)  # ... a version 1 report had none


# ----------------------------------------------------------------------------- BenchBundle and BenchConfig


def _bench_bundle(manifest: dict) -> BenchBundle:
    return BenchBundle("b", "candidate", Path("/tmp/b"), (3, 8, 8),
                       {"artifacts": {"onnx": "model.onnx", "openvino": "openvino/model.xml"}, **manifest})


def test_auto_resolves_per_artifact_and_falls_back_for_old_manifests():
    int8 = _bench_bundle({"precision": "int8", "artifact_precision": {"onnx": "int8", "openvino": "fp32"},
                          "int8": {"targets": {"onnx": {"decision": "int8", "reason": "ok", "speed": _speed(1.7)},
                                               "openvino": {"decision": "fp32", "reason": REASON,
                                                            "speed": _speed(0.9)}}},
                          "accuracy": _accuracy(0.93, 0.92)})
    assert (int8.artifact_precision("onnxruntime"), int8.artifact_precision("openvino")) == ("int8", "fp32")
    assert int8.precision_for("onnxruntime") == "int8" and int8.precision_for("openvino", "auto") == "fp32"
    assert int8.precision_for("openvino", "fp16") == "fp16"  # an explicit precision forces it
    assert int8.int8_factor("onnxruntime") == 1.7 and int8.int8_factor("tensorrt") is None
    entry = int8.to_dict()
    assert entry["precision"] == "int8" and entry["artifact_precision"] == {"onnx": "int8", "openvino": "fp32"}
    assert entry["int8_factor"] == {"onnxruntime": 1.7, "openvino": 0.9}
    assert entry["int8_decision"]["openvino"]["decision"] == "fp32"
    assert entry["int8_decision"]["openvino"]["reason"] == REASON
    assert entry["accuracy"]["shipped"] == {"onnxruntime": 0.92} and entry["accuracy"]["split"] == "val"

    fp16 = _bench_bundle({"precision": "fp16"})  # before artifact_precision: the bundle's precision
    assert fp16.artifact_precision("openvino") == "fp16" and fp16.to_dict()["artifact_precision"]["onnx"] == "fp16"
    old = _bench_bundle({})  # before precision was recorded at all: fp32
    assert old.precision_for("onnxruntime") == "fp32"
    assert {k: old.to_dict()[k] for k in ("accuracy", "int8_factor", "int8_decision")} == dict.fromkeys(
        ("accuracy", "int8_factor", "int8_decision"))


def test_bench_config_precision_defaults_to_auto_and_names_a_bad_value():
    assert BenchConfig().precision == "auto"
    config = BenchConfig(precision="int8")
    assert BenchConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="precision must be one of 'auto', 'fp32', 'fp16', 'int8', got 'bf16'"):
        BenchConfig(precision="bf16")
    parser = build_parser()
    assert parser.parse_args(["b", "--output", "o"]).precision == "auto"
    assert parser.parse_args(["b", "--output", "o", "--precision", "int8"]).precision == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args(["b", "--output", "o", "--precision", "int4"])


# ----------------------------------------------------------------------------- a real sweep


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="module")
def tiny_bundles(tmp_path_factory, export_dynamic_batch) -> dict:
    """Two real fp32 onnx bundles: ``base`` written before precision fields existed, ``pruned`` with
    ``artifact_precision``, its INT8 refused on onnx, and its accuracy."""
    root = tmp_path_factory.mktemp("precision")
    torch.manual_seed(0)
    model = _Tiny().eval()
    onnx = export_dynamic_batch(model, root / "tiny.onnx", (3, 8, 8))

    def reference(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    config = BundleConfig(targets=("onnx",), batch_sizes=(1, 2), threads=1)
    extra = {"artifact_precision": {"onnx": "fp32"}, "accuracy": _accuracy(0.93, 0.93),
             "int8": {"targets": {"onnx": {"decision": "fp32", "reason": REASON, "speed": _speed(0.8)}}}}
    write_bundle(onnx, root / "base", reference, (3, 8, 8), config)
    write_bundle(onnx, root / "pruned", reference, (3, 8, 8), config, extra=extra)
    return {"base": root / "base", "pruned": root / "pruned"}


@needs_onnxruntime
def test_rows_carry_the_precision_and_bundles_their_manifest_figures(tiny_bundles, tmp_path):
    config = BenchConfig(runtimes=("onnxruntime",), batch_sizes=(1,), threads=1, timing=QUICK, memory=False)
    results = run_benchmark([tiny_bundles["pruned"]], tiny_bundles["base"], config, progress=False)
    validate_results(results)
    assert results["schema_version"] == 2 and results["config"]["precision"] == "auto"
    assert [r["precision"] for r in results["latency"]] == ["fp32", "fp32"]
    (row,) = results["speedup"]
    assert (row["precision"], row["baseline_precision"], row["int8_factor"]) == ("fp32", "fp32", None)
    base, pruned = results["bundles"]
    assert base["artifact_precision"] == {"onnx": "fp32"} and base["accuracy"] is None  # an old manifest
    assert pruned["accuracy"]["shipped"] == {"onnxruntime": 0.93}
    assert pruned["int8_decision"]["onnxruntime"]["reason"] == REASON and pruned["int8_factor"] == {
        "onnxruntime": 0.8}
    summary = (write_report(results, tmp_path / "r") / "summary.md").read_text()
    assert "| precision |" in summary and "ships fp32 (INT8 refused: " + REASON in summary


class _Recording:
    """A runtime that records the precision each artifact is opened at, then opens it as the fp32 it is."""

    def __init__(self, runtime, opened: dict):
        self._runtime, self._opened = runtime, opened

    def __getattr__(self, name):
        return getattr(self._runtime, name)

    def load(self, path, config):
        self._opened[path.parent.name] = config.precision
        return self._runtime.load(path, dataclasses.replace(config, precision="fp32"))


@needs_onnxruntime
@pytest.mark.parametrize("requested", ["auto", "fp32"])
def test_auto_opens_each_artifact_at_its_own_precision(tiny_bundles, monkeypatch, requested):
    base, pruned = load_bench_bundles([tiny_bundles["pruned"]], tiny_bundles["base"])
    int8 = {"artifact_precision": {"onnx": "int8"}, "precision": "int8", "cost": {"flops": FLOPS["pruned"]},
            "int8": {"targets": {"onnx": {"decision": "int8", "reason": "ok", "speed": _speed(INT8_FACTOR)}}}}
    bundles = [dataclasses.replace(base, manifest={**base.manifest, "cost": {"flops": FLOPS["base"]}}),
               dataclasses.replace(pruned, manifest={**pruned.manifest, **int8})]
    monkeypatch.setattr(_sweep, "load_bench_bundles", lambda *args: bundles)
    opened: dict[str, str] = {}
    real = _sweep.get_runtime
    monkeypatch.setattr(_sweep, "get_runtime", lambda name, **kw: _Recording(real(name, **kw), opened))
    config = BenchConfig(runtimes=("onnxruntime",), batch_sizes=(1,), threads=1, timing=QUICK, memory=False,
                         precision=requested)
    results = run_benchmark(["pruned"], "base", config, progress=False)
    validate_results(results)
    expected = {"base": "fp32", "pruned": "int8" if requested == "auto" else "fp32"}
    assert opened == expected
    assert {r["bundle"]: r["precision"] for r in results["latency"]} == expected
    (row,) = results["speedup"]
    practical = row["practical"]["speedup_median"]
    if requested == "auto":  # int8 over fp32: set against FLOPs ratio x INT8 factor
        assert row["int8_factor"] == INT8_FACTOR and row["theoretical"] == 2.0
        assert row["efficiency"] == pytest.approx(practical / (2.0 * INT8_FACTOR))
        assert row["verdict"]["theoretical"] == pytest.approx(2.0 * INT8_FACTOR)
    else:
        assert row["int8_factor"] is None and row["efficiency"] == pytest.approx(practical / 2.0)


# ----------------------------------------------------------------------------- the gate: precision


def test_precision_rule_passes_on_an_int8_row(results):
    report = gate(results, precision="int8", max_p50_ms=100, min_speedup=1.2, max_memory_mb=500)
    assert report.exit_code == EXIT_PASS
    assert {c.precision for c in report.checks} == {"int8"}
    assert report.checks[0].rule.name == "pruned/onnxruntime/cpu/bs1/int8"
    assert report.to_dict()["checks"][0]["required_precision"] == "int8"


def test_precision_rule_fails_on_a_row_of_another_precision(results):
    report = gate(results, runtime="openvino", precision="int8", max_p50_ms=100, max_memory_mb=500)
    assert report.exit_code == EXIT_VIOLATED
    for check in report.checks:  # within every budget, but measured on the wrong artifact
        assert check.status == "fail" and check.precision == "fp32" and check.measured is not None
        assert check.detail == (f"bundle pruned ships fp32 on openvino (its INT8 artifact was refused: {REASON}), "
                                "rule asks int8")
    table = format_table(report)
    assert "fp32 (rule: int8)" in table and "ships fp32 on openvino" in table
    assert gate(results, runtime="openvino", max_p50_ms=100).exit_code == EXIT_PASS  # no precision: as before


def test_a_forced_precision_is_named_as_such(results):
    forced = copy.deepcopy(results)
    for row in forced["latency"]:
        row["precision"] = "fp16"  # bench --precision fp16: OpenVINO ran its FP32 IR in fp16
    check = only(gate(forced, runtime="openvino", precision="fp32", max_p50_ms=100))
    assert check.status == "fail" and check.detail == (
        "bundle pruned was measured at fp16 on openvino (the benchmark forced --precision fp16; the artifact "
        "computes in fp32), rule asks fp32")
    assert only(gate(forced, runtime="openvino", precision="fp16", max_p50_ms=100)).status == "pass"


def test_precision_rule_on_an_unmeasured_target_stays_unmeasured(results):
    report = evaluate_gate(Budgets((Rule("pruned", "onnxruntime", 8, precision="int8", max_p50_ms=1),)), results)
    assert report.exit_code == EXIT_UNMEASURED


def test_version_1_reports_match_on_their_config_precision(results):
    old = copy.deepcopy(results)
    old["schema_version"], old["config"]["precision"] = 1, "fp32"
    for table in ("latency", "memory", "speedup"):
        for row in old[table]:
            for key in ("precision", "baseline_precision", "int8_factor"):
                row.pop(key, None)
    for bundle in old["bundles"]:
        for key in ("precision", "artifact_precision", "accuracy", "int8_factor", "int8_decision"):
            del bundle[key]
    assert gate(old, precision="fp32", max_p50_ms=100).exit_code == EXIT_PASS
    check = only(gate(old, precision="int8", max_p50_ms=100))
    assert check.status == "fail" and "ships fp32 on onnxruntime" in check.detail


# ----------------------------------------------------------------------------- the gate: accuracy


def test_min_accuracy_on_an_int8_row_reads_the_manifest():
    results = make_results(accuracy=_accuracy(0.93, 0.91))
    ok = only(gate(results, precision="int8", min_accuracy=0.90))
    assert (ok.status, ok.measured, ok.precision) == ("pass", 0.91, "int8")
    assert "pruned shipped top-1 0.9100 from its manifest, val split, 1000 samples" in ok.detail
    assert only(gate(results, min_accuracy=0.92)).status == "fail"
    given = only(gate(results, {"pruned": {"onnxruntime": 0.95}}, min_accuracy=0.92))  # given wins
    assert given.status == "pass" and "as given" in given.detail
    assert only(gate(results, runtime="openvino", min_accuracy=0.5)).status == "unmeasured"  # none recorded


def test_max_accuracy_drop_against_its_own_fp32_accuracy():
    results = make_results(accuracy=_accuracy(0.93, 0.91))  # the baseline has no accuracy anywhere
    ok = only(gate(results, max_accuracy_drop=0.03))
    assert ok.status == "pass" and ok.measured == pytest.approx(0.02)
    assert ok.detail.endswith("(pruned fp32 top-1 0.9300 from its manifest, val split, 1000 samples - pruned "
                              "shipped top-1 0.9100 from its manifest, val split, 1000 samples)")
    assert only(gate(results, max_accuracy_drop=0.01)).status == "fail"
    alone = make_results(accuracy=_accuracy(0.93, 0.91), baseline=False)  # no baseline bundle at all
    assert only(gate(alone, max_accuracy_drop=0.01)).status == "fail"


def test_max_accuracy_drop_prefers_the_baselines_accuracy():
    results = make_results(accuracy=_accuracy(0.93, 0.91), base_accuracy=_accuracy(0.95, 0.95))
    check = only(gate(results, max_accuracy_drop=0.03))
    assert check.status == "fail" and check.measured == pytest.approx(0.04)
    assert "base shipped top-1 0.9500 from its manifest" in check.detail
    given = only(gate(results, {"baseline": {"onnxruntime": 0.92}}, max_accuracy_drop=0.03))
    assert given.status == "pass" and given.measured == pytest.approx(0.01) and "baseline top-1 0.9200 as given" \
        in given.detail


# ----------------------------------------------------------------------------- budgets files


RULE = """\
rules:
  - bundle: pruned
    runtime: openvino
    batch_size: 1
    precision: {value}
    max_p50_ms: 5
"""


def test_precision_in_a_budgets_file():
    budgets = parse_budgets(RULE.format(value="int8"), "budgets.yaml")
    (rule,) = budgets.rules
    assert rule.precision == "int8" and rule.to_dict()["precision"] == "int8"
    assert parse_budgets(yaml.safe_dump(budgets.to_dict())) == dataclasses.replace(budgets, source="<budgets>")
    assert "precision" not in Rule("b", "openvino", 1, max_p50_ms=5).to_dict()


@pytest.mark.parametrize("value", ["int4", "null", "8"])
def test_bad_precision_is_a_budget_error_with_the_line(value):
    with pytest.raises(BudgetError) as info:
        parse_budgets(RULE.format(value=value), "budgets.yaml")
    assert str(info.value).startswith("budgets.yaml:5: rules[0].precision must be one of fp32, fp16, int8, got ")
    with pytest.raises(BudgetError, match="precision must be one of fp32, fp16, int8, got 'bf16'"):
        Rule("b", "openvino", 1, precision="bf16", max_p50_ms=5)


# ----------------------------------------------------------------------------- the report


def _csv(results: dict, tmp_path) -> dict:
    with open(write_report(results, tmp_path / "r") / "results.csv", newline="") as f:
        return {(r["runtime"], r["bundle"]): r for r in csv.DictReader(f)}


def test_report_efficiency_with_an_int8_factor_is_the_hand_computation(results, tmp_path):
    row = next(r for r in results["speedup"] if r["runtime"] == "onnxruntime")
    practical = row["practical"]["speedup_median"]
    by_hand = practical / (2.0 * INT8_FACTOR)
    rows = _csv(results, tmp_path)
    cand = rows["onnxruntime", "pruned"]
    assert (cand["precision"], cand["baseline_precision"]) == ("int8", "fp32")
    assert float(cand["int8_factor"]) == INT8_FACTOR and float(cand["speedup_theoretical"]) == 2.0
    assert float(cand["efficiency"]) == pytest.approx(by_hand, rel=1e-12)
    assert rows["openvino", "pruned"]["int8_factor"] == "" and rows["openvino", "pruned"]["precision"] == "fp32"
    line = next(line for line in render_markdown(results).splitlines()
                if line.startswith("| onnxruntime | cpu | 1 | pruned |"))
    assert "| int8 |" in line and f"| 2.00x | {by_hand:.0%} | 1.50x |" in line


def test_report_marks_a_mixed_precision_efficiency_without_a_factor(tmp_path):
    results = make_results(int8_factor=None)
    for bundle in results["bundles"]:
        bundle["int8_factor"] = None
    row = next(r for r in results["speedup"] if r["runtime"] == "onnxruntime")
    practical = row["practical"]["speedup_median"]
    row["efficiency"] = practical / 2.0
    assert float(_csv(results, tmp_path)["onnxruntime", "pruned"]["efficiency"]) == pytest.approx(practical / 2.0)
    line = next(line for line in render_markdown(results).splitlines()
                if line.startswith("| onnxruntime | cpu | 1 | pruned |"))
    assert f"{practical / 2.0:.0%} (precision differs: int8 vs fp32) | — |" in line
