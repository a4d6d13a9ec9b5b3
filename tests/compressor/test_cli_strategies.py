"""`compressor prune` with criteria options, strategies and data: the recipe reaches the bundle manifest."""
import json

import pytest

from compressor.app.cli import main


def test_strategy_on_digits_reaches_target_and_recipe_reaches_manifest(tmp_path, capsys):
    out, bundle = tmp_path / "pruned", tmp_path / "bundle"
    argv = ["prune", "--model", "lenet5", "--data", "digits", "--criterion", "taylor", "--calib-batches", "2",
            "--strategy", "iterative", "--strategy-option", "step=0.25", "--strategy-option", "retrain_epochs=1",
            "--finetune-epochs", "1", "--optimizer", "adamw", "--lr", "0.003", "--target-flops", "0.5",
            "--round-to", "1",  # exact steps: the test is about the strategy, not the alignment
            "--threads", "2", "--output", str(out), "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flops_ratio"] <= 0.5 and summary["params_ratio"] < 1
    assert summary["strategy"]["recipe"]["strategy"]["name"] == "iterative"
    assert 0 <= summary["eval_top1"] <= 1
    changed = [r for r in summary["layers"] if r["out_after"] < r["out_before"]]
    assert changed, "the layer table shows no shrunk layer"
    spec = json.loads((out / "model.json").read_text())
    assert spec["metadata"]["weights"]["trained"] is True
    assert main(["export", str(out), "--to", "onnx", "--output", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    steps = [h["step"] for h in manifest["recipe"]["history"]]
    assert steps == ["prune", "prune", "strategy", "fold"]  # two iterations, the recipe, then BN folding
    recipe = manifest["recipe"]["history"][2]["recipe"]
    assert recipe["prune"]["criterion"] == "taylor" and recipe["strategy"]["step"] == 0.25
    assert [p["phase"] for p in recipe["phases"]][-1] == "finetune"


@pytest.mark.parametrize("argv,message", [
    (["--criterion", "simc", "--criterion-option", "tau=1.5", "--ratio", "0.5"], "tau must be in (0, 1]"),
    (["--criterion", "entropy", "--criterion-option", "bins=1", "--ratio", "0.5"], "bins"),
    (["--criterion", "l2", "--criterion-option", "tau=0.5", "--ratio", "0.5"], "allowed: []"),
    (["--criterion", "taylor", "--ratio", "0.5"], "give --data"),
    (["--strategy", "psfp", "--ratio", "0.5"], "give --data"),
    (["--strategy", "play_and_prune", "--strategy-option", "tolerance=-1", "--ratio", "0.5"], "tolerance must be >= 0"),
    (["--strategy", "oneshot", "--strategy-option", "stepp=1", "--ratio", "0.5"], "allowed"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    assert main(["prune", "--model", "resnet20", "--output", str(tmp_path / "o"), "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unknown_criterion_and_strategy_list_known(capsys):
    for flag, name, known in (("--criterion", "l3", "fpgm"), ("--strategy", "lottery", "psfp")):
        with pytest.raises(SystemExit) as exc:
            main(["prune", "--model", "resnet20", "--ratio", "0.5", "--output", "x", flag, name])
        assert exc.value.code == 2 and known in capsys.readouterr().err


def test_unreachable_target_is_one_named_warning_line(tmp_path):
    """The CLI says where an aligned target landed, as one line, without the library's source line."""
    import subprocess
    import sys

    argv = ["prune", "--model", "lenet5", "--target-flops", "0.7", "--round-to", "8", "--no-speed-check",
            "--output", str(tmp_path / "o"), "--quiet"]
    done = subprocess.run([sys.executable, "-m", "compressor", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "not reachable exactly" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: target_flops=0.7 is not reachable"), done.stderr
    assert "select_removal(" not in done.stderr and ".py:" not in done.stderr
