"""Random command lines never end in a traceback: every subcommand exits with a documented code.

Hypothesis draws argument lists for each subcommand from valid flags, wrong types, negatives,
zero, missing and damaged files, unknown names and unknown flags, and calls ``main(argv)`` in
this process. The exit code (returned, or ``SystemExit``'s) must be one of the documented ones
and stderr must hold no traceback; any other exception escaping ``main`` fails the test.

What is tested is the parsing and validation up to the library calls, so the slow calls
(training, strategies, the latency search, export, benchmarking, pipelines, the alignment probe
and the speed check) are replaced by fakes: the strategies, training, export and pipelines by
one that stops the command with :class:`_Reached` (the arguments got through), and the benchmark
by one that first loads the bundles as the real one does. Models are lenet5 and resnet20 at
32x32, which prune in a fraction of a second; ``eval`` runs for real on the bundled digits.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import event, given, HealthCheck, settings, strategies as st

from compressor import save_model
from compressor.app.cli import main
from models import create_model
from runtimes._bundle import BundleConfig, write_bundle

EXIT_CODES = {0, 1, 2, 3, 4, 130}  # README: ok, a rule or check failed, bad input, parity failed, not measured, Ctrl-C
REPORT = Path(__file__).parents[2] / "benchmarks" / "results" / "resnet50_cpu_2core"
COMMANDS = ("prune", "graph", "export", "bench", "gate", "info", "train", "eval", "run", "demo")


class _Reached(BaseException):
    """A fake library call was reached: the arguments passed validation (BaseException, so no
    ``except Exception`` in the code under test can turn it into an exit code)."""


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Inputs good and bad: a saved model, a bundle manifest, damaged files, missing paths."""
    root = tmp_path_factory.mktemp("fuzz")
    model = create_model("resnet20").eval()  # 3x32x32, as the digits data are by default
    model.compressor_metadata = {"input_size": [3, 32, 32]}
    save_model(model, root / "model", arch=getattr(model, "zoo_spec", None))
    torch.save(model.state_dict(), root / "resnet20.pt")
    tiny = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 10)).eval()
    with warnings.catch_warnings():  # the legacy exporter (quick) and its deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny, (torch.zeros(2, 3, 32, 32),), str(root / "tiny.onnx"), dynamo=False, opset_version=18,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    for name in ("bundle", "bundle2"):  # a verified ONNX-only bundle of a tiny classifier
        write_bundle(root / "tiny.onnx", root / name, lambda x: tiny(torch.from_numpy(x)).detach().numpy(),
                     (3, 32, 32), BundleConfig(targets=("onnx",), batch_sizes=(2,), threads=1),
                     extra={"source": "tiny", "weights": {"origin": "random-init", "trained": False}})
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not a model\n")
    (root / "corrupt_model").mkdir()
    (root / "corrupt_model" / "model.json").write_text("{not json")
    (root / "bad_manifest").mkdir()
    (root / "bad_manifest" / "manifest.json").write_text("[]")
    (root / "garbage.pt").write_bytes(b"\x00garbage\xff" * 8)
    (root / "budgets.yaml").write_text(json.dumps({"rules": [
        {"bundle": "b_half_rt16", "runtime": "openvino", "batch_size": 1, "max_p50_ms": 30}]}))
    (root / "bad_budgets.yaml").write_text("rules: [{bundle: x, max_p50_ms: -3}]\n")
    (root / "bad_pipeline.yaml").write_text("steps: 3\n")
    (root / "results.json").write_text("{}")
    names = ("model", "resnet20.pt", "bundle", "bundle2", "empty", "notes.txt", "corrupt_model", "bad_manifest",
             "garbage.pt", "budgets.yaml", "bad_budgets.yaml", "bad_pipeline.yaml", "results.json", "missing")
    return {name: str(root / name) for name in names} | {"report": str(REPORT)}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, patch_everywhere) -> None:
    """Replace the slow library calls (see the module docstring)."""
    import benchmarks
    import compressor.app._latency_prune
    import compressor.app._speed_guard
    import compressor.app._alignment
    import compressor.app._bundle
    import compressor.app.pipeline._core
    import compressor.pruning._strategies
    import compressor.training._loop
    from benchmarks._sweep import load_bench_bundles

    def reached(*args, **kwargs):
        raise _Reached()

    def resolve_alignment(config, **kwargs):  # what the probe records, without probing
        if config.round_to != "auto":
            return config
        from dataclasses import replace

        return replace(config, alignment={"kinds": {"conv": 1, "depthwise": 1, "linear": 1}, "runtimes": {},
                                          "device": config.device, "batch_size": config.batch_size,
                                          "threads": config.threads})

    def run_benchmark(candidates, baseline=None, config=None, **kwargs):
        load_bench_bundles(candidates, baseline)  # missing or invalid bundles fail as in the real one
        raise _Reached()

    patch_everywhere(compressor.app._alignment, "resolve_alignment", resolve_alignment)
    patch_everywhere(compressor.app._speed_guard, "speed_check", lambda *a, **k: [])
    patch_everywhere(compressor.app._latency_prune, "prune_to_latency", reached)
    patch_everywhere(compressor.pruning._strategies, "run_strategy", reached)
    patch_everywhere(compressor.training._loop, "train", reached)
    patch_everywhere(compressor.app._bundle, "export_bundle", reached)
    patch_everywhere(compressor.app.pipeline._core, "run_pipeline", reached)
    patch_everywhere(benchmarks, "run_benchmark", run_benchmark)


