"""One error family, one exit-code table: every error class the packages define is a
:class:`CompressorError`, and both command lines (``compressor`` and the torch-free
``python -m benchmarks``) take their exit codes from :func:`compressor.common.errors.exit_code_for`.

The classes are found by importing every module of the packages, so a new error class fails here
until it joins the family and takes one of the README's codes in :data:`DOCUMENTED`.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest

import benchmarks._command as bench_command
import runtimes._parity
from compressor.app.cli import main as cli
from compressor.common.errors import EXIT_CODES, CompressorError, exit_code_for

PACKAGES = ("compressor", "runtimes", "benchmarks", "models")
REPORT = Path(__file__).parents[2] / "benchmarks" / "results" / "resnet50_cpu_2core"

# The README's exit codes of every project error, by class name: 2 bad input, 3 parity failed,
# 4 not measured. None: the code is the instance's, the one its command gives (1, 3 or 4).
DOCUMENTED: dict[str, int | None] = {
    "CompressorError": 2, "TraceError": 2, "UnprunableModelError": 2, "UnreachableTargetError": 2,
    "ModelFormatError": 2, "ModelEntryError": 2, "RuntimeUnavailable": 2, "ArtifactError": 2,
    "OutputRefused": 2, "DuplicateNameError": 2, "UnknownNameError": 2, "DatasetError": 2, "CheckpointError": 2,
    "LayerMismatch": 2, "BundleError": 2, "ParityError": 3, "Int8Error": 2, "BudgetError": 2, "AgreementError": 2,
    "ProbeError": 2, "MemoryOOM": 4, "InfoError": 2, "PipelineError": 2, "StepFailed": None, "GateFailed": None,
}
# Exceptions that are signals, not errors: raised and caught inside one module, never out of a command.
SIGNALS = {"benchmarks.gpu_check.Skip": "a GPU-check part that does not run; recorded in its results as skipped"}


def _project_exceptions() -> list[type[BaseException]]:
    """The public exception classes (warnings aside) defined in the packages' modules."""
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.rsplit(".", 1)[-1] == "__main__":  # importing it runs the command
                continue
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, BaseException) and not issubclass(obj, Warning)
                        and obj.__module__ == module.__name__ and not name.startswith("_")):
                    found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [cls for key, cls in sorted(found.items()) if key not in SIGNALS]


ERRORS = _project_exceptions()


def test_the_walk_finds_the_errors_of_every_layer():
    modules = {cls.__module__.split(".")[0] for cls in ERRORS}
    assert {"compressor", "runtimes", "benchmarks"} <= modules
    assert {"CompressorError", "BundleError", "ParityError", "BudgetError", "PipelineError"} <= {c.__name__ for c in ERRORS}


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_project_error_is_a_compressor_error_with_a_documented_code(cls):
    assert issubclass(cls, CompressorError), f"{cls.__module__}.{cls.__qualname__} is not a CompressorError"
    assert cls.__name__ in DOCUMENTED, f"{cls.__name__}: give it one of the README's exit codes, here and in the class"
    if DOCUMENTED[cls.__name__] is not None:
        assert exit_code_for(cls.__new__(cls)) == DOCUMENTED[cls.__name__]


def test_a_failed_pipeline_step_exits_with_its_commands_code():
    from compressor.app.pipeline._base import StepFailed
    from compressor.app.pipeline._steps import GateFailed

    assert [exit_code_for(GateFailed("gate", code)) for code in (1, 4)] == [1, 4]
    assert exit_code_for(StepFailed("export: parity", 3)) == 3


def test_the_mixins_stay_for_except_valueerror_callers():
    from benchmarks import BudgetError, MemoryOOM
    from compressor.app.pipeline._base import PipelineError
    from compressor.common.outputs import OutputRefused

    assert all(issubclass(cls, ValueError) for cls in (BudgetError, PipelineError, OutputRefused))
    assert issubclass(MemoryOOM, RuntimeError)


@pytest.mark.parametrize("exc, code", [
    (ValueError("bad"), 2), (json.JSONDecodeError("bad", "{", 0), 2), (FileNotFoundError("gone"), 2),
    (FileExistsError("there"), 2), (ModuleNotFoundError("no onnx"), 2), (KeyboardInterrupt(), 130),
    (RuntimeError("a bug"), None), (TypeError("a bug"), None), (KeyError("a bug"), None), (SystemExit(2), None),
])
def test_the_table_of_exceptions_from_outside_the_project(exc, code):
    assert exit_code_for(exc) == code
    assert not any(issubclass(cls, CompressorError) for cls in EXIT_CODES)  # those carry their own


# ---- through the command lines: one representative input per code -------------------------------


def _budgets(tmp_path: Path, rules: list[dict]) -> str:
    path = tmp_path / "budgets.yaml"
    path.write_text(json.dumps({"confidence": 0.95, "rules": rules}))
    return str(path)


PASSING = {"bundle": "b_half_rt16", "runtime": "openvino", "batch_size": 1, "max_p50_ms": 30}
VIOLATED = {"bundle": "b_half", "runtime": "onnxruntime", "batch_size": 1, "max_p50_ms": 20}
UNMEASURED = {"bundle": "b_half", "runtime": "onnxruntime", "batch_size": 3, "max_p50_ms": 100}
BAD_KEY = {"bundle": "b_half", "runtime": "openvino", "batch_size": 1, "max_p50": 30}


@pytest.mark.parametrize("rules, code, printed", [
    ([PASSING], 0, "exit 0"), ([PASSING, VIOLATED], 1, "exit 1"), ([PASSING, UNMEASURED], 4, "exit 4"),
    ([BAD_KEY], 2, "error: "),  # a BudgetError
])
def test_gate_exit_codes(tmp_path, capsys, rules, code, printed):
    assert cli(["gate", _budgets(tmp_path, rules), "--report", str(REPORT)]) == code
    out, err = capsys.readouterr()
    assert printed in (err if code == 2 else out)
    assert "Traceback" not in err


@pytest.mark.parametrize("main", [cli, lambda argv: bench_command.main(argv[1:])], ids=["compressor", "benchmarks"])
def test_a_missing_bundle_is_bad_input_on_both_command_lines(tmp_path, capsys, main):
    argv = ["bench", str(tmp_path / "no_such_bundle"), "--runtimes", "onnxruntime", "--no-memory", "--quiet",
            "--output", str(tmp_path / "report")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_bundle" in err
    assert not (tmp_path / "report").exists()


def test_a_failed_parity_check_exits_3(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(runtimes._parity.TOLERANCES, "fp32", (1e-4, 1.01))  # a cosine above 1: never met
    code = cli(["export", "lenet5", "--to", "onnx", "--batch-sizes", "2", "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "error: parity check failed" in err and "recorded in manifest.json" in err


@pytest.mark.parametrize("main", [cli, bench_command.main], ids=["compressor", "benchmarks"])
def test_interrupts_exit_130_and_internal_errors_keep_their_traceback(main, capsys, monkeypatch):
    def interrupted(self, args=None, namespace=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", interrupted)
    assert main(["gate", "budgets.yaml"]) == 130
    assert capsys.readouterr().err == "interrupted\n"

    def bug(self, args=None, namespace=None):
        raise RuntimeError("a bug, not an input")

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", bug)
    with pytest.raises(RuntimeError, match="a bug, not an input"):
        main(["gate", "budgets.yaml"])
    assert capsys.readouterr().err == ""
