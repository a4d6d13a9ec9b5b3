"""Training on real data (the bundled digits) and evaluation of modules, saved models and bundles.

The accuracy test trains a zoo CNN on scikit-learn's handwritten digits (1,797 real images) and
asserts >= 95% test top-1; the time it took is printed (pytest -s) and recorded in the README.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.training._data import DatasetError, digits_dataset, make_synthetic_market
from compressor.training._datasets import parse_data_spec
from compressor.app._evaluate import (
    evaluate_classification,
    evaluate_reid_model,
    resolve_model_path,
)
from compressor.training._loop import TrainConfig, train
from compressor.app.cli import main as cli
from models import create_model
from runtimes import get_runtime

# 97.5-98.1% top-1 over seeds 0-2 (SGD at lr 0.05 sometimes diverges on LeNet)
DIGITS_CONFIG = TrainConfig(epochs=12, batch_size=32, optimizer="adamw", lr=0.003, weight_decay=0.01,
                            schedule="cosine", seed=0, threads=2)


@pytest.fixture(scope="module")
def trained_lenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, float, Path]:
    """lenet5 trained on the digits train split; the trained module, the seconds it took, and the
    output directory of the CLI's train command on the same recipe."""
    torch.manual_seed(0)  # module fixtures run before the suite's per-test seeding: seed the initial weights here
    model = create_model("lenet5", num_classes=10, in_chans=3)
    start = time.perf_counter()
    train(model, digits_dataset("train"), DIGITS_CONFIG, progress=False)
    seconds = time.perf_counter() - start
    return model.eval(), seconds, tmp_path_factory.mktemp("train")


def test_zoo_cnn_reaches_95_percent_on_digits(trained_lenet):
    model, seconds, _ = trained_lenet
    result = evaluate_classification(model, digits_dataset("test"), threads=2)
    print(f"\nlenet5 on digits: top-1 {result.top1:.2%} after {DIGITS_CONFIG.epochs} epochs in {seconds:.1f}s")
    assert result.samples == 360
    assert result.top1 >= 0.95 and result.top5 >= result.top1


def test_top1_is_the_fraction_of_correct_argmax(trained_lenet):
    model, _, _ = trained_lenet
    test = digits_dataset("test")
    with torch.no_grad():
        predicted = model(test.images).argmax(1)
    expected = float((predicted == test.targets).float().mean())
    assert evaluate_classification(model, test, batch_size=7).top1 == pytest.approx(expected)


def test_deployed_accuracy_matches_pytorch(trained_lenet, tmp_path):
    """The bundle that ships is evaluated on each runtime; its accuracy equals the module's."""
    model, _, _ = trained_lenet
    from compressor.deploy._serialize import save_model

    saved = save_model(model, tmp_path / "saved", arch={"name": "lenet5", "kwargs": {"num_classes": 10, "in_chans": 3}})
    assert cli(["export", str(saved), "--output", str(tmp_path / "bundle"), "--input-size", "3,32,32"]) == 0
    test = digits_dataset("test")
    reference = evaluate_classification(model, test)
    for runtime in ("onnxruntime", "openvino", "torch"):
        if get_runtime(runtime).is_available():
            continue
        result = evaluate_classification(tmp_path / "bundle", test, runtime=runtime)
        assert result.runtime == runtime
        assert result.top1 == pytest.approx(reference.top1, abs=1 / 360)  # at most one borderline sample
    assert evaluate_classification(saved, test).top1 == pytest.approx(reference.top1)


def test_cli_train_then_eval_on_digits(tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert cli(["train", "--model", "lenet5", "--data", "digits", "--epochs", "2", "--output", str(out),
                "--threads", "2", "--quiet"]) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "model" / "model.json").is_file()
    history = json.loads((out / "history.json").read_text())
    assert history["schema_version"] == 1 and len(history["history"]) == 2
    spec = json.loads((out / "model" / "model.json").read_text())
    assert spec["metadata"]["weights"]["trained"] is True
    capsys.readouterr()
    assert cli(["eval", str(out), "--data", "digits", "--json", str(tmp_path / "eval.json")]) == 0
    assert "top-1" in capsys.readouterr().out
    figures = json.loads((tmp_path / "eval.json").read_text())
    final = history["final_metrics"]["top1"]
    assert figures["top1"] == pytest.approx(final) and figures["samples"] == 360

    # the exported bundle of the trained model, evaluated on onnxruntime, says the same
    assert cli(["export", str(out / "model"), "--output", str(tmp_path / "bundle"), "--to", "onnx"]) == 0
    assert cli(["eval", str(tmp_path / "bundle"), "--runtime", "onnxruntime", "--data", "digits", "--json",
                str(tmp_path / "eval_ort.json")]) == 0
    assert json.loads((tmp_path / "eval_ort.json").read_text())["top1"] == pytest.approx(final, abs=1 / 360)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["weights"]["trained"] is True