# ---- argument lists --------------------------------------------------------------------------
# Each flag's values are (valid, invalid). A "clean" example draws valid values only and carries
# the required flags, so it gets past argparse and into the command; a "dirty" one mixes in the
# invalid values, drops required flags at random and may add an unknown flag.

INTS = (["1", "2", "3"], ["0", "-1", "-2", "3.5", "x", ""])
COUNTS = (["0", "1", "2"], ["-1", "-2", "3.5", "x", ""])  # where 0 is valid (warm-up calls, fine-tune epochs)
FLOATS = (["0.5", "1", "2", "1e-3"], ["0", "-0.5", "nan", "inf", "x"])
FRACTIONS = (["0.3", "0.5"], ["0", "1", "-0.1", "1.5", "x", "nan"])
THREADS = (["1", "2"], ["0", "-1", "x"])  # never more than the suite's 2 threads
SIZES = (["1,32,32", "1x32x32", "3,32,32"], ["1,16,16", "1,32", "0,32,32", "-1,32,32", "x"])
OPTIONS = (["tau=0.9", "step=0.1"], ["x", "=", "k=1", "a.b", ""])
TARGETS = ("--ratio", "--global-ratio", "--target-flops", "--target-params", "--target-latency-ms")
UNKNOWN_FLAGS = ["--no-such-flag", "--ratio=", "-z", "--", "--help", "--version"]
Values = tuple[list[str], list[str]]


def _choices(valid: list[str], *invalid: str) -> Values:
    return valid, [*invalid, "bogus"]


