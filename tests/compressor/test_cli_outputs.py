"""Outputs are never destroyed: ``prune``, ``export``, ``bench`` and ``train`` refuse a non-empty
``--output`` that is not their own earlier output (``--force`` replaces it), refuse the working
directory and its parents, and swap a new output in only once it is complete."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from compressor.common.outputs import OUTPUT_KINDS, OutputRefused, claim_output
from compressor.deploy._serialize import atomic_directory
from compressor.app.cli import main as cli

PRUNE = ["prune", "--model", "resnet20", "--ratio", "0.3", "--round-to", "1", "--no-speed-check", "--quiet"]
TRAIN = ["train", "--model", "resnet20", "--model-arg", "width=4", "--data", "digits:0-1", "--epochs", "1",
         "--input-size", "3,8,8", "--threads", "2", "--quiet"]
EXPORT = ["export", "resnet20", "--to", "onnx", "--exporter", "torchscript", "--batch-sizes", "1"]
BENCH_FLAGS = ["--runtimes", "onnxruntime", "--batch-sizes", "1", "--warmup", "1", "--min-runs", "2", "--max-runs", "3",
               "--min-seconds", "0", "--max-seconds", "0.2", "--no-memory", "--quiet"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small onnx-only resnet20 bundle to benchmark."""
    path = tmp_path_factory.mktemp("bundle") / "resnet20"
    assert cli([*EXPORT, "--output", str(path)]) == 0
    return path


def _argv(command: str, output: Path, bundle: Path) -> list[str]:
    head = {"prune": PRUNE, "train": TRAIN, "export": EXPORT, "bench": ["bench", str(bundle), *BENCH_FLAGS]}[command]
    return [*head, "--output", str(output)]


def _foreign(path: Path) -> Path:
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    return path


def _strays(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


COMMANDS = sorted(OUTPUT_KINDS)


# ---- the rule ----------------------------------------------------------------------------------

def test_claim_output_new_own_foreign_forced(tmp_path):
    assert claim_output(tmp_path / "missing", "export") == "new"
    (tmp_path / "empty").mkdir()
    assert claim_output(tmp_path / "empty", "export") == "new"
    own = tmp_path / "own"
    own.mkdir()
    (own / "manifest.json").write_text(json.dumps({"schema_version": 1, "artifacts": {}}))
    assert claim_output(own, "export") == "own"
    assert claim_output(own, "bench", force=True) == "forced"  # another command's output is foreign
    with pytest.raises(OutputRefused, match=r"own is not empty .*`compressor bench`.*results\.json.*--force"):
        claim_output(own, "bench")
    (own / "manifest.json").write_text("not json")  # a damaged marker is not a claim
    with pytest.raises(OutputRefused, match="pass --force to replace it"):
        claim_output(own, "export")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputRefused, match="not a directory"):
        claim_output(tmp_path / "file", "export", force=True)


def test_claim_output_refuses_its_inputs_even_with_force(tmp_path):
    model = tmp_path / "out" / "model"
    model.mkdir(parents=True)
    for output in (model, tmp_path / "out"):
        with pytest.raises(OutputRefused, match=rf"{output.name}: it (is|holds) the input"):
            claim_output(output, "prune", force=True, inputs=(str(model), None, "resnet20"))


@pytest.mark.parametrize("where", [".", "..", "../..", "ABS", "/"])
def test_working_directory_and_its_parents_are_refused(tmp_path, monkeypatch, where):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    path = str(cwd) if where == "ABS" else where
    with pytest.raises(OutputRefused, match="refusing to write output directory"):
        claim_output(path, "prune", force=True)
    with pytest.raises(OutputRefused):
        atomic_directory(path, lambda tmp: None)
    assert _strays(tmp_path / "a") == [] and _strays(tmp_path) == [] and list(cwd.iterdir()) == []


# ---- the atomic swap ---------------------------------------------------------------------------