def test_resolve_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_model_path(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="neither a bundle"):
        resolve_model_path(tmp_path)


def test_eval_errors_name_the_cause(trained_lenet, tmp_path, capsys):
    model, _, _ = trained_lenet
    from compressor.deploy._serialize import save_model

    saved = save_model(model, tmp_path / "saved", arch={"name": "lenet5", "kwargs": {"num_classes": 10, "in_chans": 3}})
    with pytest.raises(ValueError, match="saved PyTorch model.*openvino"):
        evaluate_classification(saved, digits_dataset("test"), runtime="openvino")
    assert cli(["export", str(saved), "--output", str(tmp_path / "b"), "--to", "onnx", "--input-size", "3,32,32"]) == 0
    with pytest.raises(ValueError, match="no 'openvino' artifact"):
        evaluate_classification(tmp_path / "b", digits_dataset("test"), runtime="openvino")
    assert cli(["eval", str(tmp_path / "missing"), "--data", "digits"]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    assert cli(["eval", str(saved), "--data", "cifar"]) == 2
    assert "unknown dataset 'cifar'" in capsys.readouterr().err


def test_data_specs(tmp_path):
    assert parse_data_spec("digits").input_size == (3, 32, 32)
    with pytest.raises(DatasetError, match="does not exist"):
        parse_data_spec(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(DatasetError, match="needs a path"):
        parse_data_spec("market")
    (tmp_path / "imgs" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no val or test folder"):
        parse_data_spec(f"folder:{tmp_path / 'imgs'}").eval_sets()


def test_reid_train_and_eval_on_synthetic_market(tmp_path, capsys):
    root = make_synthetic_market(tmp_path / "market", num_ids=6, cams=3, images_per_id_per_cam=2, size=(64, 32))
    out = tmp_path / "reid"
    assert cli(["train", "--model", "reid_resnet50", "--data", f"market:{root}", "--input-size", "3,64,32",
                "--model-arg", "width=8", "--epochs", "1", "--p", "4", "--k", "2", "--lr", "0.01", "--output", str(out), "--quiet",
                "--threads", "2"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert set(history["final_metrics"]) == {"rank1", "mAP"}
    model_dir = out / "model"
    spec = parse_data_spec(f"market:{root}", (3, 64, 32))
    query, gallery = spec.eval_sets()
    result = evaluate_reid_model(model_dir, query, gallery)
    assert 0.0 <= result.mAP <= 1.0 and result.num_valid_queries == len(query)
    assert result.rank1 == pytest.approx(history["final_metrics"]["rank1"])
    assert cli(["eval", str(out), "--data", f"market:{root}", "--input-size", "3,64,32"]) == 0
    assert "mAP" in capsys.readouterr().out
    assert np.isfinite(result.rank5)


def test_cli_train_is_seeded_from_the_initial_weights(tmp_path):
    losses = []
    for run in ("a", "b"):
        assert cli(["train", "--model", "lenet5", "--data", "digits", "--epochs", "1", "--output", str(tmp_path / run),
                    "--threads", "1", "--quiet"]) == 0
        losses.append(json.loads((tmp_path / run / "history.json").read_text())["history"][0]["train_loss"])
    assert losses[0] == losses[1]


def test_cli_train_under_torchrun_writes_once(tmp_path):
    """Two gloo ranks: rank 0 alone saves the model and reports."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "ddp"
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # see test_train_ddp.py: DataLoader's handler
    try:
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "compressor.app.cli", "train", "--model", "lenet5", "--data", "digits", "--epochs", "1",
                           "--batch-size", "16", "--threads", "1", "--output", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
                              start_new_session=True)  # no signal to torchrun's process group reaches pytest
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("trained lenet5") == 1
    history = json.loads((out / "history.json").read_text())
    assert history["world_size"] == 2 and (out / "model" / "model.json").is_file()