def _flags(command: str, paths: dict[str, str]) -> tuple[list[Values], dict[str, Values | None], list[str]]:
    """(positional values, {flag: values, or None for a switch}, the flags a clean example carries)."""
    p = paths
    out = (["@OUT"], [p["notes.txt"], p["notes.txt"] + "/sub"])  # @OUT: a fresh path per example
    models = ([p["model"], "lenet5", "resnet20"], ["no_such_model", "torchvision:no_such_model", "timm:nope",
                                                   p["corrupt_model"], p["empty"], p["missing"], p["notes.txt"]])
    weights = ([p["resnet20.pt"]], [p["garbage.pt"], p["empty"], p["missing"]])  # resnet20's: others refuse it
    bundles = ([p["bundle"]], [p["bad_manifest"], p["model"], p["missing"], p["empty"]])
    baselines = ([p["bundle2"]], bundles[1] + [p["bundle"]])
    saved = ([p["model"], p["bundle"]], [p["empty"], p["notes.txt"], p["corrupt_model"], p["bad_manifest"],
                                         p["missing"]])
    if command in ("prune", "graph"):
        flags: dict[str, Values | None] = {"--model": models, "--weights": weights, "--input-size": SIZES,
                                           "--exclude": (["conv1"], ["(", "nothing"])}
        if command == "graph":
            return [], {**flags, "--verbose": None}, ["--model"]
        return [], {
            **flags, "--criterion": _choices(["l2", "l1", "fpgm", "random", "taylor"]),
            "--criterion-option": OPTIONS, "--strategy": _choices(["oneshot", "iterative"]),
            "--strategy-option": OPTIONS, "--finetune-epochs": COUNTS, "--residual": _choices(["coupled", "internal"]),
            "--data": _choices(["digits"], "folder:/nonexistent"), "--calib-batches": INTS,
            "--calib-batch-size": INTS, "--lr": FLOATS, "--weight-decay": COUNTS, "--train-batch-size": INTS,
            "--ratio": FRACTIONS, "--global-ratio": FRACTIONS, "--target-flops": FRACTIONS,
            "--target-params": FRACTIONS, "--target-latency-ms": FLOATS,
            "--runtime": _choices(["onnxruntime", "openvino"]), "--device": _choices(["cpu"]),
            "--latency-batch-size": INTS, "--latency-method": _choices(["lut", "search"]),
            "--round-to": (["auto", "1", "4"], ["0", "-4", "x"]), "--min-channels": INTS, "--seed": COUNTS,
            "--batch-size": INTS, "--threads": THREADS, "--output": out, "--changed-only": None, "--quiet": None,
            "--no-speed-check": None, "--image-list": None, "--trained": None, "--no-trained": None,
            "--submodule": (["features"], ["nope"]),
            "--json": (["@OUT.json"], [p["missing"] + "/x/summary.json"]),
        }, ["--model", "--ratio", "--output", "--quiet"]
    if command == "export":
        return [models], {
            "--weights": weights, "--input-size": SIZES, "--to": _choices(["onnx", "onnx,torch"], "tensorrt", ""),
            "--output": out, "--precision": _choices(["fp32", "fp16"]), "--opset": (["17", "18"], INTS[1]),
            "--exporter": _choices(["dynamo", "torchscript"]), "--batch-sizes": (["1,8", "2"], ["0", "1,0", "x", ""]),
            "--max-batch": INTS, "--threads": THREADS, "--no-fold": None, "--trained": None,
        }, ["--output"]
    if command == "bench":
        return [bundles], {
            "--baseline": baselines, "--runtimes": _choices(["onnxruntime", "torch"], ""),
            "--devices": _choices(["cpu"], "cuda"), "--batch-sizes": (["1,2", "4"], ["0", "x", ""]),
            "--threads": THREADS, "--hint": _choices(["latency", "throughput"]), "--warmup": COUNTS,
            "--min-runs": INTS, "--max-runs": INTS, "--min-seconds": COUNTS, "--max-seconds": FLOATS,
            "--no-memory": None, "--memory-runs": INTS, "--inputs": ([p["missing"]], [p["notes.txt"], p["empty"]]),
            "--seed": COUNTS, "--runtime-option": (["onnxruntime.allow_spinning=true"], OPTIONS[1]),
            "--output": out, "--quiet": None,
        }, ["--output", "--quiet"]
    if command == "gate":
        return [([p["budgets.yaml"]], [p["bad_budgets.yaml"], p["missing"], p["notes.txt"], p["empty"]])], {
            "--report": ([p["report"]], [p["results.json"], p["missing"], p["notes.txt"], p["empty"]]),
            "--bundles": bundles, "--baseline": baselines,
            "--accuracy": ([p["missing"]], [p["results.json"], p["notes.txt"], p["empty"]]),
            "--remeasure": None, "--threads": THREADS, "--junit": (["@OUT.xml"], []),
            "--json": (["@OUT.json"], []), "--quiet": None,
        }, ["--report"]
    if command == "info":
        return [saved], {"--json": None}, []
    if command == "train":
        return [], {
            "--model": (["lenet5", "resnet20"], models[1]), "--model-arg": (["num_classes=10"], OPTIONS[1]),
            "--data": _choices(["digits"], "market:/nope", "folder:/nope"), "--input-size": SIZES,
            "--epochs": INTS, "--batch-size": INTS, "--p": INTS, "--k": INTS, "--lr": FLOATS,
            "--optimizer": _choices(["sgd", "adamw"]), "--weight-decay": COUNTS,
            "--schedule": _choices(["cosine", "step", "constant"]), "--warmup-epochs": COUNTS,
            "--label-smoothing": (["0", "0.1"], ["1", "-0.1", "x"]), "--ema-decay": (["0.9", "0.999"], FRACTIONS[1]),
            "--freeze": (["conv1"], ["("]), "--seed": COUNTS, "--threads": THREADS, "--resume": None,
            "--output": out, "--quiet": None,
        }, ["--model", "--output", "--quiet"]
    if command == "eval":
        return [saved], {
            "--data": _choices(["digits"], "folder:/nope", "market:/nope"), "--input-size": SIZES,
            "--runtime": _choices(["onnxruntime", "torch"]), "--batch-size": INTS, "--threads": THREADS,
            "--metric": _choices(["euclidean", "cosine"]), "--json": (["@OUT.json"], []),
        }, []
    positional = [([], [p["bad_pipeline.yaml"], p["missing"], p["notes.txt"]])] if command == "run" else []
    return positional, {"--output": out, "--force": None, "--quick": None, "--quiet": None}, ["--quick", "--quiet"]


