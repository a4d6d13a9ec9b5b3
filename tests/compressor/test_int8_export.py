"""INT8 export of a digits-trained LeNet-5: the bundle on OpenVINO and onnxruntime through the CLI, the
accuracy budget moving sensitive layers back to FP32, the speed guard (with a fake timer), and the
calibration-data errors, each named before the output directory is claimed.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import compressor.app._bundle as app_bundle
from compressor.app._evaluate import evaluate_classification
from compressor.app._int8 import Int8Config, Int8Error, load_int8_data, quantize_targets
from compressor.app.cli import main as cli
from compressor.deploy import ExportConfig, export_onnx
from compressor.deploy._serialize import save_model
from compressor.training._data import digits_dataset
from compressor.training._loop import TrainConfig, train
from models import create_model
from runtimes import load_bundle, quantizable_layers
from runtimes._onnx import PRECISION_KEY

SIZE = (3, 32, 32)
ARCH = {"name": "lenet5", "kwargs": {"num_classes": 10, "in_chans": 3}}
# ~97% test top-1 in ~15 s on 2 threads
RECIPE = TrainConfig(epochs=4, batch_size=32, optimizer="adamw", lr=0.003, weight_decay=0.01, schedule="cosine",
                     seed=0, threads=2)
CALIB_SAMPLES = 64
DIGITS_TRAIN = 1437  # samples in the digits training split
BUDGET = 0.02


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, float]:
    """The trained LeNet-5 (eval mode), its saved directory and its PyTorch test top-1."""
    torch.manual_seed(0)  # module fixtures run before the suite's per-test seeding
    torch.set_num_threads(2)
    model = create_model("lenet5", num_classes=10, in_chans=3)
    train(model, digits_dataset("train"), RECIPE, progress=False)
    model.eval()
    saved = save_model(model, tmp_path_factory.mktemp("lenet") / "saved", arch=ARCH)
    top1 = evaluate_classification(model, digits_dataset("test"), threads=2).top1
    assert top1 >= 0.93, top1  # a trained model, or the accuracy checks below mean nothing
    return model, saved, top1


@pytest.fixture(scope="module")
def int8_data():
    return load_int8_data(Int8Config(calib_samples=CALIB_SAMPLES), SIZE)


def _export(model: torch.nn.Module, path: Path) -> Path:
    return export_onnx(model, torch.zeros(1, *SIZE), path, ExportConfig(exporter="torchscript")).path


def fake_measure(speedup: float, calls: list | None = None):
    """A speed guard timer that reports ``speedup`` (FP32 at 3 ms) and records what it was given."""
    def measure(fp32_session, int8_session, x):
        if calls is not None:
            calls.append((fp32_session.settings["precision"], int8_session.settings["precision"], x.shape))
        return {"fp32_ms_median": 3.0, "int8_ms_median": 3.0 / speedup, "speedup": speedup,
                "speedup_ci": [speedup * 0.9, speedup * 1.1], "rounds": 20}
    return measure


def _artifact_precision(path: Path) -> str:
    """What an onnxruntime artifact computes in, from its metadata."""
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}.get(PRECISION_KEY, "fp32")


# ---------------------------------------------------------------------------------------- the bundle


def test_cli_int8_bundle_on_openvino_and_onnxruntime(trained, int8_data, tmp_path, capsys):
    model, saved, torch_top1 = trained
    out = tmp_path / "bundle"
    code = cli(["export", str(saved), "--to", "onnx,openvino", "--precision", "int8", "--calib-data", "digits",
                "--calib-samples", str(CALIB_SAMPLES), "--max-accuracy-drop", str(BUDGET),
                "--min-int8-speedup", "0.01", "--threads", "2", "--input-size", "3,32,32", "--output", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "onnx: ships INT8" in printed.out and "openvino: ships INT8" in printed.out
    assert printed.out.count("held-out samples") == 2

    manifest = load_bundle(out).manifest  # verified: files, I/O, parity record against the int8 floors
    assert manifest["precision"] == "int8"
    assert manifest["artifact_precision"] == {"onnx": "int8", "openvino": "int8"}
    assert manifest["artifacts"] == {"onnx": "model.int8.onnx", "openvino": "openvino/model.xml"}
    assert _artifact_precision(out / "model.int8.onnx") == "int8"

    calibration = manifest["int8"]["calibration"]
    assert calibration["sha256"] == int8_data.calibration.sha256()  # the same seeded subset of the same data
    assert calibration["samples"] == CALIB_SAMPLES and calibration["source"] == "digits"
    assert calibration["sample_shape"] == list(SIZE) and calibration["method"] == "minmax"
    assert manifest["int8"]["config"]["max_accuracy_drop"] == BUDGET
    assert manifest["int8"]["floors"] == {"cosine": 0.99, "top1_agreement": 0.98}
    held_out = manifest["int8"]["held_out_samples"]
    assert held_out == 256  # Int8Config's default, from the 360 test images

    for target, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        decision = manifest["int8"]["targets"][target]
        assert decision["decision"] == "int8" and decision["reason"].startswith("INT8 is ")
        assert f"on {runtime}, top-1" in decision["reason"]
        speed = decision["speed"]
        assert speed["speedup"] > 0 and speed["fp32_ms_median"] > 0 and speed["int8_ms_median"] > 0
        assert speed["runtime"] == runtime and speed["batch_size"] == 1 and speed["threads"] == 2
        assert speed["min_int8_speedup"] == 0.01 and speed["rounds"] >= 1
        accuracy = decision["accuracy"]
        assert accuracy["samples"] == 360 and accuracy["budget"] == BUDGET
        assert accuracy["drop"] == pytest.approx(accuracy["fp32"] - accuracy["int8"]) and accuracy["drop"] <= BUDGET
        assert decision["fp32_layers"] == []
        # the runtime's FP32 scores what PyTorch does; what ships is within the budget of it
        assert manifest["accuracy"]["fp32"][runtime] == pytest.approx(torch_top1, abs=1 / 360)
        assert manifest["accuracy"]["shipped"][runtime] == accuracy["int8"]
        (run,) = [r for r in manifest["parity"] if r["runtime"] == runtime]
        assert run["precision"] == "int8" and run["batch_size"] == held_out and run["passed"]
        assert run["mean_cosine_similarity"] >= 0.99 and run["top1_agreement"] >= 0.98
        assert run["tolerance_cosine"] == 0.99 and run["tolerance_top1"] == 0.98 and run["tolerance_rel"] is None

        # `compressor eval` runs the INT8 artifact (artifact_precision) and measures what the manifest says
        figures = tmp_path / f"eval-{runtime}.json"
        assert cli(["eval", str(out), "--runtime", runtime, "--data", "digits", "--threads", "2",
                    "--json", str(figures)]) == 0
        evaluated = json.loads(figures.read_text())
        assert evaluated["runtime"] == runtime and evaluated["samples"] == 360
        assert evaluated["top1"] >= torch_top1 - BUDGET
        # one sample of slack: onnxruntime's INT8 logits pass through a QuantizeLinear, so two classes can tie,
        # and the decision's argmax and eval's torch.topk break ties differently
        assert evaluated["top1"] == pytest.approx(accuracy["int8"], abs=1.5 / 360)
    capsys.readouterr()


# ------------------------------------------------------------------------------------ accuracy budget


def _with_outlier_channel(model: torch.nn.Module, scale: float = 1000.0) -> torch.nn.Module:
    """The same function, but conv1's channel 0 is ``scale`` times larger and conv2 reads it ``scale``
    times weaker (ReLU and max-pooling commute with a positive scale): a per-tensor int8 range over
    conv1's output then leaves its other channels a few levels, and INT8 loses most of its accuracy."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.conv1.weight[0] *= scale
        model.conv1.bias[0] *= scale
        model.conv2.weight[:, 0] /= scale
    return model


