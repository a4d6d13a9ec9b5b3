"""Config-driven pipelines: one YAML file from model to report (``compressor run pipeline.yaml``).

A pipeline file names the model, the data and an ordered list of steps, each with its config::

    name: demo
    model: resnet20            # zoo / torchvision: / timm: name, or a saved model directory
    data: digits               # digits, digits:0-4, folder:PATH (a step may override it)
    seed: 0
    threads: 2
    steps:
      - train: {epochs: 5, lr: 0.05, batch_size: 32}
      - prune: {criterion: l2, target_flops: 0.5, strategy: {name: oneshot, finetune_epochs: 2}}
      - export: {to: [onnx, openvino]}
      - evaluate: {runtimes: [torch, onnxruntime, openvino]}
      - bench: {runtimes: [onnxruntime, openvino], batch_sizes: [1, 8, 32]}

The whole file is validated before anything runs; every error names the file, the step and the
key, and lists what is allowed. Every artifact goes under one run directory: ``NN_kind/`` per
step (written to a temporary directory, then renamed), ``state.json`` (the current model,
bundles, reports and results) and ``summary.md``/``summary.json`` at the end.

**Resume.** Each step has a content hash chained over the run's identity (pipeline name, model
source and its files, data), every earlier step and its own config. Rerunning skips the steps
whose hash is unchanged and redoes the first changed step and everything after it. A directory
holding another run's artifacts is refused unless ``force=True``. Code changes are not part of
the hash: after upgrading the tool, rerun with ``--force``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from compressor.common.config import check_keys, is_int
from compressor.common.outputs import atomic_directory, check_output_location
import compressor.app.pipeline._steps as _pipeline_steps  # noqa: F401  (registers the built-in steps)
from compressor.app.pipeline._base import _STEPS, Pipeline, PipelineError, Step, StepContext, StepFailed
from compressor.training import DatasetError, parse_data_spec
from compressor.common.files import atomic_write_bytes
from compressor.app.pipeline._report import write_run_summary

RUN_FILE = "run.json"
STATE_FILE = "state.json"
STEP_FILE = "step.json"
RUN_SCHEMA_VERSION = 1
PIPELINE_KEYS = ("name", "description", "model", "model_args", "data", "input_size", "seed", "threads", "steps")


def load_pipeline(source: str | os.PathLike | dict[str, Any], *, quick: bool = False) -> Pipeline:
    """Read and validate a pipeline file (or an already parsed mapping).

    ``quick=True`` shrinks every step (one epoch, small batches, short timings) for a smoke run.

    Raises:
        PipelineError: naming the file, the step and the key, with the allowed values.
    """

    if isinstance(source, dict):
        data, where = source, "<pipeline>"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise PipelineError(f"pipeline file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PipelineError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: the top level must be a mapping with keys {list(PIPELINE_KEYS)}")
    try:
        check_keys(data, PIPELINE_KEYS)
    except ValueError as exc:
        raise PipelineError(f"{where}: {exc}") from None
    for key in ("name", "model"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise PipelineError(f"{where}: '{key}' must be a non-empty string, got {data.get(key)!r}")
    model_args = data.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise PipelineError(f"{where}: 'model_args' must be a mapping, got {model_args!r}")
    seed, threads = data.get("seed", 0), data.get("threads")
    if not is_int(seed) or seed < 0:
        raise PipelineError(f"{where}: 'seed' must be an integer >= 0, got {seed!r}")
    if threads is not None and (not is_int(threads) or threads < 1):
        raise PipelineError(f"{where}: 'threads' must be an integer >= 1 or absent, got {threads!r}")
    input_size = data.get("input_size")
    if input_size is not None:
        if not isinstance(input_size, list) or len(input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in input_size):
            raise PipelineError(f"{where}: 'input_size' must be [C, H, W] positive integers, got {input_size!r}")
        input_size = tuple(input_size)
    if data.get("data") is not None:
        _check_data(data["data"], f"{where}: 'data'")
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise PipelineError(f"{where}: 'steps' must be a non-empty list of {{kind: config}} items; kinds: "
                            f"{', '.join(_STEPS)}")
    steps = []
    for i, item in enumerate(raw_steps):
        label = f"{where}: steps[{i}]"
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise PipelineError(f"{label} must be one {{kind: config}} mapping, got {item!r}")
        (kind, raw), = item.items()
        if kind not in _STEPS:
            raise PipelineError(f"{label}: unknown step {kind!r}; known steps: {', '.join(_STEPS)}")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise PipelineError(f"{label} ({kind}): the config must be a mapping, got {raw!r}")
        spec = _STEPS[kind]
        if quick:
            raw = spec.quick(json.loads(json.dumps(raw)))
        if raw.get("data") is not None:
            _check_data(raw["data"], f"{label} ({kind}): 'data'")
        try:
            config = spec.parse(raw, f"{label} ({kind})")
        except PipelineError:
            raise
        except (ValueError, TypeError) as exc:
            raise PipelineError(f"{label} ({kind}): {exc}") from exc
        steps.append(Step(i, kind, raw, config))
    return Pipeline(data["name"], data["model"], model_args, data.get("data"), input_size, seed, threads,
                    tuple(steps), where, data.get("description", ""), quick)


def _check_data(text: Any, label: str) -> None:

    if not isinstance(text, str):
        raise PipelineError(f"{label} must be a data spec string (digits, digits:0-4, folder:PATH, digits-detect), "
                            f"got {text!r}")
    name, _, counts = text.partition(":")
    if name == "digits-detect":  # the detection task: digits-detect or digits-detect:TRAIN,TEST image counts
        parts = counts.split(",") if counts else []
        if counts and (len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts)):
            raise PipelineError(f"{label}: expected digits-detect or digits-detect:TRAIN,TEST (positive image "
                                f"counts), got {text!r}")
        return
    try:
        parse_data_spec(text)
    except DatasetError as exc:
        raise PipelineError(f"{label}: {exc}") from exc


# ---- running ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    run_dir: Path
    state: dict[str, Any]
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _hash(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _identity(pipeline: Pipeline) -> dict[str, Any]:
    """What makes a run *this* run: its name, model source (with a saved model's file hashes), data."""
    files = {}
    source = Path(pipeline.model)
    if source.is_dir():
        for f in sorted(p for p in source.rglob("*") if p.is_file()):
            files[str(f.relative_to(source))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"pipeline": pipeline.name, "model": pipeline.model, "model_args": pipeline.model_args,
            "model_files": files, "data": pipeline.data, "input_size": pipeline.input_size, "seed": pipeline.seed}


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=1, default=str).encode())