@st.composite
def command_lines(draw: st.DrawFn, command: str, paths: dict[str, str]) -> list[str]:
    positional, flags, required = _flags(command, paths)
    dirty = draw(st.booleans(), label="dirty")

    def value(values: Values) -> str | None:
        pool = values[0] + values[1] if dirty else values[0]
        return draw(st.sampled_from(pool)) if pool else None

    argv = [command] + [v for v in map(value, positional) if v is not None]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=6, unique=True))
    if not dirty or draw(st.booleans()):
        targets = [f for f in chosen if f in TARGETS]
        if not dirty and targets:  # one pruning target: they are mutually exclusive
            chosen = [f for f in chosen if f not in TARGETS or f == targets[0]]
        chosen = [f for f in required if f not in chosen and not (f in TARGETS and targets)] + chosen
    for flag in chosen:
        argv.append(flag)
        if flags[flag] is not None:
            argv.append(value(flags[flag]) or "")
    if dirty and draw(st.integers(0, 4)) == 0:
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(UNKNOWN_FLAGS)))
    return argv


@pytest.mark.parametrize("command", COMMANDS)
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_random_command_lines_exit_with_a_documented_code(command, data, paths, fakes, capsys, tmp_path):
    argv = data.draw(command_lines(command, paths), label="argv")
    fresh = str(Path(tempfile.mkdtemp(dir=tmp_path)) / "out")  # the examples share tmp_path
    argv = [a.replace("@OUT", fresh) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    except _Reached:
        code = "reached the library"
    event(f"exit {code}")  # --hypothesis-show-statistics: how far the examples got
    code = 0 if code == "reached the library" else code
    err = capsys.readouterr().err
    assert code in EXIT_CODES, f"{argv} exited {code!r}; stderr: {err[-2000:]}"
    assert "Traceback" not in err, f"{argv} printed a traceback: {err[-2000:]}"


def test_version_and_python_m(capsys):
    import subprocess
    import sys

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    version = capsys.readouterr().out.strip()
    assert version.startswith("compressor ") and len(version.split()) >= 2
    run = subprocess.run([sys.executable, "-m", "compressor", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == version, run.stderr


@pytest.mark.parametrize("argv, flag", [
    (["prune", "--model", "lenet5", "--ratio", "0.3", "--output", "o", "--batch-size", "-2"], "--batch-size"),
    (["prune", "--model", "lenet5", "--ratio", "0.3", "--output", "o", "--batch-size", "0"], "--batch-size"),
    (["prune", "--model", "lenet5", "--ratio", "1.5", "--output", "o"], "--ratio"),
    (["prune", "--model", "lenet5", "--target-flops", "0", "--output", "o"], "--target-flops"),
    (["prune", "--model", "lenet5", "--ratio", "0.3", "--output", "o", "--threads", "0"], "--threads"),
    (["export", "m", "--output", "o", "--batch-sizes", "1,0"], "--batch-sizes"),
    (["export", "m", "--output", "o", "--opset", "-1"], "--opset"),
    (["bench", "b", "--output", "o", "--min-runs", "0"], "--min-runs"),
    (["bench", "b", "--output", "o", "--max-seconds", "nan"], "--max-seconds"),
    (["train", "--model", "lenet5", "--output", "o", "--epochs", "-1"], "--epochs"),
    (["train", "--model", "lenet5", "--output", "o", "--label-smoothing", "1"], "--label-smoothing"),
    (["eval", "m", "--batch-size", "0"], "--batch-size"),
    (["gate", "b.yaml", "--threads", "x"], "--threads"),
])
def test_bad_numbers_are_usage_errors_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected" in err and "usage:" in err and "Traceback" not in err