def test_accuracy_budget_moves_the_sensitive_layer_to_fp32(trained, int8_data, tmp_path):
    model, _, _ = trained
    outlier = _with_outlier_channel(model)
    x = torch.from_numpy(int8_data.eval_x[:64])
    with torch.no_grad():
        torch.testing.assert_close(outlier(x), model(x), rtol=1e-3, atol=1e-3)  # FP32 is unchanged
    onnx_path = _export(outlier, tmp_path / "outlier.onnx")
    layers = quantizable_layers(onnx_path)
    budget = 0.01
    config = Int8Config(calib_samples=CALIB_SAMPLES, max_accuracy_drop=budget, min_int8_speedup=1.1)
    decisions = quantize_targets(onnx_path, ("onnx", "openvino", "torch"), int8_data, config, tmp_path / "work",
                                 threads=2, measure=fake_measure(2.0))
    assert set(decisions) == {"onnx", "openvino"}  # torch ships FP32 without deciding
    for target, d in decisions.items():
        accuracy = d.accuracy
        assert accuracy["budget"] == budget and accuracy["samples"] == 360
        assert accuracy["fp32"] - accuracy["int8_all_layers"] > 0.1, (target, accuracy)  # INT8 did hurt
        if d.precision == "int8":  # repaired: the budget holds with the layers listed in FP32
            assert accuracy["drop"] == pytest.approx(accuracy["fp32"] - accuracy["int8"])
            assert accuracy["drop"] <= budget, (target, accuracy)
            assert d.fp32_layers and all(entry["layer"] in layers for entry in d.fp32_layers)
            assert [entry["rank"] for entry in d.fp32_layers] == list(range(1, len(d.fp32_layers) + 1))
            assert all("sensitivity rank" in entry["why"] and "FP32" in entry["why"] for entry in d.fp32_layers)
            assert f"{len(d.fp32_layers)} layer(s) kept in FP32" in d.reason
            assert d.to_dict()["fp32_layers"] == d.fp32_layers
        else:  # not even all but one layer in FP32 held it: FP32 ships
            assert d.reason.startswith(f"accuracy budget: INT8 loses more than 1.00% top-1 until all {len(layers)} "
                                       "layers are FP32; FP32 ships"), d.reason
            assert accuracy["int8"] is None and accuracy["drop"] is None and d.speed == {}
            assert _artifact_precision(d.artifact) == "fp32"
    # keeping conv2 in FP32 keeps its input (the outlier channel's activation) float too: that one layer
    # repairs both runtimes (NNCF drops the input quantizer with the layer; onnxruntime's pair is taken off)
    for target, d in decisions.items():
        assert d.precision == "int8", (target, d.reason)
        assert d.fp32_layers[0]["layer"] == "/conv2/Conv", (target, d.fp32_layers)