def _claim(run_dir: Path, identity: dict[str, Any], force: bool, source: str) -> None:
    """Make ``run_dir`` ours: new, or the same run (resume), or wiped with ``force``."""
    check_output_location(run_dir)  # never the working directory, even with force
    if run_dir.exists() and not run_dir.is_dir():
        raise PipelineError(f"output {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        record = run_dir / RUN_FILE
        same = False
        if record.is_file():
            try:
                same = json.loads(record.read_text()).get("identity") == json.loads(json.dumps(identity, default=str))
            except (OSError, json.JSONDecodeError):
                same = False
        if not same:
            if not force:
                what = "another run's artifacts" if record.is_file() else "files that are not a pipeline run"
                raise PipelineError(f"output directory {run_dir} holds {what}; pass --force to replace it, "
                                    f"or choose another --output (pipeline {source})")
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def run_pipeline(pipeline: Pipeline, output: str | os.PathLike, *, force: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> RunResult:
    """Execute ``pipeline`` into ``output``; see the module docstring for resume and ``force``.

    Raises:
        PipelineError: the output directory holds another run (without ``force``), or a step's
            input is missing; and whatever a step raises (its directory is then not kept).
        StepFailed: a step ran but must not pass (a violated gate, a failed parity check or
            measurement); its directory is kept, marked failed, and the run stops there.
    """
    start = time.perf_counter()
    run_dir = Path(output)
    identity = _identity(pipeline)
    _claim(run_dir, identity, force, pipeline.source)
    _write_json(run_dir / RUN_FILE, {"schema_version": RUN_SCHEMA_VERSION, "identity": identity,
                                      "pipeline": pipeline.source, "quick": pipeline.quick,
                                      "steps": [{s.kind: s.raw} for s in pipeline.steps]})
    chain = _hash(identity)
    state: dict[str, Any] = {"results": {}}
    result = RunResult(run_dir, state)
    total = len(pipeline.steps)
    for step in pipeline.steps:
        chain = _hash(chain, step.kind, step.raw)
        name = f"{step.index + 1:02d}_{step.kind}"
        final = run_dir / name
        record = final / STEP_FILE
        if record.is_file():
            done = json.loads(record.read_text())
            if done.get("hash") == chain and done.get("status") == "done":
                state = done["state"]
                result.skipped.append(name)
                log(f"[{step.index + 1}/{total}] {step.kind}: unchanged, skipped ({name}/)")
                continue
        log(f"[{step.index + 1}/{total}] {step.kind} ...")
        t0 = time.perf_counter()

        failure: list[StepFailed] = []

        def execute(tmp: Path, step: Step = step, name: str = name, chain: str = chain) -> None:
            nonlocal state
            ctx = StepContext(pipeline, run_dir, tmp, name, json.loads(json.dumps(state)), progress, log)
            try:
                updates = _STEPS[step.kind].run(step.config, ctx)
            except StepFailed as exc:  # kept for inspection, never taken as done
                failure.append(exc)
                _write_json(tmp / STEP_FILE, {"hash": chain, "kind": step.kind, "config": step.raw,
                                              "status": "failed", "error": str(exc), "exit_code": exc.exit_code,
                                              "seconds": time.perf_counter() - t0})
                return
            results = updates.pop("results", None)
            state = {**state, **updates, "results": {**state.get("results", {}),
                                                     **({name: results} if results is not None else {})}}
            _write_json(tmp / STEP_FILE, {"hash": chain, "kind": step.kind, "config": step.raw, "status": "done",
                                          "seconds": time.perf_counter() - t0, "state": state, "results": results})

        atomic_directory(final, execute)  # a crashed step leaves neither a half-written nor a stale directory
        if failure:
            _write_json(run_dir / STATE_FILE, state)
            raise failure[0]
        seconds = time.perf_counter() - t0
        _write_json(run_dir / STATE_FILE, state)
        result.executed.append(name)
        log(f"[{step.index + 1}/{total}] {step.kind}: done in {seconds:.1f}s ({name}/)")
    # steps of an earlier, longer version of this pipeline are not part of this run any more
    kept = {f"{s.index + 1:02d}_{s.kind}" for s in pipeline.steps}
    for stale in run_dir.iterdir():
        if stale.is_dir() and stale.name[:2].isdigit() and stale.name not in kept:
            shutil.rmtree(stale)
    result.state, result.seconds = state, time.perf_counter() - start
    _write_json(run_dir / STATE_FILE, state)

    write_run_summary(pipeline, result)
    return result
