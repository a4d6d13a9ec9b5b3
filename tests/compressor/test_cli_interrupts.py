"""Ctrl-C: a real SIGINT to ``compressor`` at a known point exits 130 with one line on stderr and
no traceback; the earlier output is left as it was, and measurements already taken are written.

Each test runs the command in a child process through :data:`HOOK`, which makes one function
block: on its N-th call it creates a file (so the test knows where the child is) and sleeps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks._report import REPORT_FILES
from compressor.app.cli import main as cli

PROJECT = Path(__file__).resolve().parents[2]
HOOK = '''\
import importlib, pathlib, sys, time
ready, target, nth, seconds, *argv = sys.argv[1:]
module_name, attr = target.rsplit(".", 1)
module = importlib.import_module(module_name)
original, calls = getattr(module, attr), []

def blocking(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(nth):
        pathlib.Path(ready).touch()
        time.sleep(float(seconds))
    return original(*args, **kwargs)

setattr(module, attr, blocking)
from compressor.app.cli import main
sys.exit(main(argv))
'''
PRUNE = ["prune", "--model", "resnet20", "--ratio", "0.3", "--round-to", "1", "--no-speed-check", "--quiet"]
EXPORT = ["export", "resnet20", "--to", "onnx", "--exporter", "torchscript", "--batch-sizes", "1"]
BENCH_FLAGS = ["--runtimes", "onnxruntime", "--warmup", "1", "--min-runs", "2", "--max-runs", "3", "--min-seconds", "0",
               "--max-seconds", "0.2", "--no-memory", "--quiet"]


def _interrupt(cwd: Path, target: str, argv: list[str], *, nth: int = 1, seconds: float = 120.0,
               while_blocked: list[str] | None = None) -> tuple[int, str]:
    """Run ``compressor ARGV`` in ``cwd`` with ``target`` blocking on its ``nth`` call; send SIGINT then.

    ``while_blocked`` collects the names in ``cwd`` at that moment. Returns (exit code, stderr).
    """
    hook, ready = cwd / "hook.py", cwd / "ready"
    hook.write_text(HOOK)
    # a shell's background jobs start with SIGINT ignored, and an ignored signal stays ignored across
    # exec; a handled one is reset to the default. So handle it while starting the child.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, str(hook), str(ready), target, str(nth), str(seconds), *argv],
                                cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(PROJECT)})
    finally:
        signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{target} was not reached (exit {proc.poll()}): {proc.communicate()[1]}")
        time.sleep(0.05)
    if while_blocked is not None:
        while_blocked.extend(sorted(p.name for p in cwd.iterdir()))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    hook.unlink()
    ready.unlink()
    return proc.returncode, err


def _assert_one_line(err: str, line: str) -> None:
    assert "Traceback" not in err, err
    assert [x for x in err.splitlines() if "interrupted" in x] == [line], err
    assert err.splitlines()[-1] == line


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _temporaries(name: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(f".{name}.tmp-") or n.startswith(f".{name}.old-")]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "resnet20"
    assert cli([*EXPORT, "--output", str(path)]) == 0
    return path


def test_ctrl_c_while_prune_writes_keeps_the_old_output(tmp_path):
    assert cli([*PRUNE, "--output", str(tmp_path / "out")]) == 0
    before = _files(tmp_path / "out")
    seen: list[str] = []
    code, err = _interrupt(tmp_path, "torch.save", [*PRUNE, "--output", "out"], while_blocked=seen)
    assert _temporaries("out", seen), seen  # the signal came while the new output was being written
    assert code == 130
    _assert_one_line(err, "interrupted")
    assert _files(tmp_path / "out") == before
    assert _temporaries("out", os.listdir(tmp_path)) == []


def test_ctrl_c_while_export_builds_keeps_the_old_bundle(tmp_path, bundle):
    out = tmp_path / "bundle"
    assert cli([*EXPORT, "--output", str(out)]) == 0
    before = _files(out)
    seen: list[str] = []
    code, err = _interrupt(tmp_path, "runtimes._bundle._sha256", [*EXPORT, "--output", "bundle"], while_blocked=seen)
    assert _temporaries("bundle", seen), seen
    assert code == 130
    _assert_one_line(err, "interrupted")
    assert _files(out) == before
    assert _temporaries("bundle", os.listdir(tmp_path)) == []


def test_ctrl_c_while_train_replaces_its_output_keeps_the_old_one(tmp_path):
    train = ["train", "--model", "resnet20", "--model-arg", "width=4", "--data", "digits:0-1", "--epochs", "1",
             "--input-size", "3,8,8", "--threads", "2", "--quiet"]
    assert cli([*train, "--output", str(tmp_path / "out")]) == 0
    before = _files(tmp_path / "out")
    seen: list[str] = []
    code, err = _interrupt(tmp_path, "compressor.training._loop._run", [*train, "--output", "out"], while_blocked=seen)
    assert _temporaries("out", seen), seen  # re-training an earlier output happens beside it
    assert code == 130
    _assert_one_line(err, "interrupted")
    assert _files(tmp_path / "out") == before
    assert _temporaries("out", os.listdir(tmp_path)) == []


def test_ctrl_c_during_the_report_write_still_writes_the_whole_report(tmp_path, bundle):
    seen: list[str] = []
    code, err = _interrupt(tmp_path, "benchmarks._report._html",
                           ["bench", str(bundle), *BENCH_FLAGS, "--batch-sizes", "1", "--output", "report"],
                           seconds=2.0, while_blocked=seen)
    assert _temporaries("report", seen), seen
    assert code == 130
    _assert_one_line(err, "interrupted: the results measured so far are in report/")
    report = tmp_path / "report"
    assert sorted(p.name for p in report.iterdir()) == sorted(REPORT_FILES)
    results = json.loads((report / "results.json").read_text())
    assert results["complete"] is True and len(results["latency"]) == 1  # the measuring had finished
    assert _temporaries("report", os.listdir(tmp_path)) == []


def test_ctrl_c_while_measuring_writes_what_was_measured(tmp_path, bundle):
    code, err = _interrupt(tmp_path, "benchmarks._sweep.interleaved",
                           ["bench", str(bundle), *BENCH_FLAGS, "--batch-sizes", "1,2", "--output", "report"], nth=2)
    assert code == 130
    _assert_one_line(err, "interrupted: the results measured so far are in report/")
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert results["complete"] is False and results["interrupted"] is True
    assert [row["batch_size"] for row in results["latency"]] == [1]