def _old_output(path: Path) -> Path:
    path.mkdir()
    (path / "result.txt").write_text("old")
    return path


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_failed_write_leaves_the_old_directory_and_no_temporary_one(tmp_path, error):
    out = _old_output(tmp_path / "out")

    def write(tmp: Path) -> None:
        (tmp / "result.txt").write_text("new, half")
        raise error

    with pytest.raises(type(error)):
        atomic_directory(out, write)
    assert (out / "result.txt").read_text() == "old"
    assert _strays(tmp_path) == []


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    out = _old_output(tmp_path / "out")
    replace, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the new directory into place, after the old one was moved aside
            raise KeyboardInterrupt
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(KeyboardInterrupt):
        atomic_directory(out, lambda tmp: (tmp / "result.txt").write_text("new"))
    monkeypatch.undo()
    assert (out / "result.txt").read_text() == "old"
    assert _strays(tmp_path) == []


DEFERRED_SIGINT_CHILD = """
import os, signal
from compressor.common.outputs import deferred_sigint
finished = []
try:
    with deferred_sigint():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C is delivered once
        finished.append(True)
except KeyboardInterrupt:
    print("interrupted after", finished, signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""


def test_deferred_sigint_delivers_ctrl_c_after_the_block():
    """Run in a fresh process: a real SIGINT to the test process itself is not safe once OpenVINO
    has run in it (its CPU plugin sets the main thread's alternate signal stack, which can be freed
    from another thread when the plugin is garbage-collected there)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", DEFERRED_SIGINT_CHILD], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted after [True] True"


# ---- the commands ------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_foreign_directory_is_refused_then_forced_then_rerun(tmp_path, capsys, bundle, command):
    out = _foreign(tmp_path / "out")
    assert cli(_argv(command, out, bundle)) == 2
    err = capsys.readouterr().err
    assert f"output directory {out} is not empty" in err and "pass --force to replace it" in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "sub").is_dir()

    assert cli([*_argv(command, out, bundle), "--force"]) == 0
    marker = OUTPUT_KINDS[command].marker
    assert (out / marker).is_file() and not (out / "notes.txt").exists() and not (out / "sub").exists()
    first = (out / marker).stat().st_mtime_ns

    assert cli(_argv(command, out, bundle)) == 0  # its own earlier output: re-running replaces it
    assert (out / marker).stat().st_mtime_ns != first
    assert _strays(tmp_path) == []


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", [".", ".."])
def test_commands_refuse_the_working_directory(tmp_path, monkeypatch, capsys, bundle, command, where):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    monkeypatch.chdir(cwd)
    assert cli([*_argv(command, Path(where), bundle), "--force"]) == 2
    assert f"refusing to write output directory {where}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"] and os.listdir(cwd) == ["notes.txt"]


def test_commands_refuse_to_replace_their_input(tmp_path, capsys, bundle):
    model = tmp_path / "pruned"
    assert cli([*PRUNE, "--output", str(model)]) == 0
    spec = (model / "model.json").read_bytes()
    argvs = (["prune", "--model", str(model), *PRUNE[3:], "--output", str(model)],
             ["export", str(model), *EXPORT[2:], "--output", str(tmp_path)],
             ["bench", str(bundle), *BENCH_FLAGS, "--output", str(bundle.parent)])
    for argv in argvs:
        assert cli([*argv, "--force"]) == 2
        assert "choose another --output" in capsys.readouterr().err
    assert (model / "model.json").read_bytes() == spec and (bundle / "manifest.json").is_file()


def test_run_refuses_the_working_directory_even_with_force(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert cli(["run", "--output", ".", "--force", "--quick", "--quiet"]) == 2
    assert "it is the current directory" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("command", ["prune", "export", "bench"])
def test_a_failed_write_keeps_the_earlier_output(tmp_path, monkeypatch, bundle, command):
    out = tmp_path / "out"
    assert cli(_argv(command, out, bundle)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    import benchmarks._report
    import runtimes._bundle

    owner, name = {"prune": (torch, "save"), "export": (runtimes._bundle, "_sha256"),
                   "bench": (benchmarks._report, "_html")}[command]
    monkeypatch.setattr(owner, name, fail)
    with pytest.raises(RuntimeError, match="disk full"):
        cli(_argv(command, out, bundle))
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert _strays(tmp_path) == []
