"""Pipelines: every example runs end to end (--quick), resume skips finished steps, bad input is named."""
import json
from pathlib import Path

import pytest

from compressor.app.pipeline._core import PipelineError, load_pipeline, run_pipeline
from compressor.app.cli import DEFAULT_PIPELINE, main

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))
HEAVY = {"latency_resnet50.yaml", "latency_mobilenetv2.yaml", "pruned_vs_thinresnet.yaml"}


def tiny(**changes):
    """A seconds-long pipeline: LeNet-5 on digits, train, prune, fold."""
    steps = [{"train": {"epochs": 1, "lr": 0.003, "optimizer": "adamw", "batch_size": 64}},
             {"prune": {"criterion": "l1", "ratio": 0.5}}, {"fold": {}}]
    return {"name": "tiny", "model": "lenet5", "data": "digits", "threads": 2, "steps": steps, **changes}


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {f"scenario{i}" for i in range(1, 5)} <= {n.split("_")[0] for n in names}
    assert {"latency_resnet50.yaml", "latency_mobilenetv2.yaml", "pruned_vs_thinresnet.yaml"} <= names


@pytest.mark.parametrize("path", [DEFAULT_PIPELINE, *EXAMPLES], ids=lambda p: p.stem)
def test_pipeline_runs_end_to_end_in_quick_mode(path, tmp_path, request):
    if path.name in HEAVY:
        request.applymarker(pytest.mark.slow)
    pipeline = load_pipeline(path, quick=True)
    result = run_pipeline(pipeline, tmp_path / "run", progress=False, log=lambda m: None)
    assert len(result.executed) == len(pipeline.steps) and not result.skipped
    for step in pipeline.steps:
        record = json.loads((tmp_path / "run" / f"{step.index + 1:02d}_{step.kind}" / "step.json").read_text())
        assert record["status"] == "done" and record["kind"] == step.kind
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["quick"] is True and (tmp_path / "run" / "summary.md").is_file()
    state, results = result.state, result.state["results"]
    for name, r in results.items():
        if name.endswith("_prune"):
            target = r["target"]
            if target[0] == "target_flops":
                assert r["flops_ratio"] <= target[1] + 0.05
        if name.endswith("_evaluate"):
            # classification: top-1 per bundle and runtime; detection: COCO mAP@0.5
            scores = r["top1"] if "top1" in r else {bundle: {rt: m["map50"] for rt, m in by_rt.items()}
                                                        for bundle, by_rt in r["map"].items()}
            for by_runtime in scores.values():
                assert all(0 <= v <= 1 for v in by_runtime.values())
                assert max(by_runtime.values()) - min(by_runtime.values()) < 0.02  # the runtimes agree
        if name.endswith("_bench"):
            assert r["speedup"] and all(row["theoretical"] > 1.5 for row in r["speedup"])
            assert (tmp_path / "run" / state["report"] / "report.html").is_file()
        if name.endswith("_baselines"):
            labels = [row["model"] for row in r["rows"]]
            assert labels[:2] == ["unpruned", "pruned"] and any("ThinResNet" in m for m in labels)
    if "bundle" in state:
        assert (tmp_path / "run" / state["bundle"] / "manifest.json").is_file()
    if path == DEFAULT_PIPELINE:  # the demo prunes with the deployment-aware default and records it
        alignment = results["02_prune"]["alignment"]
        assert alignment["round_to"] == "auto" and set(alignment["auto"]["kinds"]) == {"conv", "depthwise", "linear"}
        assert set(alignment["auto"]["runtimes"]) >= {"onnxruntime", "openvino"}
        manifest = json.loads((tmp_path / "run" / state["bundle"] / "manifest.json").read_text())
        assert manifest["alignment"] == alignment
        # the demo exports INT8: each runtime's decision, its reason and the shipped precision are recorded
        decisions = results["04_export"]["int8"]
        assert set(decisions) == {"onnx", "openvino"} and all(d["reason"] for d in decisions.values())
        assert {t: d["decision"] for t, d in decisions.items()} == {
            t: p for t, p in manifest["artifact_precision"].items() if t != "torch"}
        assert manifest["artifact_precision"]["torch"] == "fp32"
        baseline = json.loads((tmp_path / "run" / state["baseline_bundle"] / "manifest.json").read_text())
        assert set(baseline["artifact_precision"].values()) == {"fp32"}  # the reference stays FP32


