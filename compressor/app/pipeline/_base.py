"""What a pipeline is made of: its steps, the step registry, the context a step runs in, its errors.

``_core`` loads and runs pipelines, ``_steps`` registers the built-in steps; both build on this.
Adding a step: ``@register_step("kind", parse)`` on ``run(config, ctx) -> state updates``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from compressor.common.errors import CompressorError
from compressor.common.registry import Registry


class PipelineError(CompressorError, ValueError):
    """An invalid pipeline file, a missing step input, or an output directory that is not ours."""


class StepFailed(PipelineError):
    """A step ran, but its result must not pass: ``exit_code`` is the one the same CLI command gives
    (1 a violated budget, 3 a failed parity check, 4 a failed measurement). The step's directory is
    kept, marked ``"status": "failed"``, so its outputs can be inspected; a rerun does the step again."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class StepSpec:
    """A registered step kind: ``parse(raw, where) -> config``, ``run(config, ctx) -> state updates``."""

    kind: str
    parse: Callable[[dict[str, Any], str], Any]
    run: Callable[[Any, "StepContext"], dict[str, Any]]
    quick: Callable[[dict[str, Any]], dict[str, Any]] = lambda raw: raw
    summary: str = ""


_STEPS: Registry[StepSpec] = Registry("step", sort=False)  # in registration order: the documented one


def register_step(kind: str, parse: Callable, quick: Callable | None = None) -> Callable:
    """Register ``run(config, ctx)`` as step ``kind``; ``quick`` shrinks its raw config for ``--quick``."""

    def deco(run: Callable) -> Callable:
        _STEPS.register(kind, StepSpec(kind, parse, run, quick or (lambda raw: raw),
                                       (run.__doc__ or "").split("\n")[0]))
        return run

    return deco


def list_steps() -> list[str]:
    """The registered step kinds, in registration order."""
    return _STEPS.names()


@dataclass(frozen=True)
class Step:
    index: int
    kind: str
    raw: dict[str, Any]  # as run (after --quick), hashed for resume
    config: Any


@dataclass(frozen=True)
class Pipeline:
    name: str
    model: str
    model_args: dict[str, Any]
    data: str | None
    input_size: tuple[int, ...] | None
    seed: int
    threads: int | None
    steps: tuple[Step, ...]
    source: str  # the file, for messages
    description: str = ""
    quick: bool = False


@dataclass
class StepContext:
    """What a step sees: the pipeline, the state so far, and its own (temporary) directory."""

    pipeline: Pipeline
    run_dir: Path
    step_dir: Path  # write outputs here; paths returned in the state are relative to it
    step_name: str  # the final directory name (``NN_kind``)
    state: dict[str, Any]
    progress: bool = True
    log: Callable[[str], None] = print

    def path(self, key: str) -> Path:
        """The absolute path of a state entry (a model, a bundle ...); PipelineError when absent."""
        value = self.state.get(key)
        if not value:
            raise PipelineError(f"{self.pipeline.source}: step {self.step_name} needs a {key.replace('_', ' ')}, "
                                "which no earlier step produced")
        return self.run_dir / value

    def output(self, relative: str) -> str:
        """The state value for a file this step writes at ``step_dir / relative``."""
        return f"{self.step_name}/{relative}"
