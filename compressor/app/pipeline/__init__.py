"""Config-driven pipelines: one YAML file from model to report (``compressor run pipeline.yaml``).

``_core`` runs the steps, ``_steps`` holds the built-in ones, ``_report`` writes the summary.
"""
from __future__ import annotations

from compressor.app.pipeline._base import PipelineError, StepContext, StepFailed, list_steps, register_step
from compressor.app.pipeline._core import RunResult, load_pipeline, run_pipeline

__all__ = ["PipelineError", "RunResult", "StepContext", "StepFailed", "list_steps", "load_pipeline", "register_step",
           "run_pipeline"]