def test_resume_skips_unchanged_steps_and_redoes_changed_ones(tmp_path):
    out, logs = tmp_path / "run", []
    first = run_pipeline(load_pipeline(tiny()), out, progress=False, log=logs.append)
    assert first.executed == ["01_train", "02_prune", "03_fold"]
    mtime = (out / "01_train" / "step.json").stat().st_mtime_ns
    again = run_pipeline(load_pipeline(tiny()), out, progress=False, log=logs.append)
    assert again.executed == [] and again.skipped == ["01_train", "02_prune", "03_fold"]
    assert again.state == first.state
    changed = tiny()
    changed["steps"][1] = {"prune": {"criterion": "l1", "ratio": 0.25}}
    third = run_pipeline(load_pipeline(changed), out, progress=False, log=logs.append)
    assert third.skipped == ["01_train"] and third.executed == ["02_prune", "03_fold"]
    assert (out / "01_train" / "step.json").stat().st_mtime_ns == mtime
    assert third.state["results"]["02_prune"]["params_ratio"] > first.state["results"]["02_prune"]["params_ratio"]
    shorter = tiny(steps=changed["steps"][:2])
    run_pipeline(load_pipeline(shorter), out, progress=False, log=logs.append)
    assert not (out / "03_fold").exists()  # a step no longer in the pipeline does not linger