# ---------------------------------------------------------------------------------------- speed guard


@pytest.fixture(scope="module")
def trained_onnx(trained, tmp_path_factory) -> Path:
    return _export(trained[0], tmp_path_factory.mktemp("onnx") / "lenet.onnx")


@pytest.mark.parametrize("target,runtime", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_speed_guard_ships_fp32_when_int8_is_slower(target, runtime, trained_onnx, int8_data, tmp_path):
    calls = []
    config = Int8Config(calib_samples=CALIB_SAMPLES, min_int8_speedup=1.1, guard_batch_size=4)
    (d,) = quantize_targets(trained_onnx, (target,), int8_data, config, tmp_path, threads=2,
                            measure=fake_measure(0.8, calls)).values()
    assert calls == [("fp32", "int8", (4, *SIZE))]  # both artifacts timed, at the deployment batch size
    assert d.precision == "fp32"
    assert d.reason == (f"speed guard: INT8 is only 0.80x (3.000 ms FP32 -> 3.750 ms INT8, batch 4) on {runtime}, "
                        "under the required 1.1x; FP32 ships")
    assert d.speed["speedup"] == 0.8 and d.speed["min_int8_speedup"] == 1.1 and d.speed["batch_size"] == 4
    assert d.speed["runtime"] == runtime and d.speed["threads"] == 2
    assert d.to_dict()["decision"] == "fp32" and d.to_dict()["speed"]["int8_ms_median"] == 3.75
    if target == "onnx":
        assert _artifact_precision(d.artifact) == "fp32"
    else:
        assert d.artifact == tmp_path / "openvino-fp32" / "model.xml"


@pytest.mark.parametrize("target,runtime", [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_speed_guard_ships_int8_when_it_pays(target, runtime, trained_onnx, int8_data, tmp_path):
    config = Int8Config(calib_samples=CALIB_SAMPLES, min_int8_speedup=1.1)
    (d,) = quantize_targets(trained_onnx, (target,), int8_data, config, tmp_path, threads=2,
                            measure=fake_measure(2.0)).values()
    assert d.precision == "int8"
    assert d.reason == f"INT8 is 2.00x (3.000 ms FP32 -> 1.500 ms INT8, batch 1) on {runtime}"
    assert d.accuracy == {} and d.fp32_layers == []  # no budget asked for: not measured
    if target == "onnx":
        assert d.artifact.name == "model.int8.onnx" and _artifact_precision(d.artifact) == "int8"
    else:
        assert d.artifact.parent.name.startswith("openvino-int8") and d.artifact.name == "model.xml"


def test_speed_guard_decision_reaches_the_bundle(trained, monkeypatch, tmp_path, capsys):
    """Through `compressor export`: the slower INT8 is not shipped; the manifest says why and what was measured."""
    monkeypatch.setattr(app_bundle, "quantize_targets", functools.partial(quantize_targets,
                                                                          measure=fake_measure(0.8)))
    _, saved, torch_top1 = trained
    out = tmp_path / "bundle"
    code = cli(["export", str(saved), "--to", "onnx", "--precision", "int8", "--calib-data", "digits",
                "--calib-samples", str(CALIB_SAMPLES), "--max-accuracy-drop", str(BUDGET), "--threads", "2",
                "--exporter", "torchscript", "--input-size", "3,32,32", "--output", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "onnx: ships FP32: speed guard:" in printed.out
    manifest = load_bundle(out).manifest
    assert manifest["artifact_precision"] == {"onnx": "fp32"} and manifest["artifacts"] == {"onnx": "model.onnx"}
    decision = manifest["int8"]["targets"]["onnx"]
    assert decision["decision"] == "fp32" and decision["reason"].startswith("speed guard: INT8 is only 0.80x")
    assert decision["speed"]["speedup"] == 0.8
    assert manifest["accuracy"]["shipped"]["onnxruntime"] == manifest["accuracy"]["fp32"]["onnxruntime"]
    assert manifest["accuracy"]["fp32"]["onnxruntime"] == pytest.approx(torch_top1, abs=1 / 360)
    assert {r["precision"] for r in manifest["parity"]} == {"fp32"}  # the FP32 artifact is checked as FP32
    assert {r["batch_size"] for r in manifest["parity"]} == {1, 8}


# ------------------------------------------------------------------------------------ data errors


def _npy(tmp_path: Path, shape: tuple[int, ...]) -> str:
    path = tmp_path / "calib.npy"
    np.save(path, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return str(path)


@pytest.mark.parametrize("flags,message", [
    (["--precision", "int8"], "--precision int8 needs --calib-data (digits, folder:PATH"),
    (["--precision", "int8", "--calib-data", "folder:/nonexistent"], "--calib-data folder:/nonexistent: "),
    (["--precision", "int8", "--calib-data", "cifar"], "--calib-data cifar: unknown dataset 'cifar'"),
    (["--precision", "int8", "--calib-data", "npy:{tmp}/absent.npy"],
     "--calib-data npy:{tmp}/absent.npy: file not found"),
    (["--precision", "int8", "--calib-data", "npy:{small}", "--calib-samples", "32"],
     "--calib-data npy:{small} has 10 samples; --calib-samples asks for 32"),
    (["--precision", "int8", "--calib-data", "npy:{gray}", "--calib-samples", "32"],
     "--calib-data npy:{gray} gives samples of shape (1, 32, 32); the model takes (3, 32, 32)"),
    (["--precision", "int8", "--calib-data", "npy:{flat}", "--calib-samples", "32"],
     "--calib-data npy:{flat} holds an array of shape (40, 3, 32) (float32); expected (N, 3, 32, 32) floats"),
    (["--precision", "int8", "--calib-data", "digits", "--calib-samples", "2000"],
     f"--calib-data digits has {DIGITS_TRAIN} training samples; --calib-samples asks for 2000"),
    (["--precision", "int8", "--calib-data", "digits", "--calib-samples", "8"], "--calib-samples must be at least 32"),
    (["--calib-data", "digits"], "--calib-data apply to --precision int8, not fp32"),
    (["--precision", "fp16", "--max-accuracy-drop", "0.01"], "--max-accuracy-drop apply to --precision int8, not fp16"),
    (["--calib-samples", "100", "--min-int8-speedup", "2"],
     "--calib-samples, --min-int8-speedup apply to --precision int8, not fp32"),
], ids=["no-calib-data", "missing-folder", "unknown-spec", "missing-npy", "too-few-npy", "npy-wrong-channels",
        "npy-wrong-rank", "too-few-digits", "calib-samples-below-min", "calib-data-without-int8",
        "budget-without-int8", "int8-options-without-int8"])
def test_calibration_data_errors_name_the_cause_and_write_nothing(flags, message, tmp_path, capsys):
    files = {"tmp": str(tmp_path)}
    for name, shape in (("small", (10, *SIZE)), ("gray", (40, 1, 32, 32)), ("flat", (40, 3, 32))):
        (tmp_path / name).mkdir()
        files[name] = _npy(tmp_path / name, shape)
    flags = [f.format(**files) for f in flags]
    out = tmp_path / "out"
    assert cli(["export", "resnet20", "--to", "onnx,openvino", "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert f"error: {message.format(**files)}" in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_int8_config_errors_name_the_flag():
    for kwargs, message in (({"calib_method": "kl"}, "--calib-method must be one of"),
                            ({"max_accuracy_drop": 1.5}, r"--max-accuracy-drop is a fraction of top-1 in \[0, 1\)"),
                            ({"min_int8_speedup": 0.0}, "--min-int8-speedup must be positive, got 0.0"),
                            ({"min_cosine": 1.5}, r"min_cosine must be in \(0, 1\], got 1.5")):
        with pytest.raises(Int8Error, match=message):
            Int8Config(**kwargs)
    assert issubclass(Int8Error, ValueError)


def test_an_accuracy_budget_needs_labels(trained_onnx, tmp_path):
    _npy(tmp_path, (40, *SIZE))
    config = Int8Config(calib_data=f"npy:{tmp_path / 'calib.npy'}", calib_samples=32, max_accuracy_drop=0.01)
    data = load_int8_data(config, SIZE)
    assert data.eval_y is None and data.eval_x.shape == (8, *SIZE)  # the samples not calibrated on
    with pytest.raises(Int8Error, match=r"--max-accuracy-drop needs labelled evaluation data for a top-1; "
                                        r"--calib-data npy:.*calib.npy has none"):
        quantize_targets(trained_onnx, ("onnx",), data, config, tmp_path / "work", threads=2,
                         measure=fake_measure(2.0))
