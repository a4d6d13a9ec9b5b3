"""A bundle cannot be fooled by editing its manifest or swapping its files: ``load_bundle`` checks the
files table, the hashes, the declared input/output and FLOPs against the ONNX graph, and the parity
record; and it needs no torch."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import compressor as C
from compressor.app._bundle import export_bundle
from compressor.deploy._export import ExportConfig
from models import create_model
from runtimes import BundleConfig, BundleError, load_bundle
from runtimes._manifest_check import _Unknown, count_graph_macs

SIZE = (1, 32, 32)


def _export(model: torch.nn.Module, out: Path, targets: tuple[str, ...]) -> Path:
    config = BundleConfig(targets=targets, batch_sizes=(2,), threads=1)
    export_bundle(model, out, SIZE, config, ExportConfig(exporter="torchscript"), source="lenet5")
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """lenet5 unpruned (onnx + openvino) and pruned to about half its FLOPs (onnx)."""
    root = tmp_path_factory.mktemp("integrity")
    torch.manual_seed(0)
    full = create_model("lenet5").eval()
    half = C.prune(full, torch.randn(1, *SIZE), "l2", target_flops=0.5, round_to=1).model
    return {"full": _export(full, root / "full", ("onnx", "openvino")), "half": _export(half, root / "half", ("onnx",))}


def _copy(bundles: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundles[name], tmp_path / name))


def _edit(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_honest_bundle_loads_with_everything_checked(bundles):
    for path in bundles.values():
        bundle = load_bundle(path)
        assert bundle.unchecked == []
    assert set(load_bundle(bundles["full"]).manifest["files"]) == {"model.onnx", "openvino/model.xml",
                                                                   "openvino/model.bin"}


# ----------------------------------------------------------------------------- the files table


@pytest.mark.parametrize("files", ["delete", {}, None, []])
def test_missing_or_empty_files_table_is_refused(bundles, tmp_path, files):
    path = _copy(bundles, "half", tmp_path)
    _edit(path, lambda m: m.pop("files") if files == "delete" else m.update(files=files))
    with pytest.raises(BundleError, match="manifest.json has no files table"):
        load_bundle(path)


@pytest.mark.parametrize("dropped, what", [("model.onnx", "the onnx artifact"),
                                           ("openvino/model.xml", "the openvino artifact"),
                                           ("openvino/model.bin", "the weights of the openvino artifact")])
def test_files_table_lacking_an_artifact_is_refused(bundles, tmp_path, dropped, what):
    path = _copy(bundles, "full", tmp_path)
    _edit(path, lambda m: m["files"].pop(dropped))
    with pytest.raises(BundleError, match=rf"files table lacks {dropped} \({what}\)"):
        load_bundle(path)


def test_a_path_outside_the_bundle_is_refused(bundles, tmp_path):
    path = _copy(bundles, "half", tmp_path)
    _edit(path, lambda m: m["files"].update({"../elsewhere.onnx": "0" * 64}))
    with pytest.raises(BundleError, match="must be a path inside the bundle, got '../elsewhere.onnx'"):
        load_bundle(path)


def test_swapped_model_is_caught_by_its_hash_and_then_by_its_flops(bundles, tmp_path):
    """The issue's case: an unpruned model.onnx copied into a pruned bundle, which bench reported as
    a theoretical 2x speedup."""
    path = _copy(bundles, "half", tmp_path)
    shutil.copyfile(bundles["full"] / "model.onnx", path / "model.onnx")
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        load_bundle(path)
    _edit(path, lambda m: m.update(files={}))  # hiding the file from the hash check
    with pytest.raises(BundleError, match="no files table"):
        load_bundle(path)
    _edit(path, lambda m: m.update(files={"model.onnx": _sha256(path / "model.onnx")}))  # re-hashing it
    with pytest.raises(BundleError, match=r"cost.flops is .* but model.onnx computes .* per sample"):
        load_bundle(path)


def test_external_weights_must_be_listed(bundles, tmp_path):
    path = _copy(bundles, "half", tmp_path)
    model = onnx.load(str(path / "model.onnx"))
    onnx.save_model(model, str(path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    _edit(path, lambda m: m["files"].update({"model.onnx": _sha256(path / "model.onnx")}))
    with pytest.raises(BundleError, match=r"lacks model.onnx.data \(external weights of model.onnx\)"):
        load_bundle(path)
    _edit(path, lambda m: m["files"].update({"model.onnx.data": _sha256(path / "model.onnx.data")}))
    assert load_bundle(path).unchecked == []


# ----------------------------------------------------------------------------- claims against the graph


@pytest.mark.parametrize("field, value, message", [
    ("input", {"shape": ["batch", 1, 28, 28], "dtype": "float32"},
     r"declares input shape \['batch', 1, 28, 28\] but model.onnx's input 'input' is \['batch', 1, 32, 32\]"),
    ("input", {"shape": ["batch", 3, 32, 32], "dtype": "float32"}, "declares input shape"),
    ("input", {"shape": ["batch", 32, 32], "dtype": "float32"}, "declares input shape"),  # rank
    ("input", {"shape": ["batch", 1, 32, 32], "dtype": "float16"}, "declares input dtype 'float16'"),
    ("output_shape", ["batch", 100], r"declares output shape \['batch', 100\]"),
    ("num_classes", 100, "declares num_classes 100 but model.onnx outputs 10 scores"),
])
def test_declared_io_must_match_the_graph(bundles, tmp_path, field, value, message):
    path = _copy(bundles, "half", tmp_path)
    _edit(path, lambda m: m.update({field: value}))
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


@pytest.mark.parametrize("key", ["flops", "macs"])
def test_edited_cost_figures_are_refused(bundles, tmp_path, key):
    path = _copy(bundles, "half", tmp_path)
    _edit(path, lambda m: m["cost"].update({key: m["cost"][key] / 2}))
    with pytest.raises(BundleError, match=rf"cost.{key} is .* the manifest and the model disagree"):
        load_bundle(path)


def test_the_batch_dim_is_free(bundles, tmp_path):
    path = _copy(bundles, "half", tmp_path)
    _edit(path, lambda m: m["input"].update(shape=[7, *SIZE]))
    load_bundle(path)


def test_macs_counted_from_the_graph_match_the_cost_model(bundles):
    for path in bundles.values():
        manifest = json.loads((path / "manifest.json").read_text())
        graph = onnx.load(str(path / "model.onnx"), load_external_data=False)
        assert count_graph_macs(graph, SIZE) == manifest["cost"]["macs"]


def test_uncountable_graphs_leave_the_flops_unchecked(bundles, tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 2, 3, 3], [0.0] * 72)
    graph = helper.make_graph([helper.make_node("ConvTranspose", ["input", "w"], ["output"])], "g", [x], [y], [w])
    with pytest.raises(_Unknown, match="ConvTranspose is not counted"):
        count_graph_macs(helper.make_model(graph), (4, 8, 8))


# ----------------------------------------------------------------------------- the parity record


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(parity_passed=False), "parity_passed is False but its parity runs all passed"),
    (lambda m: m["parity"][0].update(passed=False), r"parity\[0\] says passed=False but its errors .* say pass"),
    (lambda m: m["parity"][0].update(max_rel_error=0.5), r"parity\[0\] says passed=True but its errors"),
    (lambda m: m["parity"][0].update(tolerance_rel=1.0), r"parity\[0\] has tolerances \(1.0, 0.99999\)"),
    (lambda m: m.update(parity=[r for r in m["parity"] if r["runtime"] != "openvino"]),
     "no parity run for the openvino artifact"),
    (lambda m: m.update(parity="ok"), "parity must be a list"),
])
def test_a_self_contradicting_parity_record_is_refused(bundles, tmp_path, change, message):
    path = _copy(bundles, "full", tmp_path)
    _edit(path, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(path, allow_failed_parity=True)


def test_verify_false_only_reads_the_manifest(bundles, tmp_path):
    path = _copy(bundles, "half", tmp_path)
    _edit(path, lambda m: m.update(files={}))
    assert load_bundle(path, verify=False).manifest["files"] == {}


def test_load_bundle_needs_no_torch(bundles):
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
            "from runtimes import load_bundle\n"
            f"print(load_bundle({str(bundles['full'])!r}).unchecked)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
