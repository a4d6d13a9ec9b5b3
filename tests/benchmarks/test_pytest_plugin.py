"""benchmarks.pytest_plugin: the ``bundle_benchmark`` fixture, run in a user-like pytest subprocess.

Each case writes a test file into pytester's directory and runs pytest in a subprocess with
``-p benchmarks.pytest_plugin``, the way a user enables the plugin. The timings themselves are
never compared with an absolute time; the compare-fail case doctors the saved baseline instead.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from compressor.app._bundle import export_bundle
from models import create_model
from runtimes import get_runtime
from runtimes._bundle import BundleConfig

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.skipif(get_runtime("onnxruntime").is_available() is not None,
                                reason=f"onnxruntime unavailable: {get_runtime('onnxruntime').is_available()}")

PLUGIN = ("-p", "benchmarks.pytest_plugin", "-p", "no:cacheprovider", "-p", "no:xdist")
USER_TEST = """
import pytest

BUNDLE = {bundle!r}

def test_bundle(bundle_benchmark):
    stats = bundle_benchmark(BUNDLE, {kwargs})
    assert stats is not None and stats.n == 5 and stats.batch_size == 2
    assert len(stats.samples_ms) == 5 and stats.latency_ms_median > 0
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lenet5 (1x32x32) with only the ONNX artifact: quick to export and to run."""
    out = tmp_path_factory.mktemp("plugin") / "lenet"
    export_bundle(create_model("lenet5").eval(), out, (1, 32, 32),
                  BundleConfig(targets=("onnx",), batch_sizes=(2,), threads=1), source="lenet5")
    return out


def _user_test(pytester: pytest.Pytester, bundle: Path, **kwargs) -> None:
    args = {"runtime": "onnxruntime", "batch_size": 2, "threads": 1, "rounds": 5, "warmup_rounds": 1, **kwargs}
    pytester.makepyfile(test_user=USER_TEST.format(bundle=str(bundle),
                                                   kwargs=", ".join(f"{k}={v!r}" for k, v in args.items())))


def test_fixture_times_the_bundle_and_records_its_facts(pytester, bundle):
    _user_test(pytester, bundle)
    result = pytester.runpytest_subprocess(*PLUGIN, "--benchmark-json=out.json")
    result.assert_outcomes(passed=1)
    data = json.loads((pytester.path / "out.json").read_text())
    (bench,) = data["benchmarks"]
    assert bench["group"] == "onnxruntime-cpu-bs2"
    assert bench["stats"]["rounds"] == 5 and len(bench["stats"]["data"]) == 5 and bench["stats"]["median"] > 0
    info = bench["extra_info"]
    assert info["runtime"] == "onnxruntime" and info["device"] == "cpu"
    assert info["batch_size"] == 2 and info["threads"] == 1 and info["bundle"] == "lenet"
    assert info["input_shape"] == [1, 32, 32] and info["flops"] > 0 and info["params"] > 0
    assert info["settings"]["runtime"] == "onnxruntime" and info["settings"]["threads"] == 1
    assert info["settings"]["flush_denormal"] is True
    low, high = info["latency_ms_median_ci"]
    assert low <= bench["stats"]["median"] * 1000 <= high


def test_compare_fail_catches_a_regression_against_the_saved_baseline(pytester, bundle):
    _user_test(pytester, bundle)
    pytester.runpytest_subprocess(*PLUGIN, "--benchmark-save=base", "--benchmark-storage=store").assert_outcomes(
        passed=1)
    (saved,) = (pytester.path / "store").rglob("*.json")
    assert saved.name == "0001_base.json"
    # a baseline a million times faster than anything this machine can do: any run regresses
    data = json.loads(saved.read_text())
    for bench in data["benchmarks"]:
        bench["stats"] = {k: v * 1e-6 if isinstance(v, float) and k not in ("ops", "rounds") else v
                          for k, v in bench["stats"].items()}
    saved.write_text(json.dumps(data))

    result = pytester.runpytest_subprocess(*PLUGIN, "--benchmark-storage=store", "--benchmark-compare=0001",
                                           "--benchmark-compare-fail=median:10%")
    # the test itself passes; pytest-benchmark fails the session in its summary (on stderr, and
    # before pytest's own summary line)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["test_user.py . *"])
    result.stderr.fnmatch_lines(["Performance has regressed:",
                                 "*test_bundle (0001_base) - Field 'median' has failed PercentageRegressionCheck*"])


def test_unavailable_runtime_is_skipped_with_the_reason(pytester, bundle, tmp_path):
    # TensorRT never runs on the CPU: whether or not it is installed, this is a skip. The bundle
    # must list a tensorrt artifact, otherwise it is the missing artifact that is reported; to
    # stay loadable, the (stand-in) engine is hashed and has a parity run, as an exported one would.
    listed = tmp_path / "lenet_trt"
    shutil.copytree(bundle, listed)
    engine = listed / "tensorrt" / "model.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"stand-in engine")
    manifest = json.loads((listed / "manifest.json").read_text())
    manifest["artifacts"]["tensorrt"] = "tensorrt/model.engine"
    manifest["files"]["tensorrt/model.engine"] = hashlib.sha256(engine.read_bytes()).hexdigest()
    manifest["parity"].append({**manifest["parity"][0], "runtime": "tensorrt", "device": "cuda"})
    (listed / "manifest.json").write_text(json.dumps(manifest))
    _user_test(pytester, listed, runtime="tensorrt", device="cpu")
    result = pytester.runpytest_subprocess(*PLUGIN, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*tensorrt cannot run on cpu: *"])


def test_missing_artifact_is_a_clear_error(pytester, bundle):
    _user_test(pytester, bundle, runtime="torch")  # torch always runs, and the bundle holds only ONNX
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(failed=1)
    assert "BundleError: bundle " in result.stdout.str()
    assert "has no 'torch' artifact, which runtime 'torch' loads; it has ['onnx']" in result.stdout.str()


def test_second_run_in_one_test_is_refused(pytester, bundle):
    pytester.makepyfile(test_twice=f"""