def test_another_runs_directory_is_refused_without_force(tmp_path, capsys):
    out = tmp_path / "run"
    run_pipeline(load_pipeline(tiny(steps=[{"train": {"epochs": 1, "batch_size": 64}}])), out, progress=False,
                 log=lambda m: None)
    before = sorted(p.name for p in out.iterdir())
    other = tiny(name="other", steps=[{"train": {"epochs": 1, "batch_size": 64}}])
    with pytest.raises(PipelineError, match="holds another run's artifacts; pass --force"):
        run_pipeline(load_pipeline(other), out, progress=False, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not a pipeline run"):
        run_pipeline(load_pipeline(other), tmp_path / "junk", progress=False, log=lambda m: None)
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"
    result = run_pipeline(load_pipeline(other), out, force=True, progress=False, log=lambda m: None)
    assert result.executed == ["01_train"]
    assert json.loads((out / "run.json").read_text())["identity"]["pipeline"] == "other"


@pytest.mark.parametrize("change,message", [
    ({"modle": "lenet5"}, "unknown key(s) ['modle']; allowed:"),
    ({"seed": -1}, "'seed' must be an integer >= 0"),
    ({"steps": []}, "'steps' must be a non-empty list"),
    ({"steps": [{"prun": {}}]}, "steps[0]: unknown step 'prun'; known steps: train, finetune, prune"),
    ({"steps": [{"train": {"epochs": "five"}}]}, "steps[0] (train): epochs must be an integer >= 1"),
    ({"steps": [{"train": {"epoch": 3}}]}, "steps[0] (train): unknown key(s) ['epoch']; allowed: ["),
    ({"steps": [{"prune": {"criterion": "l3", "ratio": 0.5}}]}, "steps[0] (prune): unknown criterion 'l3'"),
    ({"steps": [{"prune": {"ratio": 0.5, "strategy": {"name": "play_and_prune", "tolerance": -1}}}]},
     "tolerance must be >= 0"),
    ({"steps": [{"prune": {"ratio": 0.5, "strategy": {"name": "psfp", "psfp_d": 0.9}}}]},
     "steps[0] (prune): PSFPConfig option d (psfp_d) must be in (0, 0.75), got 0.9"),
    ({"steps": [{"prune": {"ratio": 0.5, "strategy": {"name": "psfp", "tolerance": 0.01}}}]},
     "steps[0] (prune): unknown option(s) ['tolerance'] for strategy 'psfp'; allowed: ['bn_recalibration', "
     "'epochs', 'finetune_epochs', 'psfp_d']"),
    ({"steps": [{"export": {"to": ["onnx", "tflite"]}}]}, "'to' has unknown target(s) ['tflite']"),
    ({"steps": [{"bench": {"batch_sizes": [0]}}]}, "steps[0] (bench):"),
    ({"data": "digits:0-12"}, "'data': digits subset"),
    ({"steps": [{"evaluate": {"runtimes": ["tflite"]}}]}, "unknown runtime(s) ['tflite']"),
    ({"steps": [{"export": {"calib_samples": 100}}]}, "steps[0] (export): ['calib_samples'] apply to precision: int8"),
    ({"steps": [{"export": {"precision": "int4"}}]}, "'precision' must be 'fp32', 'fp16' or 'int8', got 'int4'"),
    ({"steps": [{"export": {"precision": "int8", "calib_samples": 8}}]},
     "steps[0] (export): --calib-samples must be at least 32"),
])
def test_invalid_pipeline_names_the_key(change, message):
    with pytest.raises(PipelineError) as exc:
        load_pipeline(tiny(**change))
    assert message in str(exc.value)


def test_missing_step_input_is_named(tmp_path):
    pipeline = load_pipeline(tiny(steps=[{"train": {"epochs": 1, "batch_size": 64}}, {"evaluate": {}}]))
    with pytest.raises(PipelineError, match="needs a bundle, which no earlier step produced"):
        run_pipeline(pipeline, tmp_path / "run", progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "01_train" / "step.json").is_file()  # the finished step is kept for a resume
    assert not any(p.name.startswith(".") for p in (tmp_path / "run").iterdir())  # no half-written step
    nodata = load_pipeline(tiny(data=None, steps=[{"train": {"epochs": 1}}]))
    with pytest.raises(PipelineError, match="needs data"):
        run_pipeline(nodata, tmp_path / "run2", progress=False, log=lambda m: None)


def test_cli_run_and_errors(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(tiny(steps=[{"train": {"epochs": 1, "batch_size": 64}}])))
    assert main(["run", str(path), "--output", str(tmp_path / "r"), "--quiet"]) == 0
    assert "summary:" in capsys.readouterr().out
    path.write_text("name: x\nmodel: lenet5\nsteps:\n  - train: {epochs: [}\n")
    assert main(["run", str(path), "--output", str(tmp_path / "r2")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _gated(rules):
    return tiny(steps=[{"train": {"epochs": 1, "lr": 0.003, "optimizer": "adamw", "batch_size": 64}},
                       {"prune": {"criterion": "l1", "ratio": 0.5}},
                       {"export": {"to": ["onnx"], "batch_sizes": [1]}}, {"evaluate": {}},
                       {"bench": {"runtimes": ["onnxruntime"], "batch_sizes": [1], "min_seconds": 0.2,
                                  "max_seconds": 1.0, "memory": False}},
                       {"gate": {"budgets": {"rules": rules}}}])


def test_gate_step_passes_and_fails_the_run(tmp_path, capsys):
    ok = [{"bundle": "bundle", "runtime": "onnxruntime", "batch_size": 1, "max_p50_ms": 10000, "min_accuracy": 0.0}]
    result = run_pipeline(load_pipeline(_gated(ok)), tmp_path / "a", progress=False, log=lambda m: None)
    assert result.state["results"]["06_gate"]["verdict"] == "pass"
    bad = [{"bundle": "bundle", "runtime": "onnxruntime", "batch_size": 1, "max_p50_ms": 0.001}]
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(_gated(bad)))
    assert main(["run", str(path), "--output", str(tmp_path / "b"), "--quiet"]) == 1
    assert "gate violated" in capsys.readouterr().err
    assert (tmp_path / "b" / "gate-junit.xml").is_file()
    step = json.loads((tmp_path / "b" / "06_gate" / "step.json").read_text())
    assert step["status"] == "failed" and step["exit_code"] == 1  # kept for inspection, redone on a rerun
    with pytest.raises(PipelineError, match="max_p50_ms"):
        load_pipeline(_gated([{"bundle": "bundle", "runtime": "onnxruntime", "batch_size": 1, "max_p50_ms": -1}]))


def test_a_failed_measurement_or_parity_check_fails_the_run(tmp_path, patch_everywhere, capsys):
    """run never exits 0 on a measurement that did not happen (4) or an export that failed parity (3)."""
    import benchmarks

    real = benchmarks.run_benchmark

    def one_row_fails(*args, **kwargs):
        results = real(*args, **kwargs)
        results["latency"][0].update(status="error", error="RuntimeError: the session crashed", stats=None)
        return results

    patch_everywhere(benchmarks, "run_benchmark", one_row_fails)
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(_gated([{"bundle": "bundle", "runtime": "onnxruntime", "batch_size": 1,
                                        "max_p50_ms": 10000}])))
    assert main(["run", str(path), "--output", str(tmp_path / "m"), "--quiet"]) == 4
    err = capsys.readouterr().err
    assert "measurement(s) failed" in err and "the session crashed" in err
    assert (tmp_path / "m" / "05_bench" / "report" / "results.json").is_file()  # the report is kept
    assert json.loads((tmp_path / "m" / "05_bench" / "step.json").read_text())["status"] == "failed"
    patch_everywhere(benchmarks, "run_benchmark", real)

    import compressor.app._bundle as _deploy
    from runtimes import ParityError, ParityResult

    def parity_fails(*args, **kwargs):
        raise ParityError([ParityResult("onnxruntime", "cpu", "fp32", 1, 0.5, 0.5, 0.2, 0.0, 1e-3, 0.999, False)])

    patch_everywhere(_deploy, "export_bundle", parity_fails)
    assert main(["run", str(path), "--output", str(tmp_path / "p"), "--quiet"]) == 3
    assert "parity" in capsys.readouterr().err.lower()
