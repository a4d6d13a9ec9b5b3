"""Saving and reloading pruned models: fresh-process parity, no pickle by default, atomic writes."""
import json
import subprocess
import sys

import pytest
import torch

import compressor as C
from models import create_model


@pytest.fixture
def pruned():
    model = create_model("resnet20").eval()
    return C.prune(model, torch.randn(1, 3, 32, 32), "random", ratio=0.4, seed=3).model


def test_reload_in_fresh_process_gives_same_outputs(pruned, tmp_path):
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = pruned(x)
    C.save_model(pruned, tmp_path / "m")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch, compressor; m = compressor.load_model(sys.argv[1]); "
            "assert not m.training; x = torch.load(sys.argv[2], weights_only=True); "
            "torch.save(m(x).detach(), sys.argv[3])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True)
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), expected)
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert spec["schema_version"] == 1 and spec["arch"]["name"] == "resnet20"
    assert spec["metadata"]["history"][0]["step"] == "prune"


def test_dtype_and_mode_survive(tmp_path):
    model = create_model("lenet5").double().train()
    pruned = C.prune(model, torch.randn(1, 1, 32, 32, dtype=torch.float64), "l1", ratio=0.5).model
    C.save_model(pruned, tmp_path / "m")
    again = C.load_model(tmp_path / "m")
    assert again.training and next(again.parameters()).dtype == torch.float64
    assert again.conv1.out_channels == pruned.conv1.out_channels < 6


def test_per_module_modes_survive(tmp_path):
    model = create_model("resnet20").train()
    model.bn1.eval()  # a frozen BatchNorm inside a training model
    C.save_model(model, tmp_path / "m")
    again = C.load_model(tmp_path / "m")
    assert again.training and not again.bn1.training and again.layer1[0].bn1.training


def test_pickle_needs_explicit_opt_in(pruned, tmp_path):
    C.save_model(pruned, tmp_path / "p", format="pickle")
    with pytest.raises(C.ModelFormatError, match="allow_pickle=True"):
        C.load_model(tmp_path / "p")
    assert isinstance(C.load_model(tmp_path / "p", allow_pickle=True), torch.nn.Module)


def test_unknown_architecture_needs_arch_or_pickle(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(ValueError, match="architecture is unknown"):
        C.save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_bad_files_name_the_cause(pruned, tmp_path):
    C.save_model(pruned, tmp_path / "m")
    (tmp_path / "m" / "weights.pt").unlink()
    with pytest.raises(C.ModelFormatError, match="weights.pt"):
        C.load_model(tmp_path / "m")
    with pytest.raises(C.ModelFormatError, match="model.json is missing"):
        C.load_model(tmp_path / "nothing")
    C.save_model(pruned, tmp_path / "v")
    spec = json.loads((tmp_path / "v" / "model.json").read_text())
    spec["schema_version"] = 99
    (tmp_path / "v" / "model.json").write_text(json.dumps(spec))
    with pytest.raises(C.ModelFormatError, match="schema_version 99"):
        C.load_model(tmp_path / "v")


def test_weights_that_do_not_fit_are_refused(pruned, tmp_path):
    C.save_model(pruned, tmp_path / "m")
    torch.save(create_model("resnet20").state_dict(), tmp_path / "m" / "weights.pt")  # unpruned weights
    with pytest.raises(C.ModelFormatError, match="does not fit"):
        C.load_model(tmp_path / "m")


def test_failed_write_leaves_nothing_and_keeps_the_old_model(pruned, tmp_path, monkeypatch):
    C.save_model(pruned, tmp_path / "m")
    before = sorted(p.name for p in tmp_path.iterdir())
    original = (tmp_path / "m" / "weights.pt").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        C.save_model(pruned, tmp_path / "m")
    with pytest.raises(OSError):
        C.save_model(pruned, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temp dirs, no partial 'new'
    assert (tmp_path / "m" / "weights.pt").read_bytes() == original
