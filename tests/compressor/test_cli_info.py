"""`compressor info`: the same facts as text and as JSON, for a saved model, a train output and a bundle."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compressor.app._cli_info import INFO_SCHEMA_VERSION, _against_original
from compressor.app._bundle import export_bundle
from compressor.app.cli import main
from compressor import load_model
from runtimes._bundle import BundleConfig


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet5 pruned by the CLI at ratio 0.5, round_to 4 (no speed check)."""
    out = tmp_path_factory.mktemp("info") / "pruned"
    assert main(["prune", "--model", "lenet5", "--ratio", "0.5", "--round-to", "4", "--no-speed-check", "--quiet",
                 "--output", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def bundle(pruned: Path) -> Path:
    out = pruned.parent / "bundle"
    export_bundle(load_model(pruned), out, (1, 32, 32), BundleConfig(targets=("onnx", "torch"), batch_sizes=(2,),
                                                                       threads=1), source="lenet5")
    return out


def _info(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["info", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_saved_model_text_and_json_agree_with_the_prune_summary(pruned, capsys):
    summary = json.loads((pruned / "summary.json").read_text())
    code, text, _ = _info(capsys, str(pruned))
    assert code == 0
    assert text.startswith(f"saved model {pruned}")
    assert "lenet5" in text and "1x32x32 (recorded)" in text
    assert f"{summary['flops_ratio']:.1%} of the original's FLOPs" in text
    assert "prune: criterion l2, ratio=0.5, round_to=4" in text and "alignment   round_to=4" in text
    for name in ("model.json", "weights.pt", "summary.json"):
        assert name in text
    assert len(text.splitlines()) < 20  # a summary, not a dump

    code, out, _ = _info(capsys, str(pruned), "--json")
    info = json.loads(out)
    assert code == 0 and info["schema_version"] == INFO_SCHEMA_VERSION and info["kind"] == "saved_model"
    assert info["model"] == "lenet5" and info["input_shape"] == [1, 32, 32]
    assert info["cost"]["params"] == summary["after"]["params"] and info["cost"]["source"] == "summary.json"
    assert info["ratio"]["flops"] == pytest.approx(summary["flops_ratio"])
    assert info["ratio"]["params"] == pytest.approx(summary["params_ratio"])
    assert info["original"]["params"] == pytest.approx(summary["before"]["params"])
    (step,) = info["history"]
    assert step["criterion"] == "l2" and step["target"] == {"name": "ratio", "value": 0.5} and step["round_to"] == 4
    assert info["alignment"] == {"round_to": 4}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in info["files"])


def test_without_a_summary_the_cost_is_counted(pruned, tmp_path, capsys):
    train_output = tmp_path / "run"  # as `compressor train` writes it: the model in run/model/
    shutil.copytree(pruned, train_output / "model")
    (train_output / "model" / "summary.json").unlink()
    summary = json.loads((pruned / "summary.json").read_text())
    code, out, _ = _info(capsys, str(train_output), "--json")
    info = json.loads(out)
    assert code == 0 and info["path"] == str(train_output / "model")
    assert info["cost"]["source"] == "counted" and info["cost"]["params"] == summary["after"]["params"]
    assert info["cost"]["flops"] == pytest.approx(summary["after"]["flops"])


def test_bundle_lists_artifacts_hashes_parity_and_the_recipe(bundle, pruned, capsys):
    summary = json.loads((pruned / "summary.json").read_text())
    manifest = json.loads((bundle / "manifest.json").read_text())
    code, text, err = _info(capsys, str(bundle))
    assert code == 0 and not err
    assert text.startswith(f"bundle {bundle}")
    assert "batch x 1x32x32 float32 -> batch x 10 (10 classes)" in text
    assert f"{summary['flops_ratio']:.1%} of the original's FLOPs" in text
    assert "prune: criterion l2, ratio=0.5, round_to=4" in text and "fold:" in text
    assert f"sha256 {manifest['files']['model.onnx'][:16]}  ok" in text
    assert "parity      passed" in text and "onnxruntime cpu fp32 batch 2" in text

    code, out, _ = _info(capsys, str(bundle / "manifest.json"), "--json")  # the manifest itself names the bundle
    info = json.loads(out)
    assert info["kind"] == "bundle" and info["model"] == "lenet5" and info["parity_passed"] is True
    assert {a["target"]: a["files"] for a in info["artifacts"]} == {
        "onnx": ["model.onnx"], "torch": ["torch/model.json", "torch/weights.pt"]}
    assert all(a["ok"] and a["bytes"] > 0 for a in info["artifacts"])
    assert info["ratio"]["flops"] == pytest.approx(summary["flops_ratio"])
    assert info["cost"]["params"] == manifest["cost"]["params"]


def test_a_tampered_bundle_is_described_with_a_warning(bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "model.onnx").write_bytes(b"tampered")
    code, text, err = _info(capsys, str(copy))
    assert code == 0
    assert "MISMATCH" in text and "model.onnx" in err and "sha256" in err


def _manifest(root: Path, content: str) -> Path:
    (root / "manifest.json").write_text(content)
    return root


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nope", "does not exist"),
    (lambda root: root, "neither a saved model directory (no model.json) nor an export bundle (no manifest.json)"),
    (lambda root: _manifest(root, "{not json"), "manifest.json"),
    (lambda root: _manifest(root, '{"schema_version": 7}'), "schema_version 7"),
    (lambda root: _manifest(root, '{"schema_version": 1, "files": ["model.onnx"]}'), "unexpected content"),
])
def test_bad_paths_are_named_errors_with_exit_2(tmp_path, capsys, make, message):
    path = make(tmp_path)
    code, out, err = _info(capsys, str(path))
    assert code == 2 and not out
    assert err.startswith(f"error: {path}") and message in err


def test_a_strategy_entry_is_not_counted_twice():
    # the iterative strategy records each removal, then its own summary over them
    history = [{"step": "prune", "flops_ratio": 0.8, "params_ratio": 0.9},
               {"step": "prune", "flops_ratio": 0.5, "params_ratio": 0.5},
               {"step": "strategy", "flops_ratio": 0.4, "params_ratio": 0.45},
               {"step": "fold", "folded": 3, "kept": {}}]
    out = _against_original({"flops": 40.0, "params": 9.0}, history)
    assert out["ratio"] == pytest.approx({"flops": 0.4, "params": 0.45})
    assert out["original"] == pytest.approx({"flops": 100.0, "params": 20.0})
    assert _against_original({"flops": 1.0, "params": 1.0}, []) == {"ratio": None, "original": None}
