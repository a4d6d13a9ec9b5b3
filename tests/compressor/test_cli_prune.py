"""The `compressor` command: the issue's acceptance command, the summary JSON, and bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from compressor.app.cli import main

COMPRESSOR = str(Path(sys.executable).with_name("compressor"))


def test_acceptance_command_resnet50(tmp_path):
    out = tmp_path / "r50_half"
    proc = subprocess.run([COMPRESSOR, "prune", "--model", "torchvision:resnet50", "--criterion", "l2",
                           "--target-flops", "0.5", "--output", str(out)], capture_output=True, text=True, check=True)
    assert "layer4.2.conv2" in proc.stdout and "→" in proc.stdout  # per-layer table
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == 1
    assert 0.45 <= summary["flops_ratio"] <= 0.5
    assert summary["after"]["flops"] == 2 * summary["after"]["macs"]
    assert summary["after"]["params"] < summary["before"]["params"] == 25_557_032
    code = ("import sys, torch, compressor; from torch.utils.flop_counter import FlopCounterMode; "
            "m = compressor.load_model(sys.argv[1]); c = FlopCounterMode(display=False)\n"
            "with c, torch.no_grad(): m(torch.randn(1, 3, 224, 224))\n"
            "print(c.get_total_flops())")
    reloaded = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert float(reloaded.stdout) == pytest.approx(summary["after"]["flops"], rel=1e-9)


def test_summary_and_files(tmp_path, capsys):
    assert main(["prune", "--model", "resnet20", "--ratio", "0.3", "--round-to", "4", "--output",
                 str(tmp_path / "o"), "--json", str(tmp_path / "s.json"), "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.json", "summary.json", "weights.pt"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["params_ratio"] < 1 and summary["config"]["round_to"] == 4
    changed = [l for l in summary["layers"] if l["out_after"] != l["out_before"]]
    assert changed and all(l["out_after"] % 4 == 0 for l in changed)


@pytest.mark.parametrize("argv,message", [
    (["--ratio", "1.5"], "argument --ratio: expected a fraction in [0, 1), got 1.5"),  # a usage error
    (["--ratio", "-0.1"], "argument --ratio: expected a fraction in [0, 1), got -0.1"),
    (["--ratio", "0.3", "--exclude", "layer9.conv"], "'layer9.conv' matches no layer"),
    (["--target-flops", "0.0001"], "closest reachable"),
    (["--ratio", "0.3", "--input-size", "3,abc"], "--input-size"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    try:
        code = main(["prune", "--model", "resnet20", "--output", str(out), "--quiet", *argv])
    except SystemExit as exc:  # argparse rejects bad numbers itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_lists_known(tmp_path, capsys):
    assert main(["prune", "--model", "resnet21", "--ratio", "0.3", "--output", str(tmp_path / "o")]) == 2
    assert "resnet20" in capsys.readouterr().err


def test_graph_command_names_blockers(capsys):
    assert main(["graph", "--model", "torchvision:vit_b_32"]) == 0
    out = capsys.readouterr().out
    assert "model output (protected)" in out and "hard-coded channel count" in out
