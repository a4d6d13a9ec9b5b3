"""``python -m benchmarks``: ``compressor bench`` on a device without torch.

The bundle is exported here, with torch; the benchmark runs in a child process where importing
torch, or any part of ``compressor`` but its torch-free foundation ``compressor.common`` (errors,
atomic files), is impossible (a ``sitecustomize`` on PYTHONPATH, so the memory subprocesses
inherit it) and every attempt is logged, even one a ``try/except`` would swallow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from compressor.app.cli import main as cli
from runtimes import get_runtime

PROJECT = Path(__file__).resolve().parents[2]
SCHEMA = PROJECT / "benchmarks" / "results.schema.json"
BLOCKED = ("torch", "compressor")
ALLOWED = ("compressor", "compressor.common")  # the lazy facade and the torch-free foundation

# Refuses torch and compressor (and their submodules, but for compressor.common) to every import in
# this process and its children, and logs the process and each refused name to $TORCH_FREE_LOG.
SITECUSTOMIZE = f'''
import os, sys

BLOCKED = {BLOCKED!r}
ALLOWED = {ALLOWED!r}
LOG = os.environ["TORCH_FREE_LOG"]


def _log(line):
    with open(LOG, "a") as fh:
        fh.write(line + "\\n")


class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED and not (name in ALLOWED or name.startswith("compressor.common.")):
            _log(f"import {{name}} in {{' '.join(sys.argv)}}")
            raise ImportError(f"{{name}} is not installed on this device (blocked by the test)")
        return None


sys.meta_path.insert(0, _Refuse())
_log(f"process {{os.getpid()}}")
'''

pytestmark = pytest.mark.skipif(get_runtime("onnxruntime").is_available() is not None,
                                reason=f"onnxruntime unavailable: {get_runtime('onnxruntime').is_available()}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("torch_free")
    assert cli(["export", "lenet5", "--to", "onnx", "--output", str(root / "lenet"), "--batch-sizes", "2"]) == 0
    return root / "lenet"


def _torch_free(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``python -m benchmarks ARGS`` without torch or compressor; the process and the log lines."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "imports.log"
    log.write_text("")
    env = {**os.environ, "TORCH_FREE_LOG": str(log),
           "PYTHONPATH": os.pathsep.join(p for p in (str(site), str(PROJECT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    return proc, log.read_text().splitlines()


def test_the_child_cannot_import_torch(tmp_path):
    """The guard itself: without it the tests below would pass in any environment."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "imports.log"
    env = {**os.environ, "TORCH_FREE_LOG": str(log), "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr
    assert any(line.startswith("import torch") for line in log.read_text().splitlines())
    # the foundation imports; the pruning engine does not (it needs torch)
    code = "import compressor.common.errors, compressor.common.files; import compressor.graph"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "compressor.graph is not installed" in proc.stderr, proc.stderr


def test_bench_runs_without_torch_and_the_gate_reads_its_report(bundle, tmp_path, capsys):
    out = tmp_path / "report"
    proc, log = _torch_free([str(bundle), "--runtimes", "onnxruntime", "--batch-sizes", "1,2", "--threads", "1",
                             "--min-seconds", "0.1", "--max-seconds", "0.5", "--memory-runs", "1", "--quiet",
                             "--output", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in log if line.startswith("import ")] == []
    # the main process and one memory subprocess per batch size, all under the guard
    assert sum(line.startswith("process ") for line in log) == 3
    results = json.loads((out / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA.read_text()))
    rows = {(r["runtime"], r["batch_size"]): r for r in results["latency"]}
    assert set(rows) == {("onnxruntime", 1), ("onnxruntime", 2)}
    assert all(r["status"] == "ok" and r["stats"]["latency_ms_median"] > 0 for r in rows.values())
    assert {r["status"] for r in results["memory"]} == {"ok"}

    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(json.dumps({"rules": [{"bundle": "lenet", "runtime": "onnxruntime", "batch_size": 2,
                                              "max_p50_ms": 10_000}]}))
    capsys.readouterr()
    assert cli(["gate", str(budgets), "--report", str(out)]) == 0, capsys.readouterr().err


def test_a_missing_bundle_exits_2_without_torch(tmp_path):
    proc, log = _torch_free([str(tmp_path / "no_such_bundle"), "--runtimes", "onnxruntime", "--batch-sizes", "1",
                             "--no-memory", "--output", str(tmp_path / "report")], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no_such_bundle" in proc.stderr and "Traceback" not in proc.stderr
    assert [line for line in log if line.startswith("import ")] == []
    assert not (tmp_path / "report").exists()


def test_a_foreign_output_directory_is_refused_without_torch(bundle, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc, log = _torch_free([str(bundle), "--runtimes", "onnxruntime", "--batch-sizes", "1", "--no-memory",
                             "--output", str(out)], tmp_path)
    assert proc.returncode == 2 and "--force" in proc.stderr, proc.stderr
    assert [line for line in log if line.startswith("import ")] == []
    assert os.listdir(out) == ["keep.txt"]
