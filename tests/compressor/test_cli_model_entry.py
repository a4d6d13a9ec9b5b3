"""Model entry on the command line: --model-arg, package.module:factory, --weights checkpoint layouts,
--allow-pickle, and the named errors (exit 2, no traceback) for what a user gets wrong."""
import argparse
import json
import sys
import textwrap
import types

import numpy as np
import pytest
import torch

import compressor
from compressor.app._model_entry import ModelSource, load_source, load_weights_, read_state_dict
from compressor.app.cli import main
from models import create_model

USER_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    NOT_CALLABLE = 3


    class Net(nn.Module):
        def __init__(self, width=8, num_classes=5):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(2 * width, num_classes)

        def forward(self, x):
            return self.fc(self.features(x))


    def build_net(width=8, num_classes=5):
        return Net(width=width, num_classes=num_classes)


    def returns_tuple():
        return (1, 2)
''')
USER_SPEC = "cme_userpkg.nets:build_net"


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """``cme_userpkg.nets`` importable from a temporary directory on sys.path."""
    package = tmp_path / "src" / "cme_userpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    for name in ("cme_userpkg", "cme_userpkg.nets"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return package


@pytest.fixture(scope="module")
def r18_10_classes(tmp_path_factory):
    """A "fine-tuned" 10-class torchvision resnet18 (random weights) saved as a state_dict."""
    torch.manual_seed(0)
    model = create_model("torchvision:resnet18", num_classes=10).eval()
    path = tmp_path_factory.mktemp("r18") / "r18.pt"
    torch.save(model.state_dict(), path)
    return path, model


def _assert_named_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_finetuned_torchvision_state_dict_prunes_and_exports(tmp_path, capsys, r18_10_classes):
    weights, reference = r18_10_classes
    loaded = load_source(ModelSource("torchvision:resnet18", {"num_classes": 10}, weights=weights)).model
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in reference.state_dict().items())

    pruned = tmp_path / "r18_pruned"
    assert main(["prune", "--model", "torchvision:resnet18", "--model-arg", "num_classes=10", "--weights",
                 str(weights), "--input-size", "3,64,64", "--ratio", "0.3", "--round-to", "1", "--no-speed-check",
                 "--quiet", "--output", str(pruned)]) == 0
    spec = json.loads((pruned / "model.json").read_text())
    assert spec["arch"] == {"name": "torchvision:resnet18", "kwargs": {"num_classes": 10}}
    assert spec["metadata"]["weights"]["origin"] == f"file:{weights}"

    bundle = tmp_path / "bundle"
    assert main(["export", str(pruned), "--to", "onnx", "--batch-sizes", "1,2", "--output", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["parity_passed"] and manifest["parity"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 3, 64, 64), np.float32)})[0]
    assert out.shape == (2, 10)


def test_weights_of_another_class_count_name_key_shapes_and_num_classes(tmp_path, capsys, r18_10_classes):
    weights, _ = r18_10_classes
    assert main(["prune", "--model", "torchvision:resnet18", "--weights", str(weights), "--input-size", "3,64,64",
                 "--ratio", "0.3", "--round-to", "1", "--no-speed-check", "--output", str(tmp_path / "o")]) == 2
    _assert_named_error(capsys, "'fc.weight'", "[10, 512]", "[1000, 512]", "--model-arg num_classes=10")
    assert not (tmp_path / "o" / "model.json").exists()


def test_user_factory_with_model_arg_prunes_saves_and_reloads(tmp_path, user_package):
    out = tmp_path / "net_pruned"
    assert main(["prune", "--model", USER_SPEC, "--model-arg", "width=16", "--model-arg", "num_classes=7",
                 "--input-size", "3,32,32", "--ratio", "0.5", "--round-to", "1", "--no-speed-check", "--quiet",
                 "--output", str(out)]) == 0
    assert json.loads((out / "model.json").read_text())["arch"] == {
        "name": USER_SPEC, "kwargs": {"width": 16, "num_classes": 7}}
    reloaded = compressor.load_model(out)
    assert type(reloaded).__name__ == "Net" and reloaded.fc.out_features == 7
    assert reloaded.features[0].out_channels == 8  # half of width=16 removed
    full = create_model(USER_SPEC, width=16, num_classes=7)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in full.parameters())
    assert reloaded(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("spec,needles", [
    ("cme_no_such_pkg.nets:build_net", ["cme_no_such_pkg.nets:build_net", "cannot import"]),
    ("cme_userpkg.nets:build_nett", ["cme_userpkg.nets:build_nett", "no attribute", "build_net"]),
    ("cme_userpkg.nets:NOT_CALLABLE", ["cme_userpkg.nets:NOT_CALLABLE", "not a callable"]),
    ("cme_userpkg.nets:returns_tuple", ["cme_userpkg.nets:returns_tuple", "not an nn.Module"]),
    ("subprocess:run", ["standard library"]),
])
def test_bad_factory_is_a_named_error(capsys, user_package, spec, needles):
    assert main(["graph", "--model", spec, "--input-size", "3,32,32"]) == 2
    _assert_named_error(capsys, *needles)


def test_factory_without_input_size_or_with_a_wrong_argument(capsys, user_package):
    assert main(["graph", "--model", USER_SPEC]) == 2
    _assert_named_error(capsys, USER_SPEC, "--input-size")
    assert main(["graph", "--model", USER_SPEC, "--model-arg", "depth=3", "--input-size", "3,32,32"]) == 2
    _assert_named_error(capsys, USER_SPEC, "depth")


def _lenet_state():
    torch.manual_seed(1)
    return create_model("lenet5").state_dict()


@pytest.mark.parametrize("layout", ["ddp_under_model", "state_dict", "model_state_dict_with_optimizer",
                                    "ema_module", "compiled"])
def test_checkpoint_layouts_are_unwrapped(tmp_path, layout):
    state = _lenet_state()
    checkpoint = {
        "ddp_under_model": lambda: {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
        "state_dict": lambda: {"state_dict": state},
        "model_state_dict_with_optimizer": lambda: {"model_state_dict": state, "optimizer_state_dict": {"lr": 0.1}},
        "ema_module": lambda: {"ema": {"module": state, "updates": 10}},
        "compiled": lambda: {f"_orig_mod.{k}": v for k, v in state.items()},
    }[layout]()
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    model = load_weights_(create_model("lenet5"), tmp_path / "ckpt.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_ddp_checkpoint_through_the_cli(tmp_path, capsys):
    torch.save({"model": {f"module.{k}": v for k, v in _lenet_state().items()}}, tmp_path / "ddp.pt")
    assert main(["graph", "--model", "lenet5", "--weights", str(tmp_path / "ddp.pt")]) == 0


def test_missing_unexpected_keys_and_non_state_dicts_are_named(tmp_path):
    state = _lenet_state()
    first = next(iter(state))
    partial = {k: v for k, v in state.items() if k != first} | {"extra.weight": torch.zeros(1)}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(compressor.ModelEntryError, match=rf"missing from the file \({first}.*extra\.weight"):
        load_weights_(create_model("lenet5"), tmp_path / "partial.pt")
    torch.save({"epoch": 3, "best": 0.9}, tmp_path / "meta.pt")
    with pytest.raises(compressor.ModelEntryError, match=r"holds no state dict.*'epoch', 'best'"):
        read_state_dict(tmp_path / "meta.pt")


def test_checkpoint_with_python_objects_needs_allow_pickle(tmp_path, capsys):
    torch.save({"model": _lenet_state(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ckpt.pt")
    assert main(["graph", "--model", "lenet5", "--weights", str(tmp_path / "ckpt.pt")]) == 2
    _assert_named_error(capsys, "--allow-pickle", "ckpt.pt")
    assert main(["graph", "--model", "lenet5", "--weights", str(tmp_path / "ckpt.pt"), "--allow-pickle"]) == 0
    _assert_named_error(capsys, "arbitrary code", "trust")


def test_pickled_module_is_refused_without_allow_pickle_and_loaded_with_it(tmp_path, capsys):
    torch.save(create_model("lenet5"), tmp_path / "lenet.pt")
    assert main(["graph", "--model", str(tmp_path / "lenet.pt"), "--input-size", "1,32,32"]) == 2
    _assert_named_error(capsys, "--allow-pickle", "lenet.pt")
    assert main(["graph", "--model", str(tmp_path / "lenet.pt"), "--input-size", "1,32,32", "--allow-pickle"]) == 0
    captured = capsys.readouterr()
    assert "unpickling runs arbitrary code" in captured.err and "groups" in captured.out.lower()
    torch.save(_lenet_state(), tmp_path / "weights.pt")  # a state dict given as the model
    assert main(["graph", "--model", str(tmp_path / "weights.pt")]) == 2
    _assert_named_error(capsys, "holds weights, not a model", "--weights")


def test_named_errors_exit_2_without_traceback(tmp_path, capsys, monkeypatch):
    assert main(["graph", "--model", "timm:resnet_fake"]) == 2
    _assert_named_error(capsys, "timm")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert main(["export", "../typo_dir", "--to", "onnx", "--output", str(tmp_path / "b")]) == 2
    err = _assert_named_error(capsys, "no such directory", "../typo_dir")
    assert "unknown model" not in err
    assert main(["graph", "--model", "lenet5", "--weights", "nowhere.pt"]) == 2
    _assert_named_error(capsys, "nowhere.pt", "does not exist")
    assert main(["graph", "--model", "torchvision:resnet_18"]) == 2
    _assert_named_error(capsys, "unknown torchvision model", "Did you mean: resnet18")
    assert main(["graph", "--model", str(tmp_path), "--model-arg", "width=4"]) == 2
    _assert_named_error(capsys, "not a saved model")


def test_unknown_timm_model_suggests_close_names(capsys, monkeypatch):
    created = []
    fake = types.SimpleNamespace(is_model=lambda name: name in ("resnet18", "resnet50", "resnext50_32x4d"),
                                 list_models=lambda: ["resnet18", "resnet50", "resnext50_32x4d", "vit_base"],
                                 create_model=lambda *a, **k: created.append(a))
    monkeypatch.setitem(sys.modules, "timm", fake)
    assert main(["graph", "--model", "timm:resnet_fake"]) == 2
    _assert_named_error(capsys, "unknown timm model 'resnet_fake'", "Did you mean", "resnet50")
    assert not created


def test_model_arg_on_a_saved_directory_is_refused(tmp_path, capsys):
    compressor.save_model(create_model("lenet5"), tmp_path / "m")
    assert main(["graph", "--model", str(tmp_path / "m"), "--model-arg", "num_classes=3"]) == 2
    _assert_named_error(capsys, "--model-arg num_classes", "model.json")


def test_eval_and_train_take_model_args_and_weights(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("resnet20", width=4, num_classes=10)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "r20.pt")
    assert main(["eval", "resnet20", "--model-arg", "width=4", "--weights", str(tmp_path / "r20.pt"),
                 "--data", "digits", "--batch-size", "360"]) == 0
    assert "top-1" in capsys.readouterr().out
    assert main(["train", "--model", "resnet20", "--weights", str(tmp_path / "r20.pt"), "--data", "digits",
                 "--epochs", "1", "--output", str(tmp_path / "t")]) == 2
    _assert_named_error(capsys, "does not fit resnet20")