def test_twice(bundle_benchmark):
    bundle_benchmark({str(bundle)!r}, threads=1, rounds=2, warmup_rounds=0)
    bundle_benchmark({str(bundle)!r}, threads=1, rounds=2, warmup_rounds=0)
""")
    result = pytester.runpytest_subprocess(*PLUGIN)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: bundle_benchmark runs once per test*"])


def _entry_point_installed() -> bool:
    """As pluggy looks: every distribution (entry_points() keeps one per name, and a stale
    cnn_compressor.egg-info in the working directory would hide the installed one)."""
    from importlib.metadata import distributions

    return any(ep.group == "pytest11" and ep.value == "benchmarks.pytest_plugin"
               for dist in distributions() for ep in dist.entry_points)


@pytest.mark.skipif(not _entry_point_installed(), reason="the pytest11 entry point is not installed "
                                                         "(pip install -e . installs it)")
@pytest.mark.parametrize("how", ["entry point", "-p", "conftest", "conftest and -p"])
def test_plugin_is_registered_once_however_it_is_enabled(pytester, how):
    # the entry point bears the module's name, so -p and pytest_plugins find it registered
    pytester.makepyfile(test_names="""
import benchmarks.pytest_plugin as plugin

def test_registered_once(request, bundle_benchmark):
    names = [name for name, p in request.config.pluginmanager.list_name_plugin() if p is plugin]
    assert names == ["benchmarks.pytest_plugin"]
""")
    if "conftest" in how:
        pytester.makeconftest('pytest_plugins = ["benchmarks.pytest_plugin"]')
    extra = ("-p", "benchmarks.pytest_plugin") if "-p" in how else ()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", *extra)
    result.assert_outcomes(passed=1)
